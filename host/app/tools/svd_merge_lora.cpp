// `sumi svd_merge_lora`: kohya's networks/svd_merge_lora.py — several LoRAs summed as weight
// changes (W = sum ratio_i * up_i @ down_i * alpha_i / r_i per module), then each module split
// again at --new_rank (--new_conv_rank for 3x3 convolutions) by SVD, both factors clamped at
// the 0.99 quantile of their values as kohya does, alpha = the new rank.
#include "app/tools/tools.h"

#include "core/error.h"
#include "core/progress.h"
#include "app/train/train_metadata.h"
#include "app/tools/kohya_files.h"
#include "app/tools/lora_math.h"
#include "app/tools/plugin_model.h"
#include "app/tools/tool_args.h"

#include <ATen/ATen.h>

#include <ctime>
#include <iostream>

namespace sumi::app::tools {

namespace {
constexpr double kClampQuantile = 0.99;

// One LoRA module's weight change in kohya's merge form (3x3 through conv2d).
at::Tensor module_change(const at::Tensor& down, const at::Tensor& up, double ratio, const at::Tensor& scale) {
  at::Tensor d;
  if (down.dim() == 2) d = at::matmul(up, down);
  else if (down.size(2) == 1 && down.size(3) == 1)
    d = at::matmul(up.squeeze(3).squeeze(2), down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3);
  else d = at::conv2d(down.permute({1, 0, 2, 3}), up).permute({1, 0, 2, 3});
  return d.mul(ratio).mul(scale);
}
}  // namespace

int cmd_svd_merge_lora(const std::vector<std::string>& argv) {
  ToolArgs args("svd_merge_lora",
                "Merges LoRAs into one LoRA of a new rank by SVD of the summed weight changes (kohya networks/svd_merge_lora.py).");
  args.value("save_precision", "precision of the saved file (default: --precision)", std::nullopt, {"float", "fp16", "bf16"})
      .value("precision", "precision of the merge", "float", {"float", "fp16", "bf16"})
      .value("save_to", "the file to write (.safetensors)")
      .list("models", "LoRA files to merge")
      .list("ratios", "one ratio per LoRA")
      .value("new_rank", "rank of the output LoRA", "4")
      .value("new_conv_rank", "rank of its 3x3 conv modules (default: --new_rank)")
      .value("device", "device for the SVD (cpu; cuda where this libtorch has it)")
      .flag("no_metadata", "write no modelspec metadata (kohya's minimum ss_* keys are kept)")
      .list("plugin-dir", "extra plugin folder (the model plugin whose names the modelspec metadata takes)");
  if (!args.parse(argv)) return 0;
  const auto& models = args.strs("models");
  const std::vector<double> ratios = args.lora_ratios();
  const std::string save_to = args.required("save_to");
  check_output(save_to, models, "--save_to");
  const int64_t new_rank = args.integer("new_rank");
  const int64_t new_conv_rank = args.opt_integer("new_conv_rank").value_or(new_rank);
  if (new_rank < 1 || new_conv_rank < 1) args.fail("--new_rank and --new_conv_rank must be at least 1");
  const std::string device = check_device(args.str("device"));
  const at::ScalarType merge_dtype = *precision_type(args.str("precision"));
  const at::ScalarType save_dtype = precision_type(args.str("save_precision")).value_or(merge_dtype);

  std::cout << "new rank: " << new_rank << ", new conv rank: " << new_conv_rank << std::endl;
  std::vector<std::string> order;  // modules in first-seen order
  std::map<std::string, at::Tensor> merged;
  std::optional<std::string> v2, base_model;
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < models.size(); ++i) {
    std::cout << "loading: " << models[i] << std::endl;
    const StateDict sd = read_state_dict(models[i], "--models", merge_dtype);
    if (!v2 && sd.metadata.count("ss_v2")) v2 = sd.metadata.at("ss_v2");
    if (!base_model && sd.metadata.count("ss_base_model_version")) base_model = sd.metadata.at("ss_base_model_version");
    std::cout << "merging..." << std::endl;
    for (const LoraModule& m : lora_modules(sd)) {
      const at::Tensor scale = m.alpha ? *m.alpha / m.rank() : at::scalar_tensor(1.0, at::kDouble);
      at::Tensor change = module_change(m.down, m.up, ratios[i], scale).to(merge_dtype);
      auto it = merged.find(m.name);
      if (it == merged.end()) {
        merged.emplace(m.name, at::zeros_like(change).add(change));
        order.push_back(m.name);
      } else {
        if (!it->second.sizes().equals(change.sizes()))
          throw host::UserError("--models '" + models[i] + "': module '" + m.name + "' changes a weight of shape " +
                                c10::str(change.sizes()) + ", the LoRAs before it one of " +
                                c10::str(it->second.sizes()) + ": are they LoRAs for the same model?");
        it->second = it->second + change;
      }
    }
  }

