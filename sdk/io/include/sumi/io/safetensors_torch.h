// safetensors_torch.h — safetensors files as ATen tensors.
//
// load_tensor hands out zero-copy CPU tensors that view the file's mapping (the tensor keeps
// the file mapped); asking for another dtype, or a tensor whose bytes are not aligned to its
// element size, gives a converted copy instead. save_tensors writes any CPU/GPU tensors
// through the atomic writer in safetensors.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sumi/io/safetensors.h"

namespace sumi::io {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// "F16" -> at::kHalf and back. Throws std::invalid_argument for a dtype this libtorch cannot
// represent (unknown strings; F8_* before libtorch 2.1; complex/quantized types when saving).
at::ScalarType scalar_type_from_dtype(std::string_view dtype);
std::string dtype_from_scalar_type(at::ScalarType type);

// One tensor of `file`. With `dtype` set (and different from the stored one) the result is a
// converted copy. F8 tensors on a libtorch without float8 types load only with a `dtype`.
at::Tensor load_tensor(const std::shared_ptr<SafetensorsFile>& file, const TensorInfo& info,
                       std::optional<at::ScalarType> dtype = {});

// Every tensor of the file in header order. `dtype` converts floating-point tensors only;
// integer and bool tensors (token ids, position ids) keep their type.
NamedTensors load_all(const std::string& path, std::optional<at::ScalarType> dtype = {});

// Writes the tensors (moved to CPU, made contiguous) atomically to `path`.
void save_tensors(const std::string& path, const NamedTensors& tensors,
                  const std::map<std::string, std::string>& metadata = {});

}  // namespace sumi::io
