#include "generation.h"

#include "model_description.h"

#include "core/error.h"
#include "core/progress.h"
#include "core/typed_plugins.h"

#include <ATen/CPUGeneratorImpl.h>

#include <nlohmann/json.hpp>

#include <cmath>

namespace sumi::app {

Generator::Generator(host::Component& model, host::Component& scheduler, int64_t vae_batch_size)
    : model_(model), scheduler_(scheduler), vae_batch_size_(vae_batch_size) {
  const ModelDescription d = describe(model);
  latent_channels_ = d.latent_channels;
  vae_factor_ = d.vae_scale_factor;
  added_conditioning_ = d.added_conditioning;
  noises_per_step_ = host::NoiseSchedulerPlugin(scheduler).describe().noises_per_step;
  if (latent_channels_ < 1 || vae_factor_ < 1)
    throw host::UserError(std::string("model '") + model.info().name + "' describes latents of " + std::to_string(latent_channels_) +
                          " channels at 1/" + std::to_string(vae_factor_) + " scale; expected positive numbers");
}

ImageResult Generator::run(const ImageRequest& r, bool progress) { return run_batch({r}, progress).front(); }

namespace {

std::string size_text(int64_t w, int64_t h) { return std::to_string(w) + "x" + std::to_string(h); }

// What a batch must share: everything that shapes the latents or the timestep schedule.
void check_batch(const std::vector<ImageRequest>& rs) {
  if (rs.empty()) throw std::logic_error("run_batch: no requests");
  const ImageRequest& a = rs.front();
  for (size_t i = 1; i < rs.size(); ++i) {
    const ImageRequest& b = rs[i];
    std::string what;
    if (b.width != a.width || b.height != a.height)
      what = "size " + size_text(b.width, b.height) + " vs " + size_text(a.width, a.height);
    else if (b.steps != a.steps)
      what = "steps " + std::to_string(b.steps) + " vs " + std::to_string(a.steps);
    else if ((b.init_image.defined() || b.init_latents.defined()) != (a.init_image.defined() || a.init_latents.defined()))
      what = "img2img and text-to-image mixed";
    else if ((a.init_image.defined() || a.init_latents.defined()) && b.strength != a.strength)
      what = "strength " + std::to_string(b.strength) + " vs " + std::to_string(a.strength);
    else if (b.mask.defined() != a.mask.defined())
      what = "inpainting and plain requests mixed";
    else if (b.zero_empty_negative != a.zero_empty_negative)
      what = "zero_empty_negative differs";
    if (!what.empty())
      throw host::UserError("image " + std::to_string(i) + " of a batch differs from image 0 (" + what +
                            "); requests batched together must share size, steps, strength and kind");
  }
}

bool same_image(const at::Tensor& a, const at::Tensor& b) {
  return a.is_same(b) || (a.sizes() == b.sizes() && at::equal(a.to(at::kFloat), b.to(at::kFloat)));
}

// Points the process-wide default CPU generator (what torch's global RNG is) at `stream`'s
// state for its lifetime, and seeds the current CUDA device's default generator with `seed`;
// both are put back afterwards. gen_img samples the VAE posterior with generator=None, i.e.
// from the global RNG, which its per-image torch.manual_seed loop left after the last image's
// draws; the model plugin's posterior draw takes the default generator of the VAE's device.
class GlobalRngAs {
 public:
  GlobalRngAs(const at::Generator& stream, uint64_t seed) : cpu_(at::detail::getDefaultCPUGenerator()) {
    {
      std::lock_guard<std::mutex> lock(cpu_.mutex());
      cpu_saved_ = cpu_.get_state();
    }
    const at::Tensor wanted = stream.get_state();
    {
      std::lock_guard<std::mutex> lock(cpu_.mutex());
      cpu_.set_state(wanted);
    }
    if (!at::hasCUDA()) return;
    try {
      at::Generator cuda = at::globalContext().defaultGenerator(at::Device(at::kCUDA));
      std::lock_guard<std::mutex> lock(cuda.mutex());
      cuda_saved_ = cuda.get_state();
      cuda.set_current_seed(seed);
      cuda_ = cuda;
    } catch (...) {
      restore_cpu();
      throw;
    }
  }
  ~GlobalRngAs() {
    restore_cpu();
    if (cuda_.defined()) {
      std::lock_guard<std::mutex> lock(cuda_.mutex());
      cuda_.set_state(cuda_saved_);
    }
  }
  GlobalRngAs(const GlobalRngAs&) = delete;
  GlobalRngAs& operator=(const GlobalRngAs&) = delete;

