#include "generation.h"

#include "core/error.h"
#include "core/op_bridge.h"
#include "core/progress.h"
#include "core/tensor_handle.h"

#include <ATen/CPUGeneratorImpl.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

namespace sumi::app {

namespace {

// Owns a handle returned by a vtable call.
struct Handle {
  sumi_tensor h = nullptr;
  ~Handle() { host::release_handle(h); }
  at::Tensor get() const { return h ? host::unwrap(h) : at::Tensor(); }
};

sumi_tensor borrow(const at::Tensor& t, std::vector<sumi_tensor>& keep) {
  if (!t.defined()) return nullptr;
  keep.push_back(host::make_handle(t));
  return keep.back();
}

}  // namespace

ImageResult Generator::run(const ImageRequest& r, bool progress) {
  if (r.width % 8 || r.height % 8 || r.width <= 0 || r.height <= 0)
    throw host::UserError("image size must be a positive multiple of 8, got " + std::to_string(r.width) + "x" +
                          std::to_string(r.height));
  if (r.steps <= 0) throw host::UserError("steps must be positive, got " + std::to_string(r.steps));
  const auto& mvt = model_.vtable<sumi_model_vtable>();
  const auto& svt = scheduler_.vtable<sumi_noise_scheduler_vtable>();
  std::vector<sumi_tensor> keep;
  struct Release {
    std::vector<sumi_tensor>& k;
    ~Release() {
      for (auto h : k) host::release_handle(h);
    }
  } release{keep};

  at::NoGradGuard no_grad;
  // Conditioning: [uncond, cond] as diffusers batches it.
  Handle cond, pooled, ncond, npooled;
  const char* p = r.prompt.c_str();
  model_.check(mvt.encode_text(model_.self(), &p, 1, &cond.h, &pooled.h), "encode_text");
  at::Tensor uncond_t, unpooled_t;
  if (r.zero_empty_negative && r.negative_prompt.empty()) {
    uncond_t = at::zeros_like(cond.get());
    if (pooled.get().defined()) unpooled_t = at::zeros_like(pooled.get());
  } else {
    const char* n = r.negative_prompt.c_str();
    model_.check(mvt.encode_text(model_.self(), &n, 1, &ncond.h, &npooled.h), "encode_text");
    uncond_t = ncond.get();
    unpooled_t = npooled.get();
  }
  const at::Tensor context = at::cat({uncond_t, cond.get()});
  const at::Tensor pooled_all = pooled.get().defined() ? at::cat({unpooled_t, pooled.get()}) : at::Tensor();
  at::Tensor added;
  if (pooled_all.defined()) {
    // SDXL size/crop conditioning: original size, crop top-left, target size.
    added = at::tensor({static_cast<double>(r.height), static_cast<double>(r.width), 0.0, 0.0,
                        static_cast<double>(r.height), static_cast<double>(r.width)},
                       at::kFloat)
                .repeat({2, 1});
  }

  scheduler_.check(svt.set_timesteps(scheduler_.self(), r.steps), "set_timesteps");
  Handle ts;
  scheduler_.check(svt.timesteps(scheduler_.self(), &ts.h), "timesteps");
  const at::Tensor timesteps = ts.get().to(at::kDouble).contiguous();
  double sigma0 = 1.0;
  scheduler_.check(svt.init_noise_sigma(scheduler_.self(), &sigma0), "init_noise_sigma");

  auto gen = at::make_generator<at::CPUGeneratorImpl>(r.seed);
  at::Tensor latents = at::randn({1, 4, r.height / 8, r.width / 8}, gen, at::TensorOptions().dtype(at::kFloat));
  latents = latents * sigma0;

  sumi_progress* bar = progress ? host::progress_begin("sampling", timesteps.numel()) : nullptr;
  for (int64_t i = 0; i < timesteps.numel(); ++i) {
    const double t = timesteps[i].item<double>();
    const at::Tensor x2 = at::cat({latents, latents});
    Handle scaled, out, next;
    scheduler_.check(svt.scale_model_input(scheduler_.self(), borrow(x2, keep), i, &scaled.h), "scale_model_input");
    const at::Tensor tt = at::full({2}, t, at::kFloat);
    model_.check(mvt.denoise(model_.self(), borrow(scaled.get(), keep), borrow(tt, keep), borrow(context, keep),
                             borrow(pooled_all, keep), borrow(added, keep), &out.h),
                 "denoise");
    const auto parts = out.get().chunk(2);
    const at::Tensor guided = parts[0] + r.scale * (parts[1] - parts[0]);
    // Ancestral samplers take this noise; deterministic ones ignore it. Drawing it every step
    // keeps the stream identical to sd-scripts' for the ancestral case.
    const at::Tensor noise = at::randn(latents.sizes(), gen, at::TensorOptions().dtype(at::kFloat));
    scheduler_.check(svt.step(scheduler_.self(), borrow(guided, keep), i, borrow(latents, keep), borrow(noise, keep),
                              &next.h),
                     "step");
    latents = next.get();
    if (bar) host::progress_update(bar, 1, nullptr);
  }
  if (bar) host::progress_end(bar);

  Handle image;
  model_.check(mvt.vae_decode(model_.self(), borrow(latents, keep), &image.h), "vae_decode");
  return {latents, image.get().to(at::kFloat)};
}

std::map<std::string, std::string> scheduler_config_of(const std::string& model_path, const sumi_component& sampler) {
  std::map<std::string, std::string> out;
  const auto file = std::filesystem::path(model_path) / "scheduler" / "scheduler_config.json";
  if (!std::filesystem::is_directory(model_path) || !std::filesystem::exists(file)) return out;
  std::ifstream in(file);
  nlohmann::json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    throw host::UserError(file.string() + ": not valid JSON: " + e.what());
  }
  for (int64_t i = 0; i < sampler.n_params; ++i) {
    const char* key = sampler.params[i].key;
    if (!j.contains(key) || j[key].is_null()) continue;
    const auto& v = j[key];
    out[key] = v.is_string() ? v.get<std::string>() : v.dump();
  }
  return out;
}

at::Tensor to_uint8_hwc(const at::Tensor& image) {
  return (image[0].to(at::kFloat) / 2 + 0.5).clamp(0, 1).mul(255).round().to(at::kByte).permute({1, 2, 0}).contiguous();
}

}  // namespace sumi::app
