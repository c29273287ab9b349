#include "bench.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>

#include "nn/clip_text.h"
#include "nn/flops.h"
#include "nn/layers.h"
#include "nn/unet.h"
#include <sumi/torch_compat.hpp>

namespace sumi::bench {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Process CPU time: on a machine shared with other work, the wall time of a --threads 1 run
// stretches with the load while its CPU time stays close to the work done.
double cpu_now() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Peak RSS of the job: the kernel's high-water mark, reset at the job's start where
// /proc/self/clear_refs allows it (Linux >= 4.0); otherwise the process's peak so far.
void reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (f) f << "5";
}

double peak_rss_gib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream is(line.substr(6));
      double kb = 0;
      is >> kb;
      return kb / (1024.0 * 1024.0);
    }
  }
  return 0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

at::ScalarType dtype_of(const std::string& name) { return name == "bf16" ? at::kBFloat16 : at::kFloat; }

void print_header() {
  std::printf("%-28s %-5s %10s %10s %10s %8s %9s %9s\n", "job", "dtype", "seconds", "GFLOP", "GFLOP/s", "of_peak",
              "rss_GiB", "cpu_s");
}

void print(const JobResult& r) {
  char frac[32];
  if (r.peak_gflops > 0) std::snprintf(frac, sizeof frac, "%.1f%%", 100.0 * r.gflops() / r.peak_gflops);
  else std::snprintf(frac, sizeof frac, "-");
  std::printf("%-28s %-5s %10.4f %10.2f %10.1f %8s %9.2f %9.4f\n", r.name.c_str(), r.dtype.c_str(), r.seconds, r.gflop,
              r.gflops(), frac, r.rss_gib, r.cpu_seconds);
  std::fflush(stdout);
}

// ---- model configurations ------------------------------------------------------------------

struct ModelSpec {
  nn::UNetConfig unet;
  std::vector<nn::ClipTextConfig> text_encoders;  // SD1: CLIP-L; SDXL: CLIP-L and OpenCLIP-G
  int64_t image_size = 512;
  int64_t pooled_dim = 0;  // SDXL: width of text_embeds
  bool xl = false;
};

ModelSpec model_spec(const Options& o) {
  ModelSpec m;
  if (o.model != "sd15" && o.model != "sdxl")
    throw std::invalid_argument("sumi bench: --model expects sd15 or sdxl, got '" + o.model + "'");
  m.xl = o.model == "sdxl";
  nn::UNetConfig& u = m.unet;
  if (!m.xl) {
    // The UNetConfig and ClipTextConfig defaults are SD 1.5's UNet and CLIP ViT-L/14.
    m.text_encoders.emplace_back();
    if (o.tiny) {  // tests/data/fixtures/tiny-sd1
      u.block_out_channels = {32, 64, 64, 64};
      u.cross_attention_dim = 32;
      auto& t = m.text_encoders[0];
      t.hidden_size = 32;
      t.intermediate_size = 128;
      t.num_hidden_layers = 3;
      t.num_attention_heads = 4;
    }
    m.image_size = o.tiny ? 64 : 512;
  } else {
    nn::ClipTextConfig l, g;
    g.hidden_size = 1280;
    g.intermediate_size = 5120;
    g.num_hidden_layers = 32;
    g.num_attention_heads = 20;
    g.hidden_act = "gelu";
    g.projection_dim = 1280;
    u.block_out_channels = {320, 640, 1280};
    u.cross_attention = {false, true, true};
    u.transformer_depth = {1, 2, 10};
    u.num_heads = {5, 10, 20};
    u.mid_transformer_depth = 10;
    u.cross_attention_dim = 2048;
    u.use_linear_projection = true;
    u.addition_time_embed_dim = 256;
    if (o.tiny) {
      u.block_out_channels = {32, 64, 64};
      u.transformer_depth = {1, 2, 2};
      u.num_heads = {2, 4, 4};
      u.mid_transformer_depth = 2;
      l.hidden_size = g.hidden_size = 32;
      l.intermediate_size = g.intermediate_size = 128;
      l.num_hidden_layers = g.num_hidden_layers = 3;
      l.num_attention_heads = g.num_attention_heads = 4;
      g.projection_dim = 32;
      u.cross_attention_dim = 64;
      u.addition_time_embed_dim = 8;
    }
    m.pooled_dim = g.projection_dim;
    u.projection_class_embeddings_input_dim = m.pooled_dim + 6 * u.addition_time_embed_dim;
    m.text_encoders = {l, g};
    m.image_size = o.tiny ? 64 : 1024;
  }
  if (o.size > 0) m.image_size = o.size;
  if (m.image_size % 64 != 0)
    throw std::invalid_argument("sumi bench: --size must be a positive multiple of 64, got " + std::to_string(m.image_size));
  return m;
}

