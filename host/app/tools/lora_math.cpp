#include "app/tools/lora_math.h"

#include "app/app.h"
#include "core/error.h"

#include <ATen/ATen.h>

namespace sumi::app::tools {

at::Tensor lora_product(const at::Tensor& down, const at::Tensor& up) {
  return at::matmul(up.reshape({up.size(0), -1}), down.reshape({down.size(0), -1}));
}

std::string check_device(const std::string& device) {
  // kohya's tools compute on the CPU unless told; a device named is parsed as --device everywhere.
  if (device.empty()) return "cpu";
  return run_device(device).str();
}

Svd svd(const at::Tensor& matrix, const std::string& device, const std::string& what) {
  at::Tensor m = matrix.to(c10::Device(device.empty() ? "cpu" : device), at::kFloat);
  if (!at::isfinite(m).all().item<bool>())
    throw host::UserError(what + ": the matrix to decompose has NaN or infinite values");
  auto [U, S, Vh] = at::linalg_svd(m, /*full_matrices=*/false);
  return {U.cpu(), S.cpu(), Vh.cpu()};
}

void split(const Svd& s, int64_t k, const at::IntArrayRef down_shape, at::Tensor& down, at::Tensor& up) {
  at::Tensor u = s.U.narrow(1, 0, k).matmul(at::diag(s.S.narrow(0, 0, k)));
  at::Tensor vh = s.Vh.narrow(0, 0, k);
  std::vector<int64_t> dshape(down_shape.begin(), down_shape.end());
  dshape[0] = k;
  down = vh.reshape(dshape).contiguous();
  if (dshape.size() == 4) up = u.reshape({u.size(0), k, 1, 1}).contiguous();
  else up = u.contiguous();
}

void clamp_quantile(at::Tensor& up, at::Tensor& down, double quantile) {
  const at::Tensor all = at::cat({up.flatten(), down.flatten()});
  const at::Tensor hi = at::quantile(all, quantile);
  const at::Tensor lo = -hi;
  up = at::clamp(up, lo, hi);
  down = at::clamp(down, lo, hi);
}

}  // namespace sumi::app::tools
