// The host's representation of sumi_tensor: an at::Tensor with its own reference count, so a
// plugin's retain/release never touches libtorch's intrusive counts directly.
#pragma once

#include <sumi/sumi.h>

#include <ATen/ATen.h>

#include <atomic>

struct sumi_tensor_s {
  explicit sumi_tensor_s(at::Tensor t) : tensor(std::move(t)) {}
  at::Tensor tensor;
  std::atomic<int32_t> refs{1};
};

namespace sumi::host {

// New handle (one reference) for a tensor.
inline sumi_tensor make_handle(at::Tensor t) { return new sumi_tensor_s(std::move(t)); }
// The tensor behind a handle; throws on NULL.
const at::Tensor& unwrap(sumi_tensor t);

at::ScalarType to_scalar_type(sumi_dtype d);
sumi_dtype from_scalar_type(at::ScalarType t);
at::Device to_device(sumi_device d);
sumi_device from_device(const at::Device& d);

}  // namespace sumi::host
