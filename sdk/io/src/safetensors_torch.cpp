#include "sumi/io/safetensors_torch.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <limits>

#include <sumi/torch_compat.hpp>

namespace sumi::io {
namespace {

struct DtypePair {
  const char* name;
  at::ScalarType type;
};

const std::vector<DtypePair>& dtype_table() {
  static const std::vector<DtypePair> table = {
      {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16},
      {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
      {"U8", at::kByte},    {"BOOL", at::kBool},
#if SUMI_TORCH_HAS_FLOAT8
      {"F8_E4M3", at::kFloat8_e4m3fn}, {"F8_E5M2", at::kFloat8_e5m2},
#endif
  };
  return table;
}

// Software decoding of the float8 formats, for libtorch builds without float8 types.
float decode_f8(std::uint8_t b, bool e4m3) {
  const bool neg = b & 0x80;
  float v;
  if (e4m3) {  // E4M3FN: bias 7, no infinities, S.1111.111 is NaN
    const int e = (b >> 3) & 0xF, m = b & 0x7;
    if (e == 15 && m == 7)
      v = std::numeric_limits<float>::quiet_NaN();
    else if (e == 0)
      v = std::ldexp(static_cast<float>(m) / 8.0f, -6);
    else
      v = std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
  } else {  // E5M2: bias 15, IEEE-style infinities and NaNs
    const int e = (b >> 2) & 0x1F, m = b & 0x3;
    if (e == 31)
      v = m ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
    else if (e == 0)
      v = std::ldexp(static_cast<float>(m) / 4.0f, -14);
    else
      v = std::ldexp(1.0f + static_cast<float>(m) / 4.0f, e - 15);
  }
  return neg ? -v : v;
}

}  // namespace

at::ScalarType scalar_type_from_dtype(std::string_view dtype) {
  for (const auto& p : dtype_table())
    if (dtype == p.name) return p.type;
  if (dtype == "F8_E4M3" || dtype == "F8_E5M2") {
    throw std::invalid_argument("dtype " + std::string(dtype) +
                                " needs libtorch >= 2.1; load it with an explicit dtype "
                                "(e.g. float32) to convert it");
  }
  throw std::invalid_argument("unknown safetensors dtype '" + std::string(dtype) + "'");
}

std::string dtype_from_scalar_type(at::ScalarType type) {
  for (const auto& p : dtype_table())
    if (type == p.type) return p.name;
  throw std::invalid_argument(std::string("tensors of type ") + c10::toString(type) +
                              " cannot be stored in safetensors");
}

at::Tensor load_tensor(const std::shared_ptr<SafetensorsFile>& file, const TensorInfo& info,
                       std::optional<at::ScalarType> dtype) {
  const std::uint8_t* src = file->data(info);
  const std::vector<std::int64_t>& shape = info.shape;

  const bool is_f8 = info.dtype == "F8_E4M3" || info.dtype == "F8_E5M2";
  if (is_f8 && !SUMI_TORCH_HAS_FLOAT8) {
    if (!dtype) {
      throw std::invalid_argument("tensor '" + info.name + "' in '" + file->path() + "' is " +
                                  info.dtype +
                                  ", which this libtorch (< 2.1) lacks; pass a dtype such as "
                                  "float32 to load it converted");
    }
    at::Tensor out = at::empty(shape, at::kFloat);
    float* dst = out.data_ptr<float>();
    const bool e4m3 = info.dtype == "F8_E4M3";
    for (std::uint64_t i = 0; i < info.nbytes; ++i) dst[i] = decode_f8(src[i], e4m3);
    return out.to(*dtype);
  }

  const at::ScalarType stored = scalar_type_from_dtype(info.dtype);
  const std::size_t itemsize = dtype_size(info.dtype);
  const bool aligned = reinterpret_cast<std::uintptr_t>(src) % itemsize == 0;
  if (info.nbytes == 0) return at::empty(shape, at::TensorOptions().dtype(dtype.value_or(stored)));

  if ((!dtype || *dtype == stored) && aligned) {
    // The deleter owns a reference to the file, so the mapping outlives every view of it.
    std::shared_ptr<SafetensorsFile> keep = file;
    return at::from_blob(const_cast<std::uint8_t*>(src), shape,
                         [keep](void*) mutable { keep.reset(); }, at::TensorOptions().dtype(stored));
  }
  at::Tensor copy = at::empty(shape, at::TensorOptions().dtype(stored));
  std::memcpy(copy.data_ptr(), src, info.nbytes);
  return dtype && *dtype != stored ? copy.to(*dtype) : copy;
}

NamedTensors load_all(const std::string& path, std::optional<at::ScalarType> dtype) {
  auto file = SafetensorsFile::open(path);
  NamedTensors out;
  out.reserve(file->tensors().size());
  for (const auto& info : file->tensors()) {
    std::optional<at::ScalarType> want;
    const bool floating = info.dtype[0] == 'F' || info.dtype == "BF16";
    if (dtype && floating) want = dtype;
    out.emplace_back(info.name, load_tensor(file, info, want));
  }
  return out;
}

void save_tensors(const std::string& path, const NamedTensors& tensors,
                  const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> keep;
  std::vector<TensorView> views;
  keep.reserve(tensors.size());
  views.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) {
      throw std::invalid_argument("save_tensors('" + path + "'): tensor '" + name +
                                  "' is undefined");
    }
    if (tensor.layout() != at::kStrided) {
      throw std::invalid_argument("save_tensors('" + path + "'): tensor '" + name +
                                  "' is not dense; convert it with to_dense() first");
    }
    std::string dt;
    try {
      dt = dtype_from_scalar_type(tensor.scalar_type());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("save_tensors('" + path + "'): tensor '" + name + "': " +
                                  e.what());
    }
    keep.push_back(tensor.detach().to(at::kCPU).contiguous());
    const at::Tensor& t = keep.back();
    views.push_back({name, dt, t.sizes().vec(), t.data_ptr(), t.nbytes()});
  }
  write_safetensors(path, views, metadata);
}

}  // namespace sumi::io
