// A scoped switch for ATen autocast (mixed precision) that compiles on libtorch 1.13 and 2.x,
// whose autocast APIs differ. Inside the scope the SD modules run matmuls and convolutions in
// `dtype` (bf16 on CPU, fp16/bf16 on CUDA) while their norms stay in float.
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace sumi::nn {

// The current autocast switch and dtype of a device (CPU or CUDA).
bool autocast_enabled(c10::DeviceType device);
c10::ScalarType autocast_dtype(c10::DeviceType device);

class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device, c10::ScalarType dtype, bool enabled = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType device_;
  bool prev_enabled_;
  c10::ScalarType prev_dtype_;
};

}  // namespace sumi::nn
