#include "sumi/io/torch_checkpoint.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <system_error>

#include "sumi/io/pickle.h"

namespace sumi::io {
namespace {

constexpr std::uint64_t kMaxPickleBytes = 1ull << 30;
using TensorRefs = std::vector<std::pair<std::string, std::shared_ptr<const pickle::TensorRef>>>;
// Returns the whole root storage a StorageRef names; `where` prefixes error messages.
using StorageSource = std::function<at::Storage(const pickle::StorageRef&, const std::string& where)>;

std::string shape_text(const std::vector<std::int64_t>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// Turns the unpickled descriptions into tensors over shared storages, checking every view
// against the bytes that actually exist.
NamedTensors build_tensors(const TensorRefs& refs, const std::string& path,
                           const StorageSource& storage_for) {
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
    const std::size_t item = dtype_size(ref->dtype);
    const std::size_t storage_item = dtype_size(sref.dtype);
    at::Storage storage = storage_for(sref, where);
    const std::uint64_t have = storage.nbytes();

    // The region this tensor may use: the whole storage, or a legacy storage slice.
    const std::uint64_t view_begin = static_cast<std::uint64_t>(sref.view_offset) * storage_item;
    const std::uint64_t view_bytes =
        sref.view_numel < 0 ? have - std::min(have, view_begin)
                            : static_cast<std::uint64_t>(sref.view_numel) * storage_item;
    if (view_begin > have || view_bytes > have - view_begin) {
      throw FormatError(where + ": its storage slice lies outside the " + std::to_string(have) +
                        "-byte storage '" + sref.key + "'");
    }
    if (view_begin % item != 0) {
      throw FormatError(where + ": its storage slice starts inside a " + ref->dtype + " element");
    }

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
        last += static_cast<unsigned __int128>(ref->size[d] - 1) *
                static_cast<std::uint64_t>(ref->stride[d]);
      if (numel < kHuge) numel *= static_cast<std::uint64_t>(ref->size[d]);
    }
    if (!empty && numel > (static_cast<unsigned __int128>(1) << 62))
      throw FormatError(where + ": size " + shape_text(ref->size) + " has too many elements");
    const unsigned __int128 need = empty           ? static_cast<unsigned __int128>(ref->offset) * item
                                   : last >= kHuge ? kHuge
                                                   : (last + 1) * item;
    if (need > view_bytes) {
      throw FormatError(where + ": size " + shape_text(ref->size) + ", stride " +
                        shape_text(ref->stride) + " at offset " + std::to_string(ref->offset) +
                        " reaches past the end of its " + std::to_string(view_bytes) +
                        "-byte storage");
    }
    const auto offset = ref->offset + static_cast<std::int64_t>(view_begin / item);
    at::Tensor t = at::empty({0}, at::TensorOptions().dtype(type));
    t.set_(storage, offset, ref->size, ref->stride);
    out.emplace_back(name, std::move(t));
  }
  return out;
}

at::Storage byte_storage(const void* src, std::uint64_t nbytes) {
  at::Tensor raw = at::empty({static_cast<std::int64_t>(nbytes)}, at::kByte);
  if (nbytes) std::memcpy(raw.data_ptr(), src, nbytes);
  return raw.storage();
}

// ---------------------------------------------------------------------------------------------
// torch >= 1.6: a zip archive

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

NamedTensors load_zip(const std::string& path) {
  Archive ar;
  int err = 0;
  ar.z = zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &err);
  if (!ar.z) {
    // The file was just opened and read by load_torch_checkpoint, so anything but an I/O
    // error is damage: libzip also answers ZIP_ER_NOENT ("No such file") for some corrupt
    // central directories.
    if (err == ZIP_ER_OPEN || err == ZIP_ER_READ)
      throw std::runtime_error("cannot open checkpoint '" + path + "': " + zip_error_text(err));
    throw FormatError("'" + path + "' starts like a zip archive but is broken (" +
                      zip_error_text(err) + "): the file is truncated or corrupt");
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
    if (name.size() > tail.size() &&
        name.compare(name.size() - tail.size(), tail.size(), tail) == 0 &&
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
    if (n > 16)
      throw FormatError("'" + path + "': byteorder record is " + std::to_string(n) + " bytes");
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
  const TensorRefs refs =
      pickle::state_dict_tensors(pickle::unpickle(pkl.data(), pkl.size(), path).root, path);

  std::map<std::string, at::Storage> cache;
  auto storage_for = [&](const pickle::StorageRef& sref, const std::string& where) {
    auto it = cache.find(sref.key);
    if (it != cache.end()) return it->second;
    const std::string member = prefix + "/data/" + sref.key;
    zip_int64_t idx = zip_name_locate(ar.z, member.c_str(), 0);
    if (idx < 0) throw FormatError(where + ": its storage '" + member + "' is missing from the archive");
    const std::uint64_t size = member_size(static_cast<zip_uint64_t>(idx), member);
    const unsigned __int128 declared =
        static_cast<unsigned __int128>(sref.numel) * dtype_size(sref.dtype);
    if (declared != size) {
      throw FormatError(where + ": storage '" + member + "' holds " + std::to_string(size) +
                        " bytes but the pickle declares " + std::to_string(sref.numel) + " x " +
                        sref.dtype + " = " +
                        (declared >> 63 ? std::string("too many") : std::to_string(static_cast<std::uint64_t>(declared))) +
                        " bytes");
    }
    at::Tensor raw = at::empty({static_cast<std::int64_t>(size)}, at::kByte);
    read_member(ar.z, static_cast<zip_uint64_t>(idx), raw.data_ptr(), size, path, member);
    return cache.emplace(sref.key, raw.storage()).first->second;
  };
  return build_tensors(refs, path, storage_for);
}

// ---------------------------------------------------------------------------------------------
// torch < 1.6: pickles back to back (magic number, protocol version, system info, the object,
// the sorted storage keys), then each storage as a little-endian int64 element count and its
// raw bytes.

struct Mapping {
  void* p = MAP_FAILED;
  std::size_t n = 0;
  ~Mapping() {
    if (p != MAP_FAILED) ::munmap(p, n);
  }
};

NamedTensors load_legacy(const std::string& path) {
  Mapping map;
  {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      throw std::runtime_error("cannot open checkpoint '" + path +
                               "': " + std::error_code(e, std::generic_category()).message());
    }
    struct stat st {};
    if (::fstat(fd, &st) == 0 && st.st_size > 0) {
      map.n = static_cast<std::size_t>(st.st_size);
      map.p = ::mmap(nullptr, map.n, PROT_READ, MAP_PRIVATE, fd, 0);
    }
    ::close(fd);
    if (map.p == MAP_FAILED) throw std::runtime_error("cannot memory-map '" + path + "'");
  }
  const auto* p = static_cast<const std::uint8_t*>(map.p);
  const std::size_t n = map.n;
  std::size_t pos = 0;
  auto next = [&](const char* what) {
    std::size_t used = 0;
    try {
      pickle::Unpickled u = pickle::unpickle(p + pos, n - pos, path, &used);
      pos += used;
      return u;
    } catch (const FormatError& e) {
      throw FormatError(std::string(e.what()) + " [in the legacy checkpoint's " + what + "]");
    }
  };

  // The magic number 0x1950a86a20f9469cfc6c as pickle protocol >= 2 writes it (LONG1).
  static const std::uint8_t magic[] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                       0x20, 0x6a, 0xa8, 0x50, 0x19, '.'};
  std::size_t m = 2;
  if (n > 11 && p[2] == 0x95) m += 9;  // FRAME (protocol 4+)
  if (n < m + sizeof magic || std::memcmp(p + m, magic, sizeof magic) != 0) {
    throw FormatError("'" + path +
                      "' is a pickle but not a torch.save file (no torch magic number); sumi "
                      "loads only tensors saved with torch.save");
  }
  pos = m + sizeof magic;