// ---- peaks ---------------------------------------------------------------------------------

// Fastest of `reps` calls of `fn`, after one warm-up call; each call waits for `dev`.
double best_seconds(int reps, const c10::Device& dev, const std::function<void()>& fn, double* cpu) {
  fn();
  torch_compat::synchronize(dev);
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    const double c0 = cpu_now();
    fn();
    torch_compat::synchronize(dev);
    const double t = seconds_since(t0);
    if (t < best) {
      best = t;
      *cpu = cpu_now() - c0;
    }
  }
  return best;
}

std::vector<JobResult> peaks(const Options& o, const c10::Device& dev, double& peak_bf16, double& peak_fp32) {
  at::NoGradGuard ng;
  const int64_t n = o.tiny ? 256 : 2048;
  const int64_t c = o.tiny ? 32 : 320, hw = o.tiny ? 16 : 64;
  const int reps = o.tiny ? 2 : 5;
  std::vector<JobResult> out;
  for (const std::string dt : {"fp32", "bf16"}) {
    const auto opts = at::TensorOptions().dtype(dtype_of(dt)).device(dev);
    {
      reset_peak_rss();
      const at::Tensor a = at::randn({n, n}).to(opts), b = at::randn({n, n}).to(opts);
      JobResult r{"peak matmul " + std::to_string(n) + "^2", dt};
      r.gflop = 2.0 * n * n * n * 1e-9;
      r.seconds = best_seconds(reps, dev, [&] { (void)at::mm(a, b); }, &r.cpu_seconds);
      r.rss_gib = peak_rss_gib();
      out.push_back(r);
    }
    {
      reset_peak_rss();
      const at::Tensor x = at::randn({1, c, hw, hw}).to(opts), w = (at::randn({c, c, 3, 3}) * 0.05).to(opts);
      JobResult r{"peak conv3x3 " + std::to_string(c) + "ch " + std::to_string(hw) + "^2", dt};
      r.gflop = 2.0 * hw * hw * 9.0 * c * c * 1e-9;
      r.seconds = best_seconds(reps, dev, [&] { (void)at::conv2d(x, w, {}, 1, 1); }, &r.cpu_seconds);
      r.rss_gib = peak_rss_gib();
      out.push_back(r);
    }
    const double best = std::max(out[out.size() - 2].gflops(), out.back().gflops());
    (dt == "bf16" ? peak_bf16 : peak_fp32) = best;
  }
  for (auto& r : out) r.peak_gflops = r.dtype == "bf16" ? peak_bf16 : peak_fp32;
  return out;
}

// ---- the SD jobs -----------------------------------------------------------------------------

struct Inputs {
  at::Tensor latents;  // [1, 4, h, w] fp32
  at::Tensor ids;      // [1, 77] token ids
  at::Tensor context;  // [1, 77, cross_attention_dim] fp32 (the cached text encoder output)
  at::Tensor text_embeds, time_ids;  // SDXL: [1, P], [1, 6]
};

