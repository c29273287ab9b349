// `sumi resize_lora`: kohya's networks/resize_lora.py — every module of a LoRA re-split at a
// new rank by SVD of its up @ down (the kept part of the same weight change: alpha is rescaled
// so dW is the rank-k truncation), at a fixed rank or a rank chosen per module from the
// singular values (--dynamic_method sv_ratio | sv_fro | sv_cumulative). The rank rules,
// alphas, report and metadata are those of sd-scripts v0.7.0 (tests/tools checks them against
// its outputs).
#include "app/tools/tools.h"

#include "core/progress.h"
#include "app/tools/kohya_files.h"
#include "app/tools/lora_math.h"
#include "app/tools/tool_args.h"

#include <ATen/ATen.h>

#include <cmath>
#include <iostream>

namespace sumi::app::tools {

namespace {

constexpr double kMinSv = 1e-6;  // kohya's MIN_SV: a module with S[0] at or below it is zero

// The rank kohya's rank_resize picks (v0.7.0: the dynamic criteria keep one value more than
// their index).
int64_t pick_rank(const at::Tensor& S, int64_t limit, const std::string& method, double param) {
  const int64_t len = S.size(0);
  auto clamp_index = [&](int64_t i) { return std::max<int64_t>(1, std::min<int64_t>(i, len - 1)); };
  int64_t k = limit;
  if (method == "sv_ratio") {
    const at::Tensor min_sv = S[0] / param;
    k = clamp_index(at::gt(S, min_sv).sum().item<int64_t>()) + 1;
  } else if (method == "sv_cumulative") {
    const double total = S.sum().item<double>();
    const at::Tensor c = at::cumsum(S, 0) / total;
    k = clamp_index(at::searchsorted(c, at::scalar_tensor(param, c.options())).item<int64_t>() + 1) + 1;
  } else if (method == "sv_fro") {
    const at::Tensor sq = S.pow(2);
    const double total = sq.sum().item<double>();
    const at::Tensor c = at::cumsum(sq, 0) / total;
    k = clamp_index(at::searchsorted(c, at::scalar_tensor(param * param, c.options())).item<int64_t>() + 1) + 1;
  }
  if (S[0].item<double>() <= kMinSv) k = 1;
  else if (k > limit) k = limit;
  return k;
}

}  // namespace

int cmd_resize_lora(const std::vector<std::string>& argv) {
  ToolArgs args("resize_lora",
                "A LoRA at a new rank by SVD of each module's up @ down (kohya networks/resize_lora.py).");
  args.value("model", "the LoRA to resize (.safetensors, .ckpt, .pt)")
      .value("save_to", "the file to write (.safetensors)")
      .value("new_rank", "rank of the output (with --dynamic_method: the highest rank allowed)", "4")
      .value("new_conv_rank", "rank of 3x3 conv modules (default: --new_rank)")
      .value("save_precision", "precision of the saved tensors (default float)", std::nullopt, {"float", "fp16", "bf16"})
      .value("device", "device for the SVD (cpu; cuda where this libtorch has it)")
      .flag("verbose", "print kohya's per-module report (retained sum(S), Frobenius norm, max(S) ratio)")
      .value("dynamic_method", "choose each module's rank from its singular values", std::nullopt,
             {"sv_ratio", "sv_fro", "sv_cumulative"})
      .value("dynamic_param", "target of --dynamic_method (sv_ratio: largest/smallest kept; sv_fro, sv_cumulative: fraction kept)");
  if (!args.parse(argv)) return 0;

  const std::string model = args.required("model");
  const std::string save_to = args.required("save_to");
  check_output(save_to, {model}, "--save_to");
  const int64_t new_rank = args.integer("new_rank");
  const int64_t new_conv_rank = args.opt_integer("new_conv_rank").value_or(new_rank);
  if (new_rank < 1) args.fail("--new_rank must be at least 1 (got " + std::to_string(new_rank) + ")");
  if (new_conv_rank < 1) args.fail("--new_conv_rank must be at least 1 (got " + std::to_string(new_conv_rank) + ")");
  const std::string method = args.str("dynamic_method");
  const std::optional<double> param = args.opt_real("dynamic_param");
  if (!method.empty() && (!param || *param == 0))
    args.fail("--dynamic_method " + method + " needs --dynamic_param (e.g. sv_ratio 2, sv_fro 0.9)");
  if (method.empty() && param) args.fail("--dynamic_param is only used with --dynamic_method");
  if (method == "sv_ratio" && *param <= 0) args.fail("--dynamic_param for sv_ratio must be positive");
  const std::string device = check_device(args.str("device"));
  const at::ScalarType save_dtype = precision_type(args.str("save_precision")).value_or(at::kFloat);
  const bool verbose = args.on("verbose");

  std::cout << "loading Model..." << std::endl;
  StateDict sd = read_state_dict(model, "--model", at::kFloat);
  const std::vector<LoraModule> modules = lora_modules(sd);
  std::cout << "Resizing Lora..." << std::endl;
  if (!method.empty())
    std::cout << "Dynamically determining new alphas and dims based off " << method << ": " << py_float(*param)
              << ", max rank is " << new_rank << std::endl;
  if (verbose) std::cout << "\n";

  // kohya's "from R": the rank of the first 2-D lora_down in key order.
  int64_t old_dim = modules.front().rank();
  for (const auto& m : modules)
    if (m.down.dim() == 2) {
      old_dim = m.rank();
      break;
    }

  std::map<std::string, at::Tensor> out = sd.tensors;
  std::vector<double> fro_list;
  double last_alpha = 0;
  at::NoGradGuard no_grad;
  sumi_progress* bar = host::progress_begin("resize", static_cast<int64_t>(modules.size()));
  for (const auto& m : modules) {
    const bool conv = m.down.dim() == 4;
    const at::Tensor M = lora_product(m.down, m.up);
    const Svd s = svd(M, device, "--model '" + model + "': module '" + m.name + "'");
    const int64_t limit = conv && m.down.size(2) * m.down.size(3) > 1 ? new_conv_rank : new_rank;
    // Never more than the matrix has (kohya would write mismatched factors).
    const int64_t k = std::min(pick_rank(s.S, limit, method, param.value_or(0)), s.S.size(0));
    // scale = alpha / old rank (a float32 tensor op in kohya), then float(scale * k).
    at::Tensor scale = m.alpha ? (*m.alpha / m.rank()) : at::scalar_tensor(1.0, at::kDouble);
    const double alpha = (scale * k).item<double>();
    last_alpha = alpha;

    at::Tensor down, up;
    split(s, k, m.down.sizes(), down, up);
    out[m.name + ".lora_down.weight"] = down.to(save_dtype);
    out[m.name + ".lora_up.weight"] = up.to(save_dtype);
    out[m.name + ".alpha"] = at::scalar_tensor(alpha, at::kDouble).to(save_dtype);

    if (verbose) {
      const at::Tensor sum_retained = s.S.narrow(0, 0, k).abs().sum() / s.S.abs().sum();
      const at::Tensor sq = s.S.pow(2);
      const double fro = (at::sqrt(sq.narrow(0, 0, k).sum()) / at::sqrt(sq.sum())).item<double>();
      const double max_ratio = (s.S[0] / s.S[k - 1]).item<double>();
      if (!std::isnan(fro)) fro_list.push_back(fro);
      std::string name = m.name;
      if (name.size() < 75) name.resize(75, ' ');
      host::progress_update(bar, 0, nullptr);
      std::cout << name << " | sum(S) retained: " << py_percent(sum_retained.item<double>(), 1)
                << ", fro retained: " << py_percent(fro, 1) << ", max(S) ratio: " << py_fixed(max_ratio, 1);
      if (!method.empty()) std::cout << ", dynamic | dim: " << k << ", alpha: " << py_float(alpha);
      std::cout << "\n";
    }
    host::progress_update(bar, 1, nullptr);
  }
  host::progress_end(bar);
  if (verbose) {
    double mean = 0, var = 0;
    for (double f : fro_list) mean += f;
    mean /= static_cast<double>(fro_list.size());
    for (double f : fro_list) var += (f - mean) * (f - mean);
    var /= static_cast<double>(fro_list.size());
    std::cout << "\nAverage Frobenius norm retention: " << py_percent(mean, 2) << " | std: " << py_fixed(std::sqrt(var), 3)
              << "\n";
  }
  std::cout << "resizing complete" << std::endl;

  Metadata meta = sd.metadata;
  const std::string comment = meta.count("ss_training_comment") ? meta["ss_training_comment"] : "";
  if (method.empty()) {
    const std::string conv_desc = new_conv_rank == new_rank ? "" : " (conv: " + std::to_string(new_conv_rank) + ")";
    meta["ss_training_comment"] = "dimension is resized from " + std::to_string(old_dim) + " to " +
                                  std::to_string(new_rank) + conv_desc + "; " + comment;
    meta["ss_network_dim"] = std::to_string(new_rank);
    meta["ss_network_alpha"] = py_float(last_alpha);
  } else {
    meta["ss_training_comment"] =
        "Dynamic resize with " + method + ": " + py_float(*param) + " from " + std::to_string(old_dim) + "; " + comment;
    meta["ss_network_dim"] = "Dynamic";
    meta["ss_network_alpha"] = "Dynamic";
  }
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto& [k, t] : out) tensors.emplace_back(k, at::isFloatingType(t.scalar_type()) ? t.to(save_dtype) : t);
  const Hashes h = kohya_hashes(tensors, meta);
  meta["sshs_model_hash"] = h.model_hash;
  meta["sshs_legacy_hash"] = h.legacy_hash;
  std::cout << "saving model to: " << save_to << std::endl;
  write_kohya(save_to, std::move(tensors), meta);
  return 0;
}

}  // namespace sumi::app::tools