  const pickle::Unpickled version = next("protocol version");
  if (version.root->kind != pickle::Value::Kind::Int || version.root->i != 1001) {
    throw FormatError("'" + path + "': unknown legacy torch.save protocol version (expected 1001)");
  }
  const pickle::Unpickled sys_info = next("system info");
  if (sys_info.root->kind == pickle::Value::Kind::Dict) {
    for (const auto& [k, v] : sys_info.root->entries) {
      if (k->kind == pickle::Value::Kind::String && k->s == "little_endian" &&
          v->kind == pickle::Value::Kind::Bool && !v->b) {
        throw FormatError("'" + path +
                          "' was saved on a big-endian machine; only little-endian checkpoints "
                          "are supported");
      }
    }
  }
  const pickle::Unpickled object = next("main object");
  const TensorRefs refs = pickle::state_dict_tensors(object.root, path);
  const pickle::Unpickled keys = next("storage key list");
  if (keys.root->kind != pickle::Value::Kind::List)
    throw FormatError("'" + path + "': the legacy storage key list is not a list");

  // Element sizes come from the persistent ids; every storage's bytes follow in key order.
  std::map<std::string, const pickle::StorageRef*> declared;
  for (const auto& s : object.storages) declared.emplace(s->key, s.get());
  std::map<std::string, std::pair<std::size_t, std::uint64_t>> regions;  // key -> (pos, bytes)
  for (const auto& k : keys.root->items) {
    if (k->kind != pickle::Value::Kind::String)
      throw FormatError("'" + path + "': a legacy storage key is not a string");
    auto d = declared.find(k->s);
    if (d == declared.end())
      throw FormatError("'" + path + "': storage '" + k->s + "' is listed but never used");
    if (n - pos < 8) {
      throw FormatError("'" + path + "': the file ends before storage '" + k->s +
                        "'; it is truncated");
    }
    std::uint64_t count = 0;
    std::memcpy(&count, p + pos, 8);
    pos += 8;
    const unsigned __int128 bytes =
        static_cast<unsigned __int128>(count) * dtype_size(d->second->dtype);
    if (count != static_cast<std::uint64_t>(d->second->numel) || bytes > n - pos) {
      throw FormatError("'" + path + "': storage '" + k->s + "' should hold " +
                        std::to_string(d->second->numel) + " x " + d->second->dtype +
                        "; the file records " + std::to_string(count) + " elements with " +
                        std::to_string(n - pos) + " bytes left (truncated or corrupt)");
    }
    regions[k->s] = {pos, static_cast<std::uint64_t>(bytes)};
    pos += static_cast<std::size_t>(bytes);
  }

