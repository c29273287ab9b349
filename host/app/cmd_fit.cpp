// `sumi fit`: the foundation's demo job. Fits a small linear-regression problem with the
// optimizer and LR-scheduler plugins a recipe names, so the whole path — recipe, kohya flags,
// plugin loading, ABI calls, registry, safetensors output — runs end to end in seconds.
#include "commands.h"

#include "app.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/runtime.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"
#include "core/typed_plugins.h"
#include "sumi/io/safetensors_torch.h"

#include <sumi/recipe/schema.h>

#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

namespace fs = std::filesystem;

namespace sumi::app {

int cmd_fit(const std::vector<std::string>& args) {
  CommonOptions o;
  std::string help;
  if (!parse_common(args, o, help)) {
    std::cout << "usage: sumi fit --recipe RECIPE [kohya flags] [--set section.key=value]...\n"
                 "Fits y = W x + b with the recipe's optimizer and lr_scheduler plugins.\n\n"
              << help;
    return 0;
  }
  const int threads = host::init_runtime(o.threads);
  const c10::Device device = run_device(o.device);
  auto pm = make_plugin_manager(o);
  const auto root = load_recipe_tree(o);
  for (const char* unused : {"model", "network", "noise_scheduler", "datasets", "sample"}) {
    if (root.find(unused))
      throw host::UserError(std::string("sumi fit uses no [") + unused + "] section; remove it or use another command");
  }
  const auto schemas = plugin_schemas(root, pm);
  const auto opt_sec = resolve(root, "optimizer", schemas);
  const auto lr_sec = resolve(root, "lr_scheduler", schemas);
  const auto train = resolve(root, "train", schemas);
  const auto out = resolve(root, "output", schemas);

  const int64_t steps = train.get_int("max_train_steps");
  if (steps <= 0) throw host::UserError("[train] max_train_steps must be positive, got " + std::to_string(steps));
  const int64_t seed = train.has("seed") ? train.get_int("seed") : static_cast<int64_t>(std::random_device{}());
  const double base_lr = opt_sec.get_double("learning_rate");
  const int64_t warmup = lr_sec.get_int("warmup_steps");

  // The problem: 256 samples, 8 features, 4 targets, a little noise.
  at::manual_seed(static_cast<uint64_t>(seed));
  // Drawn on the CPU (the same problem on every device), then moved where the run computes.
  const at::Tensor x_cpu = at::randn({256, 8});
  const at::Tensor w_true = at::randn({4, 8});
  const at::Tensor b_true = at::randn({4});
  const at::Tensor y = (at::linear(x_cpu, w_true, b_true) + 0.01 * at::randn({256, 4})).to(device);
  const at::Tensor x = x_cpu.to(device);

  host::Registry registry;
  registry.set_device(device);
  const at::Tensor w = registry.add("fit", "weight", at::zeros({4, 8}), "", true);
  const at::Tensor b = registry.add("fit", "bias", at::zeros({4}), "", true);
  auto optimizer = instantiate(SUMI_KIND_OPTIMIZER, opt_sec, pm, registry);
  auto scheduler = instantiate(SUMI_KIND_LR_SCHEDULER, lr_sec, pm, registry);
  host::OptimizerPlugin(*optimizer).add_param_group("", {w, b});
  std::fprintf(stderr, "fit: optimizer %s, lr_scheduler %s, %lld steps, lr %g, seed %lld, %d threads\n",
               optimizer->info().name, scheduler->info().name, static_cast<long long>(steps), base_lr,
               static_cast<long long>(seed), threads);

  std::vector<double> losses, lrs;
  auto* bar = host::progress_begin("fit", steps);
  for (int64_t step = 0; step < steps; ++step) {
    for (const auto& p : {w, b})
      if (p.grad().defined()) p.grad().zero_();
    at::Tensor loss = (at::linear(x, w, b) - y).pow(2).mean();
    loss.backward();
    const double lr = base_lr * host::LrSchedulerPlugin(*scheduler).factor(step, steps, warmup, base_lr);
    host::OptimizerPlugin(*optimizer).step({lr});
    losses.push_back(loss.item<double>());
    lrs.push_back(lr);
    char postfix[64];
    std::snprintf(postfix, sizeof postfix, "loss=%.5f, lr=%.3g", losses.back(), lr);
    host::progress_update(bar, 1, postfix);
  }
  host::progress_end(bar);
  const double final_loss = (at::linear(x, w, b) - y).pow(2).mean().item<double>();

  const fs::path dir = out.get_string("output_dir");
  fs::create_directories(dir);
  const std::string name = out.get_string("output_name");
  const std::string weights = (dir / (name + ".safetensors")).string();
  io::save_tensors(weights, {{"weight", w.detach()}, {"bias", b.detach()}},
                   {{"sumi.command", "fit"},
                    {"sumi.optimizer", optimizer->info().name},
                    {"sumi.lr_scheduler", scheduler->info().name},
                    {"sumi.steps", std::to_string(steps)},
                    {"sumi.final_loss", std::to_string(final_loss)}});
  const std::string csv = (dir / (name + ".loss.csv")).string();
  {
    const std::string tmp = csv + ".tmp";
    std::ofstream f(tmp);
    f << "step,loss,lr\n";
    for (size_t i = 0; i < losses.size(); ++i) f << i << "," << losses[i] << "," << lrs[i] << "\n";
    f.close();
    if (!f) throw host::UserError("cannot write " + tmp);
    fs::rename(tmp, csv);
  }
  std::printf("fit: loss %.6f -> %.6f (weight error %.5f)\n", losses.front(), final_loss,
              (w.detach().cpu() - w_true).abs().max().item<double>());
  std::printf("fit: wrote %s and %s\n", weights.c_str(), csv.c_str());
  return 0;
}

}  // namespace sumi::app
