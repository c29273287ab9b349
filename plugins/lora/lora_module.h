// lora_module.h — one wrapped layer of a kohya LoRA-format network (lora, lora_fa, dylora): the
// module's geometry from the model's module info and the shapes of its lora_down / lora_up.
// Header-only, included by each plugin in its own library.
#pragma once

#include <sumi/plugin.hpp>

#include <string>
#include <vector>

namespace sumi::lora_layout {

struct Module {
  std::string name;
  bool conv = false;
  std::vector<int64_t> stride{1, 1}, padding{0, 0};
  std::vector<int64_t> base_shape;  // of the frozen weight: what weight_delta returns
  int64_t dim = 0;
  double scale = 1.0;  // alpha / dim
  Tensor down, up, alpha;
};

// The module for `info` at rank `dim` and `alpha` (tensors not yet created); `down_shape` and
// `up_shape` receive kohya's lora_down / lora_up shapes (a conv's down keeps the kernel, its up
// is 1x1). Refuses a borrowed weight whose shape disagrees with the description, naming
// `network` and the module.
inline Module make_module(const sumi_module_info& info, int64_t dim, double alpha, std::vector<int64_t>& down_shape,
                          std::vector<int64_t>& up_shape, const std::string& network) {
  Module m;
  m.name = info.name;
  m.conv = info.kind == SUMI_MODULE_CONV2D;
  m.dim = dim;
  m.scale = alpha / static_cast<double>(dim);
  if (m.conv) {
    m.stride = {info.stride[0], info.stride[1]};
    m.padding = {info.padding[0], info.padding[1]};
    down_shape = {dim, info.in_features, info.kernel[0], info.kernel[1]};
    up_shape = {info.out_features, dim, 1, 1};
    m.base_shape = {info.out_features, info.in_features, info.kernel[0], info.kernel[1]};
  } else {
    down_shape = {dim, info.in_features};
    up_shape = {info.out_features, dim};
    m.base_shape = {info.out_features, info.in_features};
  }
  const Tensor weight = Tensor::borrow(info.weight);
  if (weight.defined() && weight.sizes() != m.base_shape)
    throw Error(SUMI_ERR_INVALID_ARGUMENT, network + ": module '" + m.name + "': its weight is " + shape_str(weight.sizes()) +
                                               " but its description says " + shape_str(m.base_shape));
  return m;
}

}  // namespace sumi::lora_layout