// Drawn on the CPU (the same numbers on every device), then moved to `dev`.
Inputs make_inputs(const ModelSpec& m, const c10::Device& dev) {
  Inputs in;
  const int64_t h = m.image_size / 8;
  in.latents = at::randn({1, 4, h, h});
  in.ids = at::randint(0, m.text_encoders[0].vocab_size, {1, 77}, at::TensorOptions().dtype(at::kLong));
  in.context = at::randn({1, 77, m.unet.cross_attention_dim});
  if (m.xl) {
    in.text_embeds = at::randn({1, m.pooled_dim});
    const double s = static_cast<double>(m.image_size);
    in.time_ids = at::tensor({s, s, 0.0, 0.0, s, s}, at::TensorOptions().dtype(at::kFloat)).unsqueeze(0);
  }
  for (at::Tensor* t : {&in.latents, &in.ids, &in.context, &in.text_embeds, &in.time_ids})
    if (t->defined()) *t = t->to(dev);
  return in;
}

at::Tensor unet_call(const nn::UNet2DConditionModel& unet, const at::Tensor& x, const at::Tensor& ctx,
                     const Inputs& in, int64_t batch, at::ScalarType dt) {
  const at::Tensor t = at::full({batch}, 500, at::TensorOptions().dtype(at::kLong).device(x.device()));
  if (in.text_embeds.defined()) {
    nn::AddedConditioning ac{in.text_embeds.expand({batch, -1}).to(dt), in.time_ids.expand({batch, -1}).to(dt)};
    return unet.forward(x.to(dt), t, ctx.to(dt), &ac);
  }
  return unet.forward(x.to(dt), t, ctx.to(dt));
}

// Timed iterations of one job: a warm-up that counts the FLOPs, then `steps` timed calls.
JobResult time_job(const std::string& name, const std::string& dtype, int steps, const c10::Device& dev,
                   const std::function<void()>& fn, const std::function<double(const nn::FlopCount&)>& flops) {
  reset_peak_rss();
  JobResult r{name, dtype};
  {
    nn::FlopCounter counter;
    fn();
    torch_compat::synchronize(dev);
    r.gflop = flops(counter.count()) * 1e-9;
  }
  std::vector<double> times, cpu;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = Clock::now();
    const double c0 = cpu_now();
    fn();
    torch_compat::synchronize(dev);
    times.push_back(seconds_since(t0));
    cpu.push_back(cpu_now() - c0);
  }
  r.seconds = median(times);
  r.cpu_seconds = median(cpu);
  r.rss_gib = peak_rss_gib();
  return r;
}

// LoRA (kohya's LierLa set: the Linear / 1x1 layers of the UNet's transformers and the text
// encoders' attention and MLP), dim 4, alpha 1, fp32 weights (drawn on the CPU, then moved to
// the layer's device), hooked into the layers.
struct Lora {
  std::vector<at::Tensor> params;
  std::vector<nn::Linear*> linears;
  std::vector<nn::Conv2d*> convs;
  ~Lora() {
    for (auto* l : linears) l->adapter = nullptr;
    for (auto* c : convs) c->adapter = nullptr;
  }
  void attach(torch::nn::Module& root, const std::function<bool(const std::string&)>& selected, int64_t dim) {
    const double scale = 1.0 / static_cast<double>(dim);
    for (const auto& item : root.named_modules("", false)) {
      if (!selected(item.key())) continue;
      if (auto* lin = dynamic_cast<nn::Linear*>(item.value().get())) {
        const int64_t in = lin->weight.size(1), out = lin->weight.size(0);
        const auto dev = lin->weight.device();
        at::Tensor down = (at::randn({dim, in}) / std::sqrt(static_cast<double>(in))).to(dev).requires_grad_(true);
        at::Tensor up = at::zeros({out, dim}, at::TensorOptions().device(dev)).requires_grad_(true);
        params.push_back(down);
        params.push_back(up);
        lin->adapter = [down, up, scale](const at::Tensor& x, const at::Tensor& y) {
          return y + at::linear(at::linear(x, down), up) * scale;
        };
        linears.push_back(lin);
      } else if (auto* conv = dynamic_cast<nn::Conv2d*>(item.value().get())) {
        const auto& w = conv->weight;
        at::Tensor down = (at::randn({dim, w.size(1), w.size(2), w.size(3)}) /
                           std::sqrt(static_cast<double>(w.size(1) * w.size(2) * w.size(3))))
                              .to(w.device())
                              .requires_grad_(true);
        at::Tensor up = at::zeros({w.size(0), dim, 1, 1}, at::TensorOptions().device(w.device())).requires_grad_(true);
        params.push_back(down);
        params.push_back(up);
        const int64_t s = conv->stride, p = conv->padding;
        conv->adapter = [down, up, scale, s, p](const at::Tensor& x, const at::Tensor& y) {
          return y + at::conv2d(at::conv2d(x, down, {}, s, p), up) * scale;
        };
        convs.push_back(conv);
      }
    }
  }
};

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

}  // namespace

