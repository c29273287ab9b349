#include "sumi/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <system_error>

// nlohmann::json replaces the hand-written header parser an earlier design called for: it is
// a well-tested strict JSON parser, reports the byte position of syntax errors, and
// ordered_json keeps the header's tensor order.
#include <nlohmann/json.hpp>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "sumi's safetensors code assumes a little-endian host (the format is little-endian)"
#endif

namespace sumi::io {
namespace {

constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;  // the reference library's limit
using Json = nlohmann::ordered_json;

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// numel * itemsize with overflow detection; returns false when it does not fit in 2^62.
bool byte_size(const std::vector<std::int64_t>& shape, std::size_t itemsize, std::uint64_t& out) {
  constexpr std::uint64_t kLimit = 1ull << 62;
  std::uint64_t n = itemsize;
  for (std::int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > kLimit / static_cast<std::uint64_t>(d)) return false;
    n *= static_cast<std::uint64_t>(d);
  }
  out = n;
  return true;
}

// RAII fd so every early return closes it.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

}  // namespace

std::size_t dtype_size(std::string_view dtype) {
  static const std::map<std::string_view, std::size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},     {"I32", 4},
      {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

std::int64_t TensorInfo::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

namespace {

// The size of the regular file behind `fd`; at least the 8-byte header length.
std::uint64_t checked_file_size(const Fd& fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) {
    int err = errno;
    throw std::runtime_error("cannot stat '" + path + "': " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) throw std::runtime_error("'" + path + "' is not a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < 8) {
    throw FormatError("'" + path + "' is not a safetensors file: it is " + std::to_string(size) +
                      " bytes long, expected at least the 8-byte header length");
  }
  return size;
}

// The header length field of the mapped file of `size` bytes, checked against the limit, the
// file's size and the JSON object that must follow it.
std::uint64_t checked_header_length(const std::uint8_t* bytes, std::uint64_t size,
                                    const std::string& path) {
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > kMaxHeaderBytes) {
    throw FormatError("'" + path + "': header length field says " + std::to_string(header_len) +
                      " bytes, more than the 100 MiB limit; the file is corrupt or not safetensors");
  }
  if (header_len > size - 8) {
    throw FormatError("'" + path + "': header length field says " + std::to_string(header_len) +
                      " bytes but only " + std::to_string(size - 8) +
                      " bytes follow it; the file is truncated or not safetensors");
  }
  if (header_len == 0 || bytes[8] != '{') {
    throw FormatError("'" + path + "': the header does not start with '{' (expected a JSON object)");
  }
  return header_len;
}

// The header [begin, end) as a JSON object, its keys in file order.
Json parse_header(const char* begin, const char* end, const std::string& path) {
  // The JSON parser would silently keep one of two equal keys; a duplicate tensor name is a
  // corrupt header, so the callback catches it.
  std::set<std::string> seen;
  std::string duplicate;
  Json header;
  try {
    header = Json::parse(begin, end, [&](int depth, Json::parse_event_t ev, Json& parsed) {
      if (depth == 1 && ev == Json::parse_event_t::key && duplicate.empty()) {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!seen.insert(key).second) duplicate = key;
      }
      return true;
    });
  } catch (const nlohmann::json::exception& e) {
    throw FormatError("'" + path + "': the header is not valid JSON: " + e.what());
  }
  if (!duplicate.empty()) {
    throw FormatError("'" + path + "': the header lists '" + duplicate + "' twice");
  }
  if (!header.is_object()) {
    throw FormatError("'" + path + "': the header must be a JSON object, found " +
                      std::string(header.type_name()));
  }
  return header;
}

// The __metadata__ entry: an object of strings.
void read_metadata(const Json& entry, const std::string& path,
                   std::map<std::string, std::string>& out) {
  if (!entry.is_object()) {
    throw FormatError("'" + path + "': __metadata__ must be an object of strings, found " +
                      std::string(entry.type_name()));
  }
  for (auto& [k, v] : entry.items()) {
    if (!v.is_string()) {
      throw FormatError("'" + path + "': __metadata__ value of '" + k +
                        "' must be a string, found " + std::string(v.type_name()) + " " +
                        v.dump());
    }
    out[k] = v.get<std::string>();
  }
}

