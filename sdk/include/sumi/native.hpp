// sumi/native.hpp — the native tier: for plugins that link libtorch themselves (model
// families, custom kernels).
//
// A native library declares the exact torch build it was compiled against; the host loads it
// only when that equals its own build, and then lets it see the at::Tensor behind a handle.
// Export with SUMI_NATIVE_PLUGIN instead of SUMI_PLUGIN. The library must resolve libtorch to
// the host's already-loaded copy (link it as a normal shared dependency; never bundle it).
#ifndef SUMI_NATIVE_HPP
#define SUMI_NATIVE_HPP

#include <sumi/plugin.hpp>

#include <ATen/ATen.h>
#include <torch/version.h>

#ifndef SUMI_TORCH_CUDA_VERSION
#define SUMI_TORCH_CUDA_VERSION ""
#endif

namespace sumi::native {

inline const sumi_native_info* build_info() {
  static const sumi_native_info info = {sizeof(sumi_native_info), TORCH_VERSION,
#if defined(_GLIBCXX_USE_CXX11_ABI)
                                        _GLIBCXX_USE_CXX11_ABI,
#else
                                        0,
#endif
                                        0, SUMI_TORCH_CUDA_VERSION};
  return &info;
}

// The host's tensor behind a handle (borrowed).
inline const at::Tensor& unwrap(const Tensor& t) {
  return *static_cast<const at::Tensor*>(api().native_tensor(t.get()));
}
// A sumi_device (host->device, Context::device) as libtorch's device.
inline at::Device to_at_device(sumi_device d) {
  if (d.device_type == SUMI_DEVICE_CUDA) return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(d.device_id));
  return at::Device(at::kCPU);
}
// A new handle sharing `t`.
inline Tensor wrap(const at::Tensor& t) { return Tensor::adopt(api().native_wrap(&t)); }

}  // namespace sumi::native

#define SUMI_NATIVE_PLUGIN(LIB, VER, ...) \
  SUMI_PLUGIN_DESCRIPTOR_(LIB, VER, ::sumi::native::build_info(), __VA_ARGS__)

#endif  // SUMI_NATIVE_HPP