  std::map<std::string, at::Storage> cache;
  auto storage_for = [&](const pickle::StorageRef& sref, const std::string& where) {
    auto it = cache.find(sref.key);
    if (it != cache.end()) return it->second;
    auto r = regions.find(sref.key);
    if (r == regions.end())
      throw FormatError(where + ": its storage '" + sref.key + "' is missing from the file");
    return cache.emplace(sref.key, byte_storage(p + r->second.first, r->second.second))
        .first->second;
  };
  return build_tensors(refs, path, storage_for);
}

}  // namespace

NamedTensors load_torch_checkpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error("cannot open checkpoint '" + path + "': " +
                             std::error_code(errno, std::generic_category()).message());
  }
  unsigned char head[16] = {};
  in.read(reinterpret_cast<char*>(head), sizeof head);
  const auto got = static_cast<std::size_t>(in.gcount());
  in.close();

  if (got >= 4 && head[0] == 'P' && head[1] == 'K' &&
      ((head[2] == 3 && head[3] == 4) || (head[2] == 5 && head[3] == 6)))
    return load_zip(path);
  if (got >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5) return load_legacy(path);
  if (got >= 9 && head[8] == '{') {
    throw FormatError("'" + path +
                      "' looks like a safetensors file, not a PyTorch checkpoint; load it as "
                      ".safetensors");
  }
  throw FormatError("'" + path +
                    "' is not a PyTorch checkpoint: expected a zip archive written by "
                    "torch.save (.ckpt/.pt/.pth/.bin) or the legacy torch.save format");
}

}  // namespace sumi::io