// The "shape" of a tensor entry; `where` names the file and tensor.
std::vector<std::int64_t> read_shape(const Json& entry, const std::string& where) {
  auto sh = entry.find("shape");
  if (sh == entry.end() || !sh->is_array()) {
    throw FormatError(where + ": missing \"shape\" array");
  }
  std::vector<std::int64_t> shape;
  for (const auto& d : *sh) {
    if (!d.is_number_integer() || (!d.is_number_unsigned() && d.get<std::int64_t>() < 0)) {
      throw FormatError(where + ": shape entries must be non-negative integers, found " +
                        sh->dump());
    }
    if (d.get<std::uint64_t>() > static_cast<std::uint64_t>(
                                     std::numeric_limits<std::int64_t>::max())) {
      throw FormatError(where + ": shape entry too large in " + sh->dump());
    }
    shape.push_back(d.get<std::int64_t>());
  }
  return shape;
}

// One tensor entry of the header: dtype, shape and data_offsets, which must lie inside the data
// region of `data_len` bytes and span exactly the bytes the shape needs.
TensorInfo read_tensor_entry(const std::string& name, const Json& entry, const std::string& path,
                             std::uint64_t data_len) {
  const std::string where = "'" + path + "', tensor '" + name + "'";
  if (!entry.is_object()) {
    throw FormatError(where + ": expected an object with dtype, shape and data_offsets, found " +
                      std::string(entry.type_name()));
  }
  TensorInfo info;
  info.name = name;

  auto dt = entry.find("dtype");
  if (dt == entry.end() || !dt->is_string()) {
    throw FormatError(where + ": missing or non-string \"dtype\"");
  }
  info.dtype = dt->get<std::string>();
  const std::size_t itemsize = dtype_size(info.dtype);
  if (itemsize == 0) {
    throw FormatError(where + ": unknown dtype '" + info.dtype +
                      "' (expected one of F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL F8_E4M3 "
                      "F8_E5M2)");
  }
  info.shape = read_shape(entry, where);

  auto off = entry.find("data_offsets");
  if (off == entry.end() || !off->is_array() || off->size() != 2 ||
      !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) {
    throw FormatError(where + ": \"data_offsets\" must be [begin, end] of non-negative integers" +
                      (off == entry.end() ? std::string() : ", found " + off->dump()));
  }
  const auto begin = (*off)[0].get<std::uint64_t>();
  const auto end = (*off)[1].get<std::uint64_t>();
  if (begin > end || end > data_len) {
    throw FormatError(where + ": data_offsets [" + std::to_string(begin) + ", " +
                      std::to_string(end) + "] fall outside the data region of " +
                      std::to_string(data_len) + " bytes (truncated file?)");
  }
  std::uint64_t expected = 0;
  if (!byte_size(info.shape, itemsize, expected)) {
    throw FormatError(where + ": shape " + shape_text(info.shape) + " is too large");
  }
  if (end - begin != expected) {
    throw FormatError(where + ": shape " + shape_text(info.shape) + " of " + info.dtype +
                      " needs " + std::to_string(expected) + " bytes but data_offsets span " +
                      std::to_string(end - begin));
  }
  info.offset = begin;
  info.nbytes = end - begin;
  return info;
}

