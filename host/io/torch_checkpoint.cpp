#include "io/torch_checkpoint.h"

#include <ATen/ATen.h>
#include <zip.h>

#include <cstring>
#include <fstream>
#include <map>

#include "io/pickle.h"

namespace sumi::io {
namespace {

constexpr std::uint64_t kMaxPickleBytes = 1ull << 30;

struct Archive {
  zip_t* z = nullptr;
  ~Archive() {
    if (z) zip_discard(z);  // opened read-only: nothing to write back
  }
};

std::string zip_error_text(int code) {
  zip_error_t e;
  zip_error_init_with_code(&e, code);
  std::string s = zip_error_strerror(&e);
  zip_error_fini(&e);
  return s;
}

// Why a file that is not a zip archive is not loadable, as precisely as its first bytes tell.
[[noreturn]] void refuse_non_zip(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open checkpoint '" + path + "'");
  unsigned char head[16] = {};
  in.read(reinterpret_cast<char*>(head), sizeof head);
  const auto got = static_cast<std::size_t>(in.gcount());
  if (got >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5) {
    throw FormatError("'" + path +
                      "' uses the legacy (pre-1.6) torch.save format, which sumi does not read; "
                      "re-save it with torch >= 1.6 or convert it to .safetensors");
  }
  if (got >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) {
    throw FormatError("'" + path +
                      "' starts like a zip archive but its central directory is missing or "
                      "broken: the file is truncated or corrupt");
  }
  if (got >= 9 && head[8] == '{') {
    throw FormatError("'" + path +
                      "' looks like a safetensors file, not a PyTorch checkpoint; load it as "
                      ".safetensors");
  }
  throw FormatError("'" + path +
                    "' is not a PyTorch checkpoint: expected a zip archive written by "
                    "torch.save (.ckpt/.pt/.pth/.bin)");
}

// Reads a whole member; libzip verifies its CRC when the read reaches the end.
void read_member(zip_t* z, zip_uint64_t index, void* dst, std::uint64_t size,
                 const std::string& path, const std::string& name) {
  zip_file_t* f = zip_fopen_index(z, index, 0);
  if (!f) {
    throw FormatError("'" + path + "': cannot open archive member '" + name +
                      "': " + zip_strerror(z));
  }
  auto* out = static_cast<std::uint8_t*>(dst);
  std::uint64_t done = 0;
  std::string error;
  while (done < size) {
    zip_int64_t r = zip_fread(f, out + done, size - done);
    if (r <= 0) {
      error = r < 0 ? zip_file_strerror(f) : "member is shorter than its recorded size";
      break;
    }
    done += static_cast<std::uint64_t>(r);
  }
  if (error.empty()) {
    std::uint8_t extra;
    zip_int64_t r = zip_fread(f, &extra, 1);
    if (r < 0) error = zip_file_strerror(f);
    if (r > 0) error = "member is longer than its recorded size";
  }
  zip_fclose(f);
  if (!error.empty()) {
    throw FormatError("'" + path + "': reading archive member '" + name + "' failed: " + error +
                      " (truncated or corrupt file?)");
  }
}

std::string shape_text(const std::vector<std::int64_t>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

NamedTensors load_torch_checkpoint(const std::string& path) {
  Archive ar;
  int err = 0;
  ar.z = zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &err);
  if (!ar.z) {
    if (err == ZIP_ER_NOENT || err == ZIP_ER_OPEN || err == ZIP_ER_READ)
      throw std::runtime_error("cannot open checkpoint '" + path + "': " + zip_error_text(err));
    if (err == ZIP_ER_NOZIP) refuse_non_zip(path);
    throw FormatError("'" + path + "': broken zip archive: " + zip_error_text(err) +
                      " (truncated or corrupt file?)");
  }

  // torch.save puts everything under one top-level folder whose name varies.
  const zip_int64_t count = zip_get_num_entries(ar.z, 0);
  std::string prefix;
  zip_uint64_t pkl_index = 0;
  for (zip_int64_t i = 0; i < count; ++i) {
    const char* n = zip_get_name(ar.z, static_cast<zip_uint64_t>(i), 0);
    if (!n) continue;
    std::string name = n;
    const std::string tail = "/data.pkl";
    if (name.size() > tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0 &&
        name.find('/') == name.size() - tail.size()) {
      prefix = name.substr(0, name.size() - tail.size());
      pkl_index = static_cast<zip_uint64_t>(i);
      break;
    }
  }
  if (prefix.empty()) {
    throw FormatError("'" + path +
                      "' is a zip archive but has no <archive>/data.pkl: it is not a torch.save "
                      "checkpoint (a TorchScript or other archive?)");
  }

  auto member_size = [&](zip_uint64_t index, const std::string& name) {
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(ar.z, index, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE))
      throw FormatError("'" + path + "': cannot stat archive member '" + name + "'");
    return static_cast<std::uint64_t>(st.size);
  };

