// The linear algebra kohya's LoRA tools share: a module's full weight change as a matrix, its
// singular value decomposition (libtorch's linalg.svd, LAPACK gesdd: deterministic for a given
// build and thread count), a low-rank split of it, and the 0.99-quantile clamp that
// svd_merge_lora.py and extract_lora_from_models.py apply to the split factors.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace sumi::app::tools {

// `up @ down` with convolution kernels flattened: [out, in*kh*kw] (alpha not applied).
at::Tensor lora_product(const at::Tensor& down, const at::Tensor& up);

struct Svd {
  at::Tensor U, S, Vh;  // reduced: U [m, n], S [n], Vh [n, cols], n = min(m, cols)
};
// SVD of a 2-D float32 matrix on `device` (results on the CPU). `what` names the module for errors.
Svd svd(const at::Tensor& matrix, const std::string& device, const std::string& what);

// The rank-k split: up = U[:, :k] diag(S[:k]) and down = Vh[:k], reshaped to the module's
// form: `down_shape` is the module's down shape with its rank replaced (2-D or 4-D); up gets
// [out, k] or [out, k, 1, 1].
void split(const Svd& s, int64_t k, const at::IntArrayRef down_shape, at::Tensor& down, at::Tensor& up);

// kohya: q = quantile(cat(up, down), 0.99), both clamped to [-q, q].
void clamp_quantile(at::Tensor& up, at::Tensor& down, double quantile);

// The compute device of --device (kohya's flag): "" means the CPU (kohya's tools' default);
// anything else as run_device parses it (cpu, cuda, cuda:N of a GPU present). Throws naming the
// flag otherwise.
std::string check_device(const std::string& device);

}  // namespace sumi::app::tools
