#include "sumi/datasets/npz.h"

#include <zip.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>

namespace sumi::datasets {
namespace fs = std::filesystem;

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;
constexpr std::size_t kAlign = 64;  // NumPy's ARRAY_ALIGN

std::size_t item_size(const std::string& dtype) {
  if (dtype.size() < 3) return 0;
  const char order = dtype[0], kind = dtype[1];
  if (order != '<' && order != '|' && order != '=') return 0;  // big-endian is not handled
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b') return 0;
  const std::string bytes = dtype.substr(2);
  // NumPy's integer and float widths; anything else (a corrupt header) is unsupported.
  return bytes == "1" ? 1 : bytes == "2" ? 2 : bytes == "4" ? 4 : bytes == "8" ? 8 : 0;
}

template <class T>
NpyArray make(const char* dtype, std::vector<std::int64_t> shape, const std::vector<T>& values) {
  NpyArray a;
  a.dtype = dtype;
  a.shape = std::move(shape);
  if (static_cast<std::int64_t>(values.size()) != a.numel())
    throw NpzError("npy array: " + std::to_string(values.size()) + " values for a shape of " + std::to_string(a.numel()));
  a.data.resize(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(a.data.data(), values.data(), a.data.size());
  return a;
}

template <class Out>
std::vector<Out> convert(const NpyArray& a) {
  const std::size_t n = static_cast<std::size_t>(a.numel());
  if (item_size(a.dtype) * n != a.data.size()) throw NpzError("npy array of dtype '" + a.dtype + "': wrong data size");
  std::vector<Out> out(n);
  auto each = [&](auto tag) {
    using T = decltype(tag);
    for (std::size_t i = 0; i < n; ++i) {
      T v;
      std::memcpy(&v, a.data.data() + i * sizeof(T), sizeof(T));
      out[i] = static_cast<Out>(v);
    }
  };
  const std::string t = a.dtype.substr(1);
  if (t == "f4") each(float{});
  else if (t == "f8") each(double{});
  else if (t == "i4") each(std::int32_t{});
  else if (t == "i8") each(std::int64_t{});
  else if (t == "u1" || t == "b1") each(std::uint8_t{});
  else throw NpzError("npy dtype '" + a.dtype + "' is not supported here (expected float32/64, int32/64 or uint8)");
  return out;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

// The value text after `'key':` in a header dict, up to the next top-level comma.
std::string header_value(const std::string& h, const std::string& key, const std::string& name) {
  const std::string k = "'" + key + "':";
  auto at = h.find(k);
  if (at == std::string::npos) throw NpzError(name + ": npy header has no '" + key + "'");
  at += k.size();
  while (at < h.size() && h[at] == ' ') ++at;
  std::size_t end = at;
  int depth = 0;
  for (; end < h.size(); ++end) {
    const char c = h[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if ((c == ',' || c == '}') && depth == 0) break;
  }
  return h.substr(at, end - at);
}

}  // namespace

std::int64_t NpyArray::numel() const {
  // A zero dimension first: the others may then be anything parse_npy accepted.
  for (auto d : shape)
    if (d == 0) return 0;
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}
NpyArray NpyArray::of_floats(std::vector<std::int64_t> shape, const std::vector<float>& v) { return make("<f4", std::move(shape), v); }
NpyArray NpyArray::of_doubles(std::vector<std::int64_t> shape, const std::vector<double>& v) { return make("<f8", std::move(shape), v); }
NpyArray NpyArray::of_int64(std::vector<std::int64_t> shape, const std::vector<std::int64_t>& v) { return make("<i8", std::move(shape), v); }
std::vector<float> NpyArray::to_floats() const { return convert<float>(*this); }
std::vector<double> NpyArray::to_doubles() const { return convert<double>(*this); }

std::vector<std::uint8_t> npy_bytes(const NpyArray& a) {
  // NumPy's header: the dict with sorted keys, spaces up to the alignment, then "\n".
  std::string h = "{'descr': '" + a.dtype + "', 'fortran_order': False, 'shape': " + shape_text(a.shape) + ", }";
  const std::size_t pad = kAlign - (kMagicLen + 2 + 2 + h.size() + 1) % kAlign;
  h += std::string(pad == kAlign ? 0 : pad, ' ') + "\n";
  std::vector<std::uint8_t> out(kMagic, kMagic + kMagicLen);
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<std::uint8_t>(h.size() & 0xff));
  out.push_back(static_cast<std::uint8_t>(h.size() >> 8));
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), a.data.begin(), a.data.end());
  return out;
}