std::vector<JobResult> run(const Options& o) {
  if (o.steps <= 0) throw std::invalid_argument("sumi bench: --steps must be positive");
  if (o.precision != "bf16" && o.precision != "fp32")
    throw std::invalid_argument("sumi bench: --precision expects bf16 or fp32, got '" + o.precision + "'");
  for (const auto& j : o.jobs)
    if (j != "peak" && j != "unet" && j != "lora" && j != "cfg")
      throw std::invalid_argument("sumi bench: unknown job '" + j + "'; jobs: peak, unet, lora, cfg");
  auto wants = [&](const char* j) { return std::find(o.jobs.begin(), o.jobs.end(), j) != o.jobs.end(); };
  const ModelSpec m = model_spec(o);
  const c10::Device dev = torch_compat::parse_device(o.device);
  const at::ScalarType dt = dtype_of(o.precision);
  std::printf("model %s%s, %lldx%lld, batch 1, device %s, %d threads, precision %s%s, %d timed steps per job\n",
              o.model.c_str(), o.tiny ? " (tiny)" : "", static_cast<long long>(m.image_size),
              static_cast<long long>(m.image_size), dev.str().c_str(), at::get_num_threads(), o.precision.c_str(),
              o.frozen_fp32 ? " (training: frozen base fp32 + autocast)" : "", o.steps);
  if (!dev.is_cpu()) std::printf("rss_GiB is host memory; cpu_s the host's CPU time while the device works\n");
  print_header();
  std::vector<JobResult> results;
  double peak_bf16 = 0, peak_fp32 = 0;
  if (wants("peak")) {
    for (auto& r : peaks(o, dev, peak_bf16, peak_fp32)) {
      print(r);
      results.push_back(r);
    }
  }
  const double peak = o.precision == "bf16" ? peak_bf16 : peak_fp32;
  auto finish = [&](JobResult r) {
    r.peak_gflops = peak;
    print(r);
    results.push_back(r);
  };
  if (!wants("unet") && !wants("lora") && !wants("cfg")) return results;

  at::manual_seed(0);
  const Inputs in = make_inputs(m, dev);
  const std::string size = std::to_string(m.image_size);

  // Inference: the UNet in the compute dtype, as `sumi generate --bf16` loads it.
  if (wants("unet") || wants("cfg")) {
    auto unet = std::make_shared<nn::UNet2DConditionModel>(m.unet);
    unet->to(dev, dt);
    if (dt == at::kBFloat16 && dev.is_cpu()) nn::convs_to_channels_last(*unet);  // as the sd plugin loads bf16
    at::NoGradGuard ng;
    if (wants("unet")) {
      finish(time_job(
          "unet forward " + size + " b1", o.precision, o.steps, dev,
          [&] { (void)unet_call(*unet, in.latents, in.context, in, 1, dt); },
          [](const nn::FlopCount& c) { return c.total(); }));
    }
    if (wants("cfg")) {
      // One DDIM step with classifier-free guidance 7.5: uncond and cond in one batch of 2.
      const at::Tensor ctx = at::cat({at::zeros_like(in.context), in.context});
      const double a = 0.5, a_prev = 0.55, guidance = 7.5;
      at::Tensor x = in.latents.clone();
      finish(time_job(
          "cfg step " + size + " (b2 unet)", o.precision, o.steps, dev,
          [&] {
            const at::Tensor eps2 = unet_call(*unet, at::cat({x, x}), ctx, in, 2, dt).to(at::kFloat);
            const auto parts = eps2.chunk(2);
            const at::Tensor eps = parts[0] + guidance * (parts[1] - parts[0]);
            const at::Tensor x0 = (x - std::sqrt(1 - a) * eps) / std::sqrt(a);
            x = std::sqrt(a_prev) * x0 + std::sqrt(1 - a_prev) * eps;
          },
          [](const nn::FlopCount& c) { return c.total(); }));
    }
  }

  if (wants("lora")) {
    // A LoRA training step as `sumi train --mixed_precision bf16` runs it: the text encoder(s)
    // and UNet frozen (bf16 weights, or fp32 with --frozen_fp32), LoRA dim 4 in fp32 on both,
    // bf16 autocast, loss in fp32, backward, AdamW over the LoRA weights.
    const at::ScalarType frozen = o.precision == "bf16" && !o.frozen_fp32 ? at::kBFloat16 : at::kFloat;
    auto unet = std::make_shared<nn::UNet2DConditionModel>(m.unet);
    unet->to(dev, frozen);
    if (frozen == at::kBFloat16 && dev.is_cpu()) nn::convs_to_channels_last(*unet);
    std::vector<std::shared_ptr<nn::ClipTextModel>> tes;
    for (const auto& c : m.text_encoders) {
      tes.push_back(std::make_shared<nn::ClipTextModel>(c));
      tes.back()->to(dev, frozen);
    }
    for (auto& p : unet->parameters()) p.requires_grad_(false);
    for (auto& te : tes)
      for (auto& p : te->parameters()) p.requires_grad_(false);
    Lora lora;
    lora.attach(*unet, [](const std::string& k) { return contains(k, "attentions."); }, 4);
    for (auto& te : tes)
      lora.attach(*te, [](const std::string& k) { return contains(k, ".self_attn.") || contains(k, ".mlp."); }, 4);
    torch::optim::AdamW opt(lora.params, torch::optim::AdamWOptions(1e-4));
    const at::Tensor target = at::randn_like(in.latents);
    const at::ScalarType autocast = o.precision == "bf16" ? at::kBFloat16 : at::ScalarType::Undefined;
    finish(time_job(
        "lora step " + size + " (te+unet)", o.precision, o.steps, dev,
        [&] {
          at::Tensor loss;
          {
            torch_compat::AutocastGuard ac(dev.type(), autocast == at::ScalarType::Undefined ? at::kBFloat16 : autocast,
                                 autocast != at::ScalarType::Undefined);
            at::Tensor ctx, pooled;
            if (!m.xl) {
              ctx = tes[0]->forward(in.ids).last_hidden_state;
            } else {
              auto a = tes[0]->forward(in.ids), b = tes[1]->forward(in.ids);
              const auto& ha = a.hidden_states[a.hidden_states.size() - 2];
              const auto& hb = b.hidden_states[b.hidden_states.size() - 2];
              ctx = at::cat({ha, hb.to(ha.scalar_type())}, -1);
            }
            const at::Tensor pred = unet_call(*unet, in.latents, ctx, in, 1, frozen);
            loss = at::mse_loss(pred.to(at::kFloat), target);
          }
          loss.backward();
          opt.step();
          opt.zero_grad();
        },
        // Backward of a frozen base: activation gradients only, one more pass of every
        // conv / linear and two of each attention product (dQ, dK; dP, dV).
        [](const nn::FlopCount& c) { return 2 * (c.conv + c.linear) + 3 * c.attention; }));
  }
  return results;
}

}  // namespace sumi::bench