  std::cout << "extract new lora..." << std::endl;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  sumi_progress* bar = host::progress_begin("extract", static_cast<int64_t>(order.size()));
  for (const auto& name : order) {
    const at::Tensor& W = merged.at(name);
    const bool conv = W.dim() == 4;
    const bool conv3 = conv && !(W.size(2) == 1 && W.size(3) == 1);
    const int64_t out_dim = W.size(0), in_dim = W.size(1);
    const at::Tensor mat = W.reshape({out_dim, -1}).to(at::kFloat);
    const int64_t k = std::min({conv3 ? new_conv_rank : new_rank, in_dim, out_dim});
    const Svd s = svd(mat, device, "module '" + name + "'");
    at::Tensor down, up;
    split(s, k, W.sizes(), down, up);
    if (!conv) up = up.reshape({out_dim, k});
    clamp_quantile(up, down, kClampQuantile);
    tensors.emplace_back(name + ".lora_up.weight", up.to(merge_dtype).contiguous());
    tensors.emplace_back(name + ".lora_down.weight", down.to(merge_dtype).contiguous());
    tensors.emplace_back(name + ".alpha", at::scalar_tensor(k, at::kLong));  // an int in kohya
    host::progress_update(bar, 1, nullptr);
  }
  host::progress_end(bar);

  Metadata meta{{"ss_network_module", "networks.lora"},
                {"ss_network_dim", std::to_string(new_rank)},
                {"ss_network_alpha", std::to_string(new_rank)},
                {"ss_network_args", "{\"conv_dim\": " + std::to_string(new_conv_rank) +
                                        ", \"conv_alpha\": " + std::to_string(new_conv_rank) + "}"}};
  if (v2) meta["ss_v2"] = *v2;
  if (base_model) meta["ss_base_model_version"] = *base_model;
  std::cout << "calculating hashes and creating metadata..." << std::endl;
  // kohya v0.7.0 hashes the state dict before its save cast: merge-precision factors, int64 alphas.
  const Hashes h = kohya_hashes(tensors, meta);
  meta["sshs_model_hash"] = h.model_hash;
  meta["sshs_legacy_hash"] = h.legacy_hash;
  if (!args.on("no_metadata")) {
    // The model the LoRAs are for, as the model plugins describe it.
    const bool is_v2 = v2 && *v2 == "True";
    auto pm = tool_plugin_manager(args.strs("plugin-dir"));
    const LoraModel base = model_for_lora_files(pm, base_model, is_v2, "", "sumi svd_merge_lora --models");
    ModelSpec spec;
    spec.kind = ModelSpecKind::lora;
    set_modelspec_model(spec, base.description, is_v2);
    spec.title = file_stem(save_to);
    spec.timestamp = std::time(nullptr);
    for (auto& [k, v] : modelspec_metadata(spec)) meta[k] = v;
    meta["modelspec.merged_from"] = merged_from_titles(models);
  }
  for (auto& [k, t] : tensors) t = t.to(save_dtype);
  std::cout << "saving model to: " << save_to << std::endl;
  write_kohya(save_to, std::move(tensors), meta);
  return 0;
}

}  // namespace sumi::app::tools