NpyArray parse_npy(const std::vector<std::uint8_t>& b, const std::string& name) {
  if (b.size() < 10 || std::memcmp(b.data(), kMagic, kMagicLen) != 0) throw NpzError(name + ": not a .npy array (no NumPy magic)");
  const int major = b[6];
  std::size_t hlen = 0, start = 0;
  if (major == 1) {
    hlen = b[8] | (static_cast<std::size_t>(b[9]) << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (b.size() < 12) throw NpzError(name + ": truncated .npy header");
    hlen = b[8] | (static_cast<std::size_t>(b[9]) << 8) | (static_cast<std::size_t>(b[10]) << 16) |
           (static_cast<std::size_t>(b[11]) << 24);
    start = 12;
  } else {
    throw NpzError(name + ": .npy format version " + std::to_string(major) + " is not supported");
  }
  if (start + hlen > b.size()) throw NpzError(name + ": truncated .npy header");
  const std::string h(b.begin() + static_cast<std::ptrdiff_t>(start), b.begin() + static_cast<std::ptrdiff_t>(start + hlen));
  NpyArray a;
  std::string descr = header_value(h, "descr", name);
  if (descr.size() < 2 || (descr.front() != '\'' && descr.front() != '"')) throw NpzError(name + ": bad dtype " + descr);
  a.dtype = descr.substr(1, descr.size() - 2);
  if (item_size(a.dtype) == 0) throw NpzError(name + ": dtype '" + a.dtype + "' is not supported (little-endian numbers only)");
  if (header_value(h, "fortran_order", name) != "False") throw NpzError(name + ": Fortran-ordered arrays are not supported");
  const std::string shape = header_value(h, "shape", name);
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')') throw NpzError(name + ": bad shape " + shape);
  std::string dims = shape.substr(1, shape.size() - 2);
  for (std::size_t p = 0; p < dims.size();) {
    std::size_t q = dims.find(',', p);
    if (q == std::string::npos) q = dims.size();
    std::string d = dims.substr(p, q - p);
    d.erase(0, d.find_first_not_of(' '));
    d.erase(d.find_last_not_of(' ') + 1);
    if (!d.empty()) {
      char* e = nullptr;
      errno = 0;
      const long long v = std::strtoll(d.c_str(), &e, 10);
      // The whole text must be the number (a NUL inside it would end strtoll's view early).
      if (e != d.c_str() + d.size() || e == d.c_str() || v < 0 || errno == ERANGE)
        throw NpzError(name + ": bad shape " + shape);
      a.shape.push_back(v);
    }
    p = q + 1;
  }
  // The element count must not wrap (a hostile shape could make it look like the data's
  // size): the non-zero dimensions multiply to at most 2^62 bytes, checked before each step.
  constexpr std::uint64_t kLimit = 1ull << 62;
  std::uint64_t bytes = item_size(a.dtype);
  bool empty = false;
  for (const std::int64_t d : a.shape) {
    if (d == 0) {
      empty = true;
      continue;
    }
    if (bytes > kLimit / static_cast<std::uint64_t>(d))
      throw NpzError(name + ": shape " + shape + " of " + a.dtype + " is too large");
    bytes *= static_cast<std::uint64_t>(d);
  }
  const std::size_t need = empty ? 0 : static_cast<std::size_t>(bytes);
  if (b.size() - start - hlen != need)
    throw NpzError(name + ": .npy data is " + std::to_string(b.size() - start - hlen) + " bytes, expected " +
                   std::to_string(need) + " for shape " + shape + " of " + a.dtype);
  a.data.assign(b.begin() + static_cast<std::ptrdiff_t>(start + hlen), b.end());
  return a;
}