// Overlap check on the byte ranges; empty tensors occupy nothing.
void check_no_overlap(const std::vector<TensorInfo>& tensors, const std::string& path) {
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors)
    if (t.nbytes) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo* a = by_offset[i - 1];
    const TensorInfo* b = by_offset[i];
    if (a->offset + a->nbytes > b->offset) {
      throw FormatError("'" + path + "': tensors '" + a->name + "' (bytes " +
                        std::to_string(a->offset) + ".." + std::to_string(a->offset + a->nbytes) +
                        ") and '" + b->name + "' (bytes " + std::to_string(b->offset) + ".." +
                        std::to_string(b->offset + b->nbytes) + ") overlap");
    }
  }
}

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.fd < 0) {
    int err = errno;
    throw std::runtime_error("cannot open safetensors file '" + path + "': " + errno_text(err));
  }
  const std::uint64_t size = checked_file_size(fd, path);

  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->size_ = size;
  // MAP_PRIVATE + PROT_WRITE: tensors handed out zero-copy may be written in place by callers;
  // those writes stay in private copy-on-write pages and never reach the file.
  file->map_ = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.fd, 0);
  if (file->map_ == MAP_FAILED) {
    int err = errno;
    file->map_ = nullptr;
    throw std::runtime_error("cannot memory-map '" + path + "': " + errno_text(err));
  }
  const auto* bytes = static_cast<const std::uint8_t*>(file->map_);

  const std::uint64_t header_len = checked_header_length(bytes, size, path);
  file->data_start_ = 8 + header_len;
  const std::uint64_t data_len = size - file->data_start_;
  const char* hbegin = reinterpret_cast<const char*>(bytes + 8);
  const Json header = parse_header(hbegin, hbegin + header_len, path);

  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      read_metadata(entry, path, file->metadata_);
      continue;
    }
    TensorInfo info = read_tensor_entry(name, entry, path, data_len);
    file->index_.emplace(info.name, file->tensors_.size());
    file->tensors_.push_back(std::move(info));
  }
  check_no_overlap(file->tensors_, path);
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const std::uint8_t* SafetensorsFile::data(const TensorInfo& info) const {
  return static_cast<const std::uint8_t*>(map_) + data_start_ + info.offset;
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

void write_all(int fd, const void* data, std::size_t n, const std::string& tmp) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const std::size_t chunk = std::min<std::size_t>(n, 1u << 30);
    ssize_t w = ::write(fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      throw std::runtime_error("writing '" + tmp + "' failed: " + errno_text(err));
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

std::string parent_dir(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Creates a fresh, uniquely named file next to `path`. O_EXCL with mode 0666 lets the umask
// apply as for any normally created file (mkstemp would force 0600).
int create_temp(const std::string& path, std::string& tmp) {
  static std::atomic<unsigned> counter{0};
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::ostringstream name;
    name << path << ".tmp-" << ::getpid() << "-" << counter++ << "-" << std::hex << rd();
    tmp = name.str();
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return fd;
    if (errno != EEXIST) {
      int err = errno;
      throw std::runtime_error("cannot create a temporary file next to '" + path +
                               "': " + errno_text(err));
    }
  }
  throw std::runtime_error("cannot create a unique temporary file next to '" + path + "'");
}

// Writes a new file for `path` through `fill(fd, tmp_name)` into a temporary file beside it,
// flushes it and renames it over `path`; on any failure the temporary file is removed and
// `path` is untouched.
template <class Fill>
void write_replacing(const std::string& path, Fill&& fill) {
  std::string tmp;
  int fd = create_temp(path, tmp);
  try {
    fill(fd, tmp);
    if (::fsync(fd) != 0) {
      int err = errno;
      throw std::runtime_error("flushing '" + tmp + "' to disk failed: " + errno_text(err));
    }
    int rc = ::close(fd);
    fd = -1;
    if (rc != 0) {
      int err = errno;
      throw std::runtime_error("closing '" + tmp + "' failed: " + errno_text(err));
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      int err = errno;
      throw std::runtime_error("cannot rename '" + tmp + "' to '" + path + "': " + errno_text(err));
    }
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable; failure here does not undo a completed write.
  int dfd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

// Copies `len` bytes at `offset` of `src` to the end of `dst`: copy_file_range keeps the bytes
// in the kernel (and may share extents); where the filesystem cannot, a fixed 8 MiB buffer.
void copy_range(int src, std::uint64_t offset, std::uint64_t len, int dst, const std::string& src_name,
                const std::string& dst_name) {
  auto off = static_cast<loff_t>(offset);
  bool kernel_copy = true;
  while (len > 0 && kernel_copy) {
    const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(len, 1ull << 30));
    ssize_t n = ::copy_file_range(src, &off, dst, nullptr, chunk, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ENOSYS || errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP || errno == EBADF) {
        kernel_copy = false;  // not supported here: copy through user space from `off` on
        break;
      }
      int err = errno;
      throw std::runtime_error("copying the data of '" + src_name + "' to '" + dst_name + "' failed: " + errno_text(err));
    }
    if (n == 0) throw std::runtime_error("'" + src_name + "' ended early while its data was being copied (truncated?)");
    len -= static_cast<std::uint64_t>(n);
  }
  std::vector<char> buf;
  while (len > 0) {
    if (buf.empty()) buf.resize(8u << 20);
    const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(len, buf.size()));
    ssize_t n = ::pread(src, buf.data(), chunk, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      throw std::runtime_error("reading '" + src_name + "' failed: " + errno_text(err));
    }
    if (n == 0) throw std::runtime_error("'" + src_name + "' ended early while its data was being copied (truncated?)");
    write_all(dst, buf.data(), static_cast<std::size_t>(n), dst_name);
    off += n;
    len -= static_cast<std::uint64_t>(n);
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Validate everything before creating any file.
  std::set<std::string_view> names;
  for (const auto& t : tensors) {
    const std::size_t itemsize = dtype_size(t.dtype);
    if (t.name == "__metadata__") {
      throw std::invalid_argument("write_safetensors('" + path +
                                  "'): '__metadata__' is reserved and cannot name a tensor");
    }
    if (!names.insert(t.name).second) {
      throw std::invalid_argument("write_safetensors('" + path + "'): tensor name '" + t.name +
                                  "' appears twice");
    }
    if (itemsize == 0) {
      throw std::invalid_argument("write_safetensors('" + path + "'): tensor '" + t.name +
                                  "' has unknown dtype '" + t.dtype + "'");
    }
    std::uint64_t expected = 0;
    if (!byte_size(t.shape, itemsize, expected)) {
      throw std::invalid_argument("write_safetensors('" + path + "'): tensor '" + t.name +
                                  "' has an invalid shape " + shape_text(t.shape));
    }
    if (expected != t.nbytes) {
      throw std::invalid_argument("write_safetensors('" + path + "'): tensor '" + t.name + "' " +
                                  t.dtype + shape_text(t.shape) + " needs " +
                                  std::to_string(expected) + " bytes, got " +
                                  std::to_string(t.nbytes));
    }
    if (t.nbytes && !t.data) {
      throw std::invalid_argument("write_safetensors('" + path + "'): tensor '" + t.name +
                                  "' has no data pointer");
    }
  }

  // Widest dtype first keeps each tensor aligned to its element size (the header is padded to
  // a multiple of 8), which lets readers hand out zero-copy views.
  std::vector<std::size_t> order(tensors.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return dtype_size(tensors[a].dtype) > dtype_size(tensors[b].dtype);
  });
  std::vector<std::uint64_t> offsets(tensors.size());
  std::uint64_t pos = 0;
  for (std::size_t i : order) {
    offsets[i] = pos;
    pos += tensors[i].nbytes;
  }

  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    header[t.name] = Json{{"dtype", t.dtype},
                          {"shape", t.shape},
                          {"data_offsets", {offsets[i], offsets[i] + t.nbytes}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::uint64_t header_len = text.size();

  write_replacing(path, [&](int fd, const std::string& tmp) {
    write_all(fd, &header_len, 8, tmp);
    write_all(fd, text.data(), text.size(), tmp);
    for (std::size_t i : order) write_all(fd, tensors[i].data, tensors[i].nbytes, tmp);
  });
}

void update_safetensors_metadata(const std::string& path, const std::map<std::string, std::string>& entries) {
  auto metadata = SafetensorsFile::open(path)->metadata();
  for (const auto& [k, v] : entries) metadata[k] = v;
  set_safetensors_metadata(path, metadata);
}

void set_safetensors_metadata(const std::string& path, const std::map<std::string, std::string>& metadata) {
  // The reader validates the whole header; its mapping pages in nothing but the header.
  const auto file = SafetensorsFile::open(path);
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  for (const auto& t : file->tensors()) {
    header[t.name] = Json{{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {t.offset, t.offset + t.nbytes}}};
  }
  std::string text = header.dump();
  // Padding to 8 keeps every tensor at least as aligned as before (offsets are unchanged).
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxHeaderBytes) {
    throw std::invalid_argument("set_safetensors_metadata('" + path + "'): the new header is " +
                                std::to_string(text.size()) + " bytes, more than the 100 MiB limit");
  }
  const std::uint64_t header_len = text.size();
  const std::uint64_t data_start = file->data_start();
  const std::uint64_t data_len = file->file_size() - data_start;

  Fd src(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (src.fd < 0) {
    int err = errno;
    throw std::runtime_error("cannot open safetensors file '" + path + "': " + errno_text(err));
  }
  struct stat st {};
  if (::fstat(src.fd, &st) != 0 || static_cast<std::uint64_t>(st.st_size) != file->file_size()) {
    throw std::runtime_error("'" + path + "' changed while its metadata was being rewritten");
  }
  write_replacing(path, [&](int fd, const std::string& tmp) {
    ::fchmod(fd, st.st_mode & 07777);  // the rewritten file keeps the original's permissions
    write_all(fd, &header_len, 8, tmp);
    write_all(fd, text.data(), text.size(), tmp);
    copy_range(src.fd, data_start, data_len, fd, path, tmp);
  });
}

}  // namespace sumi::io