 private:
  void restore_cpu() {
    std::lock_guard<std::mutex> lock(cpu_.mutex());
    cpu_.set_state(cpu_saved_);
  }
  at::Generator cpu_, cuda_;
  at::Tensor cpu_saved_, cuda_saved_;
};

}  // namespace

// One denoising batch in the making: what each part of run_batch hands the next.
struct Generator::Batch {
  const std::vector<ImageRequest>& rs;
  const ImageRequest& r;  // the first request: what the batch shares
  int64_t B;
  // Conditioning, [uncond..., cond...].
  at::Tensor context, pooled, added;
  // The sampler's schedule.
  at::Tensor timesteps, sigmas;
  double sigma0 = 1.0;
  bool sigma_space = false;
  // The random streams, one per image, and what is drawn from them up front.
  std::vector<int64_t> shape;
  std::vector<at::Generator> gens;
  at::Tensor noise0;
  std::vector<at::Tensor> step_noises;  // gen_img's `noises`, consumed from index 0 whatever the first step
  at::Tensor i2i_noise;
  // img2img: the encoded start images and the first timestep index sampled.
  at::Tensor init_latents;
  int64_t start = 0;
  at::Tensor latents, mask;

  // Where the model computes; the random streams stay on the CPU (gen_img's CPU-seeded draws).
  c10::Device device;