void write_npz(const fs::path& file, const NpzMembers& arrays) {
  const fs::path tmp = file.string() + ".tmp";
  int err = 0;
  zip_t* z = zip_open(tmp.string().c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  if (!z) {
    zip_error_t ze;
    zip_error_init_with_code(&ze, err);
    const std::string msg = zip_error_strerror(&ze);
    zip_error_fini(&ze);
    throw NpzError("cannot write " + file.string() + ": " + msg);
  }
  std::vector<std::vector<std::uint8_t>> buffers;  // libzip reads them at zip_close
  buffers.reserve(arrays.size());
  auto fail = [&](const std::string& what) {
    const std::string msg = "cannot write " + file.string() + ": " + what + ": " + zip_strerror(z);
    zip_discard(z);
    std::error_code ec;
    fs::remove(tmp, ec);
    throw NpzError(msg);
  };
  for (const auto& [name, a] : arrays) {
    buffers.push_back(npy_bytes(a));
    zip_source_t* src = zip_source_buffer(z, buffers.back().data(), buffers.back().size(), 0);
    if (!src) fail(name);
    const zip_int64_t idx = zip_file_add(z, (name + ".npy").c_str(), src, ZIP_FL_ENC_UTF_8 | ZIP_FL_OVERWRITE);
    if (idx < 0) {
      zip_source_free(src);
      fail(name);
    }
    if (zip_set_file_compression(z, static_cast<zip_uint64_t>(idx), ZIP_CM_STORE, 0) != 0) fail(name);
  }
  if (zip_close(z) != 0) fail("closing");
  std::error_code ec;
  fs::rename(tmp, file, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw NpzError("cannot write " + file.string() + ": rename failed");
  }
}

NpzMembers read_npz(const fs::path& file) {
  int err = 0;
  zip_t* z = zip_open(file.string().c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &err);
  if (!z) {
    zip_error_t ze;
    zip_error_init_with_code(&ze, err);
    const std::string msg = zip_error_strerror(&ze);
    zip_error_fini(&ze);
    throw NpzError(file.string() + ": not a readable .npz (" + msg + ")");
  }
  std::unique_ptr<zip_t, void (*)(zip_t*)> guard(z, [](zip_t* p) { zip_discard(p); });
  NpzMembers out;
  const zip_int64_t n = zip_get_num_entries(z, 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(z, static_cast<zip_uint64_t>(i), 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE) || !st.name)
      throw NpzError(file.string() + ": damaged zip entry " + std::to_string(i));
    std::string name = st.name;
    zip_file_t* f = zip_fopen_index(z, static_cast<zip_uint64_t>(i), 0);
    if (!f) throw NpzError(file.string() + ": cannot open member " + name + ": " + zip_strerror(z));
    // The recorded size is the archive's word only: the buffer grows with the bytes that
    // actually decompress, so a damaged entry claiming gigabytes allocates nothing up front.
    std::vector<std::uint8_t> bytes;
    std::string ferr;
    while (ferr.empty() && bytes.size() < st.size) {
      const std::size_t have = bytes.size();
      const auto want = static_cast<std::size_t>(std::min<zip_uint64_t>(st.size - have, std::max<std::size_t>(have, 1u << 16)));
      bytes.resize(have + want);
      const zip_int64_t got = zip_fread(f, bytes.data() + have, want);
      if (got < 0) ferr = zip_file_strerror(f);
      if (got == 0) ferr = "it is shorter than its recorded size";
      bytes.resize(have + static_cast<std::size_t>(std::max<zip_int64_t>(got, 0)));
    }
    zip_fclose(f);
    if (!ferr.empty()) throw NpzError(file.string() + ": cannot read member " + name + " (" + ferr + ")");
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
    out.emplace_back(name, parse_npy(bytes, file.string() + ":" + name));
  }
  return out;
}

const NpyArray* find_member(const NpzMembers& members, const std::string& name) {
  for (const auto& [n, a] : members)
    if (n == name) return &a;
  return nullptr;
}

}  // namespace sumi::datasets
