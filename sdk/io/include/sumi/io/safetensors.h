// safetensors.h — reading and writing .safetensors files without torch.
//
// The reader memory-maps the file and validates the whole header before any tensor data is
// touched, so a malformed or hostile file fails early with a FormatError naming the problem;
// reading one tensor then only pages in that tensor's bytes. The writer never modifies a file
// in place: it writes a temporary file beside the destination and renames it over.
// ATen glue (tensors instead of raw bytes) lives in safetensors_torch.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sumi::io {

// Thrown for every malformed model file (safetensors header, pickle, checkpoint archive).
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bytes per element of a safetensors dtype string ("F16", "BF16", ...); 0 when unknown.
std::size_t dtype_size(std::string_view dtype);
inline bool is_known_dtype(std::string_view dtype) { return dtype_size(dtype) != 0; }

struct TensorInfo {
  std::string name;
  std::string dtype;                // safetensors spelling: F32, F16, BF16, I64, BOOL, ...
  std::vector<std::int64_t> shape;  // empty for a scalar
  std::uint64_t offset = 0;         // byte offset inside the data region (after the header)
  std::uint64_t nbytes = 0;

  std::int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws FormatError for a malformed file and std::runtime_error
  // when the file cannot be opened or mapped.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // In header order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const;
  // The tensor's bytes inside the mapping; valid while this object lives. The mapping is
  // private copy-on-write, so a caller that writes through a const_cast never alters the file.
  const std::uint8_t* data(const TensorInfo& info) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::uint64_t file_size() const { return size_; }
  // Where the data region starts: 8 + the header length. Tensor offsets count from here.
  std::uint64_t data_start() const { return data_start_; }

 private:
  SafetensorsFile() = default;

  std::string path_;
  void* map_ = nullptr;
  std::uint64_t size_ = 0;
  std::uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

struct TensorView {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
  std::size_t nbytes = 0;
};

// Writes `tensors` (header in the given order; data laid out widest dtype first so every
// tensor is aligned to its element size) atomically to `path`. Throws std::invalid_argument
// for bad input (unknown dtype, nbytes not matching the shape, duplicate names) before any
// file is created, and std::runtime_error for I/O failures; in every failure case an existing
// file at `path` is left untouched and no temporary file remains.
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Replaces the __metadata__ of the safetensors file at `path` (empty = none) and keeps every
// tensor: the header is validated as by SafetensorsFile::open (a FormatError names the file),
// rewritten with the tensors in their order and at their offsets, and the data region is copied
// byte for byte into a temporary file beside `path` (streamed in the kernel where it can, never
// read into memory as a whole: checkpoints are gigabytes), which is then renamed over `path`.
// On failure the file is left as it was and no temporary file remains.
void set_safetensors_metadata(const std::string& path, const std::map<std::string, std::string>& metadata);

// set_safetensors_metadata with the file's own __metadata__ kept: `entries` are added on top
// (replacing entries of the same key), everything else stays.
void update_safetensors_metadata(const std::string& path, const std::map<std::string, std::string>& entries);

}  // namespace sumi::io