  Batch(const std::vector<ImageRequest>& requests, c10::Device dev)
      : rs(requests), r(requests.front()), B(static_cast<int64_t>(requests.size())), device(dev) {}
  bool img2img() const { return r.init_image.defined() || r.init_latents.defined(); }
  // One draw per image from its own stream, as gen_img's per-image torch.manual_seed loop.
  at::Tensor draw() {
    std::vector<at::Tensor> parts;
    for (auto& g : gens) parts.push_back(at::randn(shape, g, at::TensorOptions().dtype(at::kFloat)));
    return (parts.size() == 1 ? parts.front() : at::cat(parts)).to(device);
  }
};

void Generator::encode_prompts(Batch& b) {
  const auto& rs = b.rs;
  // One encode_text call, so that a weighted encoder gives every prompt of the batch, and each
  // negative, one chunk count.
  std::vector<std::string> texts;
  for (const auto& q : rs) texts.push_back(q.negative_prompt);
  for (const auto& q : rs) texts.push_back(q.prompt);
  std::tie(b.context, b.pooled) = host::ModelPlugin(model_).encode_text(texts);
  if (b.context.size(0) != 2 * b.B)
    throw std::runtime_error("encode_text returned " + std::to_string(b.context.size(0)) + " rows for " +
                             std::to_string(2 * b.B) + " prompts");
  if (b.r.zero_empty_negative) {
    // An empty negative prompt is zero conditioning, as diffusers' SDXL pipelines do it.
    b.context = b.context.clone();
    if (b.pooled.defined()) b.pooled = b.pooled.clone();
    for (int64_t i = 0; i < b.B; ++i) {
      if (!rs[static_cast<size_t>(i)].negative_prompt.empty()) continue;
      b.context[i].zero_();
      if (b.pooled.defined()) b.pooled[i].zero_();
    }
  }
  // The model's added conditioning (describe): for generation the original and target size are
  // the request's, the crop none.
  if (!added_conditioning_.empty()) {
    std::vector<double> row;
    for (const auto& name : added_conditioning_) {
      if (name == "original_height" || name == "target_height") row.push_back(static_cast<double>(b.r.height));
      else if (name == "original_width" || name == "target_width") row.push_back(static_cast<double>(b.r.width));
      else if (name == "crop_top" || name == "crop_left") row.push_back(0.0);
      else throw host::UserError("the model asks for added conditioning '" + name + "', which generation cannot provide");
    }
    b.added = at::tensor(row, at::kFloat).repeat({2 * b.B, 1}).to(b.device);
  }
}

void Generator::plan_timesteps(Batch& b) {
  host::NoiseSchedulerPlugin sched(scheduler_);
  sched.set_timesteps(b.r.steps);
  b.timesteps = sched.timesteps().to(at::kDouble).contiguous();
  b.sigma0 = sched.init_noise_sigma();
  const at::Tensor sigmas = sched.sigmas();
  b.sigmas = sigmas.defined() ? sigmas.to(at::kDouble).contiguous() : at::Tensor();
  // diffusers' sigma samplers (init sigma > 1) noise in sigma space, x0 + sigma * noise; the
  // plugins' add_noise is the DDPM form for every sampler (docs/schedulers.md), which is what
  // diffusers uses for ddim/ddpm/pndm and the DPM-Solvers. Same choice as diffusers' add_noise.
  b.sigma_space = b.sigmas.defined() && b.sigmas.numel() > 0 && b.sigma0 > 1.0;
}

// One CPU stream per image, seeded with its seed, drawn in gen_img's order (process_batch):
// torch.manual_seed(seed); the start latents; steps * noises_per_step sampler noises; and for
// img2img the noise the start image is noised with. Text-to-image draws the sampler noises
// lazily, step by step, which is the same stream.
void Generator::draw_noises(Batch& b) {
  const ImageRequest& r = b.r;
  b.shape = {1, latent_channels_, r.height / vae_factor_, r.width / vae_factor_};
  for (const auto& q : b.rs) b.gens.push_back(at::make_generator<at::CPUGeneratorImpl>(q.seed));
  b.noise0 = b.draw();
  if (r.mask.defined() && !b.img2img()) throw host::UserError("inpainting needs an init image (a mask alone was given)");
  if (!b.img2img()) return;
  if (!(r.strength > 0 && r.strength <= 1)) throw host::UserError("strength must be in (0, 1], got " + std::to_string(r.strength));
  const int64_t n = r.steps * noises_per_step_;
  for (int64_t j = 0; j < n; ++j) b.step_noises.push_back(b.draw());
  b.i2i_noise = b.draw();
}

// The start image noised to the timestep at `index`.
at::Tensor Generator::noised(Batch& b, int64_t index) {
  if (b.sigma_space) return b.init_latents + b.i2i_noise * b.sigmas[index].item<double>();
  const at::Tensor t = at::full({b.B}, static_cast<int64_t>(std::llround(b.timesteps[index].item<double>())), at::kLong);
  return host::NoiseSchedulerPlugin(scheduler_).add_noise(b.init_latents, b.i2i_noise, t).to(at::kFloat);
}

// img2img: each request's start latents (given, or its image encoded as gen_img does).
at::Tensor Generator::encode_start_images(Batch& b) {
  const auto& rs = b.rs;
  const ImageRequest& r = b.r;
  const int64_t lh = r.height / vae_factor_, lw = r.width / vae_factor_;
  std::vector<at::Tensor> per_image(rs.size());
  std::vector<size_t> to_encode;
  for (size_t k = 0; k < rs.size(); ++k) {
    const ImageRequest& q = rs[k];
    if (q.init_latents.defined()) {
      per_image[k] = q.init_latents.to(b.device, at::kFloat);
      if (per_image[k].dim() != 4 || per_image[k].size(0) != 1 || per_image[k].size(2) != lh || per_image[k].size(3) != lw)
        throw host::UserError("init latents must be [1, C, " + std::to_string(lh) + ", " + std::to_string(lw) + "] for a " +
                              size_text(r.width, r.height) + " request");
      continue;
    }
    if (!q.init_image.defined() || q.init_image.dim() != 4 || q.init_image.size(0) != 1 || q.init_image.size(1) != 3 ||
        q.init_image.size(2) != r.height || q.init_image.size(3) != r.width) {
      std::string got;
      if (q.init_image.defined())
        for (auto v : q.init_image.sizes()) got += (got.empty() ? "" : ", ") + std::to_string(v);
      throw host::UserError("init image must be [1, 3, " + std::to_string(r.height) + ", " + std::to_string(r.width) +
                            "], got [" + got + "]; resize it to the request size (to_model_image)");
    }
    to_encode.push_back(k);
  }
  if (!to_encode.empty()) {
    // gen_img: latent_dist.sample(generator=None) * scaling factor, drawn from the global RNG
    // where the seeding loop left it (after the batch's last image's draws); one image
    // encoded and repeated when every image of the batch is the same one; vae_batch_size
    // slices encoded (and drawn) one after another.
    bool all_same = true;
    for (size_t k : to_encode) all_same = all_same && same_image(rs[k].init_image, rs[to_encode.front()].init_image);
    std::vector<at::Tensor> images;
    for (size_t k : to_encode) {
      images.push_back(rs[k].init_image.to(b.device, at::kFloat));
      if (all_same) break;
    }
    const at::Tensor all = images.size() == 1 ? images.front() : at::cat(images);
    const int64_t n = all.size(0);
    const int64_t slice = vae_batch_size_ > 0 ? std::min(vae_batch_size_, n) : n;
    std::vector<at::Tensor> parts;
    {
      GlobalRngAs global(b.gens.back(), rs.back().seed);
      for (int64_t from = 0; from < n; from += slice) {
        const at::Tensor in = all.narrow(0, from, std::min(slice, n - from)).contiguous();
        parts.push_back(host::ModelPlugin(model_).vae_encode(in, true).to(at::kFloat));
      }
    }
    const at::Tensor encoded = parts.size() == 1 ? parts.front() : at::cat(parts);
    int64_t next = 0;
    for (size_t k : to_encode) per_image[k] = encoded.narrow(0, all_same ? 0 : next++, 1);
  }
  return per_image.size() == 1 ? per_image.front() : at::cat(per_image);
}

void Generator::start_latents(Batch& b) {
  const ImageRequest& r = b.r;
  if (!b.img2img()) {
    b.latents = b.noise0 * b.sigma0;
  } else {
    b.init_latents = encode_start_images(b);
    // gen_img's PipelineLike forces the scheduler's steps_offset to 1, so init_timestep =
    // min(int(steps * strength) + 1, steps); the start image is noised to
    // timesteps[-init_timestep] and sampling runs timesteps[steps - init_timestep + 1:] (one
    // entry later than the noise level: legacy diffusers img2img). Two-call samplers
    // (2n - 1 timesteps) keep gen_img's step counts, aligned to whole steps.
    const int64_t n_ts = b.timesteps.numel();
    const int64_t init_timestep = std::min(static_cast<int64_t>(static_cast<double>(r.steps) * r.strength) + 1, r.steps);
    int64_t noise_index = n_ts - init_timestep;
    b.start = r.steps - init_timestep + 1;
    if (n_ts == 2 * r.steps - 1 && r.steps > 1) {
      auto entry = [](int64_t step) { return step > 0 ? 2 * step - 1 : 0; };
      noise_index = entry(r.steps - init_timestep);
      b.start = entry(b.start);
    }
    if (b.start >= n_ts)
      throw host::UserError("strength " + std::to_string(r.strength) + " with " + std::to_string(r.steps) +
                            " steps leaves no sampling step (gen_img runs int(steps * strength) of them); raise "
                            "--strength or --steps");
    b.latents = noised(b, noise_index);
  }
  if (r.mask.defined()) {
    std::vector<at::Tensor> ms;
    for (const auto& q : b.rs)
      ms.push_back(at::upsample_nearest2d(q.mask.to(b.device, at::kFloat), {r.height / vae_factor_, r.width / vae_factor_}));
    b.mask = ms.size() == 1 ? ms.front() : at::cat(ms);
  }
}

void Generator::denoise(Batch& b, bool progress) {
  host::ModelPlugin model(model_);
  host::NoiseSchedulerPlugin sched(scheduler_);
  const ImageRequest& r = b.r;
  // One guidance scale for the batch is a scalar multiply (as a single run does); mixed scales
  // broadcast per image.
  bool one_scale = true;
  for (const auto& q : b.rs) one_scale = one_scale && q.scale == r.scale;
  at::Tensor scales;
  if (!one_scale) {
    std::vector<float> v;
    for (const auto& q : b.rs) v.push_back(static_cast<float>(q.scale));
    scales = at::tensor(v, at::kFloat).view({b.B, 1, 1, 1}).to(b.device);
  }
  sumi_progress* bar = progress ? host::progress_begin("sampling", b.timesteps.numel() - b.start) : nullptr;
  for (int64_t i = b.start; i < b.timesteps.numel(); ++i) {
    const double t = b.timesteps[i].item<double>();
    const at::Tensor x2 = at::cat({b.latents, b.latents});
    const at::Tensor scaled = sched.scale_model_input(x2, i);
    const at::Tensor tt = at::full({2 * b.B}, t, at::TensorOptions().dtype(at::kFloat).device(b.device));
    const auto parts = model.denoise(scaled, tt, b.context, b.pooled, b.added).chunk(2);
    const at::Tensor guided =
        one_scale ? parts[0] + r.scale * (parts[1] - parts[0]) : parts[0] + scales * (parts[1] - parts[0]);
    // Ancestral samplers take this noise; deterministic ones ignore it. gen_img's noise manager
    // hands out its pre-drawn noises in order from the first step sampled.
    const size_t m = static_cast<size_t>(i - b.start);
    const at::Tensor noise = m < b.step_noises.size() ? b.step_noises[m] : b.draw();
    b.latents = sched.step(guided, i, b.latents, noise);
    // Legacy inpainting (diffusers' StableDiffusionInpaintPipelineLegacy, sd-scripts gen_img for
    // ordinary models): keep the original, noised with the img2img noise to this step's
    // timestep, outside the mask.
    if (b.mask.defined()) b.latents = noised(b, i) * (1 - b.mask) + b.latents * b.mask;
    if (bar) host::progress_update(bar, 1, nullptr);
  }
  if (bar) host::progress_end(bar);
}

std::vector<ImageResult> Generator::run_batch(const std::vector<ImageRequest>& rs, bool progress) {
  check_batch(rs);
  const ImageRequest& r = rs.front();
  if (r.width % vae_factor_ || r.height % vae_factor_ || r.width <= 0 || r.height <= 0)
    throw host::UserError("image size must be a positive multiple of " + std::to_string(vae_factor_) + ", got " +
                          size_text(r.width, r.height));
  if (r.steps <= 0) throw host::UserError("steps must be positive, got " + std::to_string(r.steps));
  at::NoGradGuard no_grad;
  Batch b(rs, model_.device());
  encode_prompts(b);
  plan_timesteps(b);
  draw_noises(b);
  start_latents(b);
  denoise(b, progress);
  const at::Tensor images = decode(b.latents);
  // Results on the CPU, where images are written.
  const at::Tensor latents = b.latents.to(at::kCPU);
  std::vector<ImageResult> out;
  for (int64_t k = 0; k < b.B; ++k) out.push_back({latents.narrow(0, k, 1), images.narrow(0, k, 1)});
  return out;
}

at::Tensor Generator::decode(const at::Tensor& latents) {
  const int64_t n = latents.size(0);
  const int64_t slice = vae_batch_size_ > 0 ? std::min(vae_batch_size_, n) : n;
  std::vector<at::Tensor> parts;
  for (int64_t from = 0; from < n; from += slice) {
    const at::Tensor in = latents.narrow(0, from, std::min(slice, n - from)).to(model_.device()).contiguous();
    parts.push_back(host::ModelPlugin(model_).vae_decode(in).to(at::kCPU, at::kFloat));
  }
  return parts.size() == 1 ? parts.front() : at::cat(parts);
}

ImageResult Generator::run_highres(const ImageRequest& r, const HighresFix& h, bool progress, ImageResult* first) {
  std::vector<ImageResult> firsts;
  ImageResult out = run_highres_batch({r}, h, progress, first ? &firsts : nullptr).front();
  if (first) *first = firsts.front();
  return out;
}

std::vector<ImageResult> Generator::run_highres_batch(const std::vector<ImageRequest>& rs, const HighresFix& h,
                                                      bool progress, std::vector<ImageResult>* first) {
  if (!(h.scale > 0 && h.scale < 1))
    throw host::UserError("highres fix scale must be in (0, 1) (gen_img's meaning: 0.5 = first pass at half size), got " +
                          std::to_string(h.scale));
  check_batch(rs);
  auto small = [&](int64_t x) {
    const int64_t v = static_cast<int64_t>(static_cast<double>(x) * h.scale + 0.5);
    return v - v % 32;
  };
  std::vector<ImageRequest> a_all;
  for (const ImageRequest& r : rs) {
    ImageRequest a = r;
    a.width = small(r.width);
    a.height = small(r.height);
    if (a.width <= 0 || a.height <= 0)
      throw host::UserError("highres fix scale " + std::to_string(h.scale) + " makes the first pass of " +
                            size_text(r.width, r.height) + " smaller than 32 pixels; raise the scale or the size");
    a.steps = h.steps;
    a.strength = h.first_strength;
    if (r.init_image.defined())
      a.init_image = at::_upsample_bicubic2d_aa(r.init_image.to(at::kFloat), {a.height, a.width}, false).clamp(-1, 1);
    a.init_latents = at::Tensor();
    if (r.mask.defined()) a.mask = at::upsample_nearest2d(r.mask.to(at::kFloat), {a.height, a.width});
    a_all.push_back(std::move(a));
  }
  std::vector<ImageResult> ones = run_batch(a_all, progress);
  std::vector<ImageRequest> b_all;
  for (size_t k = 0; k < rs.size(); ++k) {
    const ImageRequest& r = rs[k];
    ImageRequest b = r;
    // gen_img seeds the second pass with seed + 1 (and records the original seed), and gives it
    // no mask: the second stage is plain img2img of the upscaled first result.
    b.seed = r.seed + 1;
    b.mask = at::Tensor();
    if (h.latents_upscaling) {
      b.init_latents = at::upsample_bilinear2d(ones[k].latents, {r.height / vae_factor_, r.width / vae_factor_}, false);
    } else {
      // gen_img hands the second stage the first stage's 8-bit images, resized (PIL, 8-bit out).
      const auto eight_bit = [](const at::Tensor& x) { return (x / 2 + 0.5).clamp(0, 1).mul(255).round().div(255).mul(2).sub(1); };
      b.init_image = eight_bit(at::_upsample_bicubic2d_aa(eight_bit(ones[k].image), {r.height, r.width}, false));
      b.init_latents = at::Tensor();
    }
    b_all.push_back(std::move(b));
  }
  if (first) *first = ones;
  return run_batch(b_all, progress);
}

at::Tensor to_model_image(const at::Tensor& hwc, int64_t width, int64_t height) {
  at::Tensor x = hwc.to(at::kFloat).permute({2, 0, 1}).unsqueeze(0);
  if (x.size(1) == 1) x = x.repeat({1, 3, 1, 1});
  x = x.slice(1, 0, 3) / 127.5 - 1;  // drops alpha
  if (x.size(2) != height || x.size(3) != width) x = at::_upsample_bicubic2d_aa(x, {height, width}, false);
  return x.clamp(-1, 1).contiguous();
}

at::Tensor to_mask(const at::Tensor& hwc, int64_t width, int64_t height) {
  const int64_t c = std::min<int64_t>(hwc.size(2), 3);
  at::Tensor m = hwc.to(at::kFloat).slice(2, 0, c).mean(2).div(255).unsqueeze(0).unsqueeze(0);
  return at::upsample_bilinear2d(m, {height, width}, false).clamp(0, 1).contiguous();
}

namespace {

// The keys of a scheduler config object that the sampler declares, as text values.
std::map<std::string, std::string> declared_keys(const nlohmann::json& j, const sumi_component& sampler) {
  std::map<std::string, std::string> out;
  if (!j.is_object()) return out;
  for (int64_t i = 0; i < sampler.n_params; ++i) {
    const char* key = sampler.params[i].key;
    if (!j.contains(key) || j[key].is_null()) continue;
    const auto& v = j[key];
    out[key] = v.is_string() ? v.get<std::string>() : v.dump();
  }
  return out;
}

}  // namespace

std::string describe_model(host::Component& model) {
  return host::ModelPlugin(model).describe();
}

SchedulerSource scheduler_source_from_string(const std::string& name) {
  if (name == "model") return SchedulerSource::model;
  if (name == "gen_img") return SchedulerSource::gen_img;
  throw host::UserError("--scheduler_config '" + name +
                        "' is not one of: model (the model's own scheduler config, the default), gen_img "
                        "(the sampler's class defaults, as kohya's gen_img builds it)");
}

std::map<std::string, std::string> scheduler_config_of(host::Component& model, const sumi_component& sampler,
                                                       SchedulerSource source) {
  nlohmann::json d;
  try {
    d = nlohmann::json::parse(describe_model(model));
  } catch (const std::exception& e) {
    throw host::UserError(std::string("the model plugin's describe gave invalid JSON: ") + e.what());
  }
  const nlohmann::json sched = d.contains("scheduler") ? d["scheduler"] : nlohmann::json::object();
  if (source == SchedulerSource::model) return declared_keys(sched, sampler);
  nlohmann::json only_prediction = nlohmann::json::object();
  if (d.contains("prediction_type")) only_prediction["prediction_type"] = d["prediction_type"];
  return declared_keys(only_prediction, sampler);
}

at::Tensor to_uint8_hwc(const at::Tensor& image) {
  return (image[0].to(at::kFloat) / 2 + 0.5).clamp(0, 1).mul(255).round().to(at::kByte).permute({1, 2, 0}).contiguous();
}

}  // namespace sumi::app
