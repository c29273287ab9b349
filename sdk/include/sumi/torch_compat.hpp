// sumi/torch_compat.hpp — the one place that knows which libtorch it is built against.
//
// sumi builds against Debian's libtorch 1.13 (CPU) and against libtorch 2.x (CPU or CUDA); the
// APIs that differ between them are wrapped here, for the host and for native plugins alike:
// autocast switches per device type (renamed device-generic in 2.4), whether a CUDA device is
// there, and which optional kernels and dtypes exist (SDPA since 2.0, float8 since 2.1).
#ifndef SUMI_TORCH_COMPAT_HPP
#define SUMI_TORCH_COMPAT_HPP

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/version.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define SUMI_TORCH_DEVICE_AUTOCAST 1
#else
#define SUMI_TORCH_DEVICE_AUTOCAST 0
#endif
// at::scaled_dot_product_attention (fused attention kernels).
#define SUMI_TORCH_HAS_SDPA (TORCH_VERSION_MAJOR >= 2)
// at::kFloat8_e4m3fn / at::kFloat8_e5m2.
#define SUMI_TORCH_HAS_FLOAT8 (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1))

namespace sumi::torch_compat {

// Thread-local autocast state of one device type (CPU or CUDA).
inline bool autocast_enabled(c10::DeviceType d) {
#if SUMI_TORCH_DEVICE_AUTOCAST
  return at::autocast::is_autocast_enabled(d);
#else
  return d == c10::DeviceType::CPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
#endif
}
inline void set_autocast_enabled(c10::DeviceType d, bool on) {
#if SUMI_TORCH_DEVICE_AUTOCAST
  at::autocast::set_autocast_enabled(d, on);
#else
  if (d == c10::DeviceType::CPU) at::autocast::set_cpu_enabled(on);
  else at::autocast::set_enabled(on);
#endif
}
inline c10::ScalarType autocast_dtype(c10::DeviceType d) {
#if SUMI_TORCH_DEVICE_AUTOCAST
  return at::autocast::get_autocast_dtype(d);
#else
  return d == c10::DeviceType::CPU ? at::autocast::get_autocast_cpu_dtype() : at::autocast::get_autocast_gpu_dtype();
#endif
}
// libtorch 1.13 throws for a CPU autocast dtype other than bf16.
inline void set_autocast_dtype(c10::DeviceType d, c10::ScalarType t) {
#if SUMI_TORCH_DEVICE_AUTOCAST
  at::autocast::set_autocast_dtype(d, t);
#else
  if (d == c10::DeviceType::CPU) at::autocast::set_autocast_cpu_dtype(t);
  else at::autocast::set_autocast_gpu_dtype(t);
#endif
}

// Autocast of one device type (CPU or CUDA) switched to `dtype` (and on, unless `enabled` is
// false) for the scope, the previous state restored after; the autocast weight cache is cleared
// when the outermost scope ends. Throws std::invalid_argument for other device types and
// whatever libtorch throws for a dtype it refuses (then nothing was changed).
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device, c10::ScalarType dtype, bool enabled = true)
      : device_(device), prev_enabled_(false), prev_dtype_(at::kBFloat16) {
    if (device != c10::DeviceType::CPU && device != c10::DeviceType::CUDA)
      throw std::invalid_argument("autocast: only CPU and CUDA autocast are supported");
    prev_enabled_ = autocast_enabled(device);
    prev_dtype_ = autocast_dtype(device);
    set_autocast_dtype(device, dtype);  // first: it may throw, before anything was switched
    set_autocast_enabled(device, enabled);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    set_autocast_enabled(device_, prev_enabled_);
    set_autocast_dtype(device_, prev_dtype_);
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType device_;
  bool prev_enabled_;
  c10::ScalarType prev_dtype_;
};

// CUDA devices this process can use: 0 for a CPU-only libtorch build or a machine without GPU.
inline int64_t cuda_device_count() {
  if (!at::hasCUDA()) return 0;
  return static_cast<int64_t>(at::detail::getCUDAHooks().getNumGPUs());
}

// The device a `--device` text names: "cpu", "cuda" (GPU 0) or "cuda:N"; "" is CUDA 0 when this
// build has CUDA and a GPU is present, else the CPU. Throws std::invalid_argument naming the text,
// what is accepted and the way out (another spelling, --device cpu, a CUDA libtorch).
inline c10::Device parse_device(const std::string& text) {
  const int64_t gpus = cuda_device_count();
  if (text.empty()) return gpus > 0 ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (text == "cpu") return c10::Device(c10::kCPU);
  int64_t index = -1;
  if (text == "cuda") {
    index = 0;
  } else if (text.rfind("cuda:", 0) == 0 && text.size() > 5 && text.size() < 9 &&
             text.find_first_not_of("0123456789", 5) == std::string::npos) {
    index = std::stoll(text.substr(5));
  } else {
    throw std::invalid_argument("--device '" + text + "': expected cpu, cuda or cuda:N (N the GPU's index)");
  }
  if (!at::hasCUDA())
    throw std::invalid_argument("--device " + text + ": this sumi is built against a libtorch without CUDA (" TORCH_VERSION
                                "); use --device cpu, or build against a CUDA libtorch (docs/dependencies.md, \"CUDA\")");
  if (index >= gpus)
    throw std::invalid_argument("--device " + text + ": " +
                                (gpus == 0 ? std::string("no CUDA GPU is present")
                                           : "this machine has " + std::to_string(gpus) + " CUDA GPU(s), cuda:0 to cuda:" +
                                                 std::to_string(gpus - 1)) +
                                "; use --device cpu or one of those");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

// Waits until the work queued on `device` is done (CUDA runs asynchronously); nothing on the CPU.
// Timings of device work call it before reading the clock.
inline void synchronize(const c10::Device& device) {
  if (device.is_cuda()) at::detail::getCUDAHooks().deviceSynchronize(device.index());
}

}  // namespace sumi::torch_compat

#endif  // SUMI_TORCH_COMPAT_HPP
