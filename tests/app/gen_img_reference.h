// sd-scripts gen_img's img2img / inpainting for one batch, written out step by step with ATen
// calls and the raw plugin slots, as the expected side of the Generator tests
// (process_batch's seeding loop, then PipelineLike.__call__'s img2img branch):
//   for each image: torch.manual_seed(seed); start_code = randn; noises[j] = randn for
//   j < steps * noises_per_step; i2i_noise = randn
//   init_latents = vae.encode(images).latent_dist.sample(generator=None) * scale, i.e. from the
//   global RNG left after the LAST image's draws (one image encoded and repeated when all are
//   the same; vae_batch_size slices one after another)
//   init_timestep = min(int(steps * strength) + 1, steps)  (steps_offset forced to 1)
//   latents = add_noise(init_latents, i2i_noise, timesteps[-init_timestep])
//   for t in timesteps[steps - init_timestep + 1:]: CFG step, the k-th step taking noises[k];
//   with a mask: latents = add_noise(init, i2i_noise, t) * keep + latents * (1 - keep)
// add_noise is written out here too (x0 + sigma * noise for the sigma samplers, the DDPM form
// with alphas_cumprod for the others), not taken from the plugin.
#pragma once

#include "core/component.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace sumi::test {

struct GenImgImage {
  std::string prompt, negative_prompt;
  uint64_t seed = 0;
  at::Tensor image;  // [1, 3, H, W] in [-1, 1]
  at::Tensor mask;   // [1, 1, H, W], 1 = repaint (undefined: none)
};

struct GenImgOut {
  at::Tensor init_latents;  // the VAE posterior sample, scaled, [B, 4, h, w]
  at::Tensor i2i_noise;     // [B, 4, h, w]
  at::Tensor latents;       // final
};

// Runs `sample` with torch's global CPU RNG in the state of `stream`, putting it back after.
template <class F>
auto with_global_rng(const at::Generator& stream, F&& sample) {
  at::Generator global = at::detail::getDefaultCPUGenerator();
  const at::Tensor saved = global.get_state();
  global.set_state(stream.get_state());
  auto out = sample();
  global.set_state(saved);
  return out;
}

inline at::Tensor vae_sample(host::Component& model, const at::Tensor& images) {
  sumi_tensor in = host::make_handle(images), out = nullptr;
  model.check(model.vtable<sumi_model_vtable>().vae_encode(model.self(), in, 1, &out), "vae_encode");
  at::Tensor z = host::unwrap(out).to(at::kFloat);
  host::release_handle(in);
  host::release_handle(out);
  return z;
}

inline at::Tensor owned(sumi_tensor h) {
  at::Tensor t = host::unwrap(h);
  host::release_handle(h);
  return t;
}