  const std::string byteorder_name = prefix + "/byteorder";
  zip_int64_t bo = zip_name_locate(ar.z, byteorder_name.c_str(), 0);
  if (bo >= 0) {
    const std::uint64_t n = member_size(static_cast<zip_uint64_t>(bo), byteorder_name);
    if (n > 16) throw FormatError("'" + path + "': byteorder record is " + std::to_string(n) + " bytes");
    std::string order(n, '\0');
    read_member(ar.z, static_cast<zip_uint64_t>(bo), order.data(), n, path, byteorder_name);
    if (order != "little") {
      throw FormatError("'" + path + "' was saved on a '" + order +
                        "'-endian machine; only little-endian checkpoints are supported");
    }
  }

  const std::string pkl_name = prefix + "/data.pkl";
  const std::uint64_t pkl_size = member_size(pkl_index, pkl_name);
  if (pkl_size > kMaxPickleBytes) {
    throw FormatError("'" + path + "': data.pkl is " + std::to_string(pkl_size) +
                      " bytes, more than the 1 GiB a state dict's pickle can plausibly need");
  }
  std::vector<std::uint8_t> pkl(pkl_size);
  read_member(ar.z, pkl_index, pkl.data(), pkl_size, path, pkl_name);
  auto refs = pickle::state_dict_tensors(pickle::unpickle(pkl.data(), pkl.size(), path).root, path);

  std::map<std::string, at::Storage> storages;
  NamedTensors out;
  out.reserve(refs.size());
  for (const auto& [name, ref] : refs) {
    const pickle::StorageRef& sref = *ref->storage;
    const std::string where = "'" + path + "', tensor '" + name + "'";

    at::ScalarType type;
    try {
      type = scalar_type_from_dtype(ref->dtype);
    } catch (const std::invalid_argument& e) {
      throw FormatError(where + ": " + e.what());
    }
    const std::size_t storage_item = dtype_size(sref.dtype);
    const std::size_t item = dtype_size(ref->dtype);
    const unsigned __int128 storage_bytes128 =
        static_cast<unsigned __int128>(sref.numel) * storage_item;
    if (storage_bytes128 > (static_cast<unsigned __int128>(1) << 62))
      throw FormatError(where + ": storage '" + sref.key + "' is implausibly large");
    const auto storage_bytes = static_cast<std::uint64_t>(storage_bytes128);

    auto it = storages.find(sref.key);
    if (it == storages.end()) {
      const std::string member = prefix + "/data/" + sref.key;
      zip_int64_t idx = zip_name_locate(ar.z, member.c_str(), 0);
      if (idx < 0) {
        throw FormatError(where + ": its storage '" + member + "' is missing from the archive");
      }
      const std::uint64_t size = member_size(static_cast<zip_uint64_t>(idx), member);
      if (size != storage_bytes) {
        throw FormatError(where + ": storage '" + member + "' holds " + std::to_string(size) +
                          " bytes but the pickle declares " + std::to_string(sref.numel) + " x " +
                          sref.dtype + " = " + std::to_string(storage_bytes) + " bytes");
      }
      at::Tensor raw = at::empty({static_cast<std::int64_t>(size)}, at::kByte);
      read_member(ar.z, static_cast<zip_uint64_t>(idx), raw.data_ptr(), size, path, member);
      it = storages.emplace(sref.key, raw.storage()).first;
    }
    const std::uint64_t have = it->second.nbytes();

    // The furthest element the view touches must lie inside the storage.
    // Sizes and strides are non-negative (checked by the unpickler) and below 2^63, so each
    // term fits in 128 bits; stopping once past 2^64 keeps the sum from wrapping.
    constexpr unsigned __int128 kHuge = static_cast<unsigned __int128>(1) << 64;
    unsigned __int128 last = static_cast<unsigned __int128>(ref->offset);
    unsigned __int128 numel = 1;
    bool empty = false;
    for (std::size_t d = 0; d < ref->size.size(); ++d) {
      if (ref->size[d] == 0) {
        empty = true;
        continue;
      }
      if (last < kHuge)
        last += static_cast<unsigned __int128>(ref->size[d] - 1) * static_cast<std::uint64_t>(ref->stride[d]);
      if (numel < kHuge) numel *= static_cast<std::uint64_t>(ref->size[d]);
    }
    if (!empty && numel > (static_cast<unsigned __int128>(1) << 62))
      throw FormatError(where + ": size " + shape_text(ref->size) + " has too many elements");
    const unsigned __int128 need = empty        ? static_cast<unsigned __int128>(ref->offset) * item
                                   : last >= kHuge ? kHuge
                                                   : (last + 1) * item;
    if (need > have) {
      throw FormatError(where + ": size " + shape_text(ref->size) + ", stride " +
                        shape_text(ref->stride) + " at offset " + std::to_string(ref->offset) +
                        " reaches past the end of its " + std::to_string(have) + "-byte storage");
    }
    at::Tensor t = at::empty({0}, at::TensorOptions().dtype(type));
    t.set_(it->second, ref->offset, ref->size, ref->stride);
    out.emplace_back(name, std::move(t));
  }
  return out;
}

}  // namespace sumi::io