inline GenImgOut gen_img_img2img(host::Component& model, host::Component& sched, const std::vector<GenImgImage>& batch,
                                 int64_t steps, double strength, double scale, int64_t noises_per_step = 1,
                                 int64_t vae_batch_size = 0) {
  const auto B = static_cast<int64_t>(batch.size());
  const int64_t H = batch[0].image.size(2), W = batch[0].image.size(3);
  const std::vector<int64_t> shape{4, H / 8, W / 8};
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  // process_batch's seeding loop.
  at::Tensor start_code = at::zeros({B, 4, H / 8, W / 8}), i2i = at::zeros({B, 4, H / 8, W / 8});
  std::vector<at::Tensor> noises;
  for (int64_t j = 0; j < steps * noises_per_step; ++j) noises.push_back(at::zeros({B, 4, H / 8, W / 8}));
  at::Generator last;
  bool all_same = true;
  for (int64_t i = 0; i < B; ++i) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(batch[static_cast<size_t>(i)].seed);
    start_code[i] = at::randn(shape, g, f32);
    for (auto& n : noises) n[i] = at::randn(shape, g, f32);
    i2i[i] = at::randn(shape, g, f32);
    last = g;
    if (i > 0) all_same = all_same && batch[static_cast<size_t>(i)].image.is_same(batch[static_cast<size_t>(i - 1)].image);
  }
  // The img2img branch: encode (sample from the global RNG), scale (in the plugin), repeat.
  std::vector<at::Tensor> imgs;
  for (const auto& b : batch) imgs.push_back(b.image);
  const at::Tensor images = all_same ? batch[0].image : at::cat(imgs);
  at::Tensor init = with_global_rng(last, [&] {
    const int64_t n = images.size(0), slice = vae_batch_size > 0 && vae_batch_size < B ? vae_batch_size : n;
    std::vector<at::Tensor> parts;
    for (int64_t from = 0; from < n; from += slice) parts.push_back(vae_sample(model, images.narrow(0, from, std::min(slice, n - from))));
    return at::cat(parts);
  });
  if (init.size(0) == 1) init = init.repeat({B, 1, 1, 1});

  const auto& svt = sched.vtable<sumi_noise_scheduler_vtable>();
  const auto& mvt = model.vtable<sumi_model_vtable>();
  sched.check(svt.set_timesteps(sched.self(), steps), "set_timesteps");
  sumi_tensor h = nullptr;
  sched.check(svt.timesteps(sched.self(), &h), "timesteps");
  const at::Tensor ts = owned(h).to(at::kDouble);
  sched.check(svt.sigmas(sched.self(), &h), "sigmas");
  const at::Tensor sigmas = owned(h).to(at::kDouble);
  sched.check(svt.alphas_cumprod(sched.self(), &h), "alphas_cumprod");
  const at::Tensor alphas = owned(h).to(at::kDouble);
  double sigma0 = 1;
  sched.check(svt.init_noise_sigma(sched.self(), &sigma0), "init_noise_sigma");
  const int64_t n_ts = ts.numel();
  auto add_noise = [&](int64_t index) {
    if (sigma0 > 1) return init + i2i * sigmas[index].item<double>();
    const double a = alphas[std::llround(ts[index].item<double>())].item<double>();
    return init * std::sqrt(a) + i2i * std::sqrt(1 - a);
  };
  const int64_t offset = 1;
  const int64_t init_timestep = std::min(static_cast<int64_t>(static_cast<double>(steps) * strength) + offset, steps);
  at::Tensor latents = add_noise(n_ts - init_timestep);  // timesteps[-init_timestep]
  const int64_t t_start = std::max<int64_t>(steps - init_timestep + offset, 0);

  at::Tensor keep;
  for (const auto& b : batch)
    if (b.mask.defined()) {
      std::vector<at::Tensor> ms;
      for (const auto& c : batch) ms.push_back(1 - at::upsample_nearest2d(c.mask, {H / 8, W / 8}));
      keep = at::cat(ms);
      break;
    }

  std::vector<const char*> texts;
  for (const auto& b : batch) texts.push_back(b.negative_prompt.c_str());
  for (const auto& b : batch) texts.push_back(b.prompt.c_str());
  sumi_tensor cond = nullptr, pooled = nullptr;
  model.check(mvt.encode_text(model.self(), texts.data(), 2 * B, &cond, &pooled), "encode_text");
  const at::Tensor context = owned(cond);
  if (pooled) host::release_handle(pooled);

  for (int64_t i = t_start; i < n_ts; ++i) {
    std::vector<sumi_tensor> borrowed;
    auto lend = [&](const at::Tensor& t) { return borrowed.emplace_back(host::make_handle(t)); };
    sumi_tensor scaled = nullptr, out = nullptr, next = nullptr;
    sched.check(svt.scale_model_input(sched.self(), lend(at::cat({latents, latents})), i, &scaled), "scale_model_input");
    model.check(mvt.denoise(model.self(), lend(owned(scaled)), lend(at::full({2 * B}, ts[i].item<double>(), at::kFloat)),
                            lend(context), nullptr, nullptr, &out),
                "denoise");
    const auto parts = owned(out).chunk(2);
    const at::Tensor guided = parts[0] + scale * (parts[1] - parts[0]);
    sched.check(svt.step(sched.self(), lend(guided), i, lend(latents), lend(noises[static_cast<size_t>(i - t_start)]), &next),
                "step");
    latents = owned(next);
    if (keep.defined()) latents = add_noise(i) * keep + latents * (1 - keep);
    for (auto b : borrowed) host::release_handle(b);
  }
  return {init, i2i, latents};
}

}  // namespace sumi::test
