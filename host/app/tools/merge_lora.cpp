// `sumi merge_lora` / `sumi sdxl_merge_lora`: kohya's networks/merge_lora.py and
// sdxl_merge_lora.py.
//   * With --sd_model: each LoRA's weight change is added into the checkpoint's weights
//     (W += ratio * up @ down * alpha / r, in float32, in the order given) and the whole model is
//     saved. The checkpoint is loaded by its model plugin, whose module list maps kohya's LoRA
//     module names to weights (the list --network_merge uses); modules the model does not have
//     are skipped with kohya's message.
//   * Without: the LoRAs become one LoRA. kohya scales each input's factors by
//     sqrt(alpha / base alpha) * ratio (|.| for lora_up) and adds them (same ranks), or with
//     --concat stacks them along the rank. That is not the weighted sum of the inputs' weight
//     changes (the plain sum has cross terms); it is what kohya writes, so it is what sumi writes.
#include "app/tools/tools.h"

#include "core/error.h"
#include "core/progress.h"
#include "core/registry.h"
#include "app/model_file.h"
#include "app/train/train_metadata.h"
#include "app/tools/kohya_files.h"
#include "app/tools/plugin_model.h"
#include "app/tools/tool_args.h"
#include "sumi/io/safetensors.h"

#include <ATen/ATen.h>

#include <cmath>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <unistd.h>

namespace fs = std::filesystem;

namespace sumi::app::tools {

namespace {

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// The command: merge_lora (any model; --v2 checked against the file) or sdxl_merge_lora, whose
// name stands for kohya's --sdxl.
struct MergeFlags {
  std::string implied;  // the kohya flag the command's name implies ("" for merge_lora)
  bool named() const { return !implied.empty(); }
};

// One LoRA's change into one model weight, as kohya's merge_to_sd_model computes it.
at::Tensor lora_delta(const at::Tensor& weight, at::Tensor down, at::Tensor up, const at::Tensor& scale, double ratio) {
  at::Tensor d;
  if (weight.dim() == 2) {
    if (up.dim() == 4) {
      up = up.squeeze(3).squeeze(2);
      down = down.squeeze(3).squeeze(2);
    }
    d = at::matmul(up, down);
  } else if (down.size(2) == 1 && down.size(3) == 1) {
    d = at::matmul(up.squeeze(3).squeeze(2), down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3);
  } else {
    d = at::conv2d(down.permute({1, 0, 2, 3}), up).permute({1, 0, 2, 3});
  }
  return d.mul(ratio).mul(scale);
}

int merge_into_model(const ToolArgs& args, const MergeFlags& f, const std::vector<std::string>& models,
                     const std::vector<double>& ratios, std::optional<at::ScalarType> save_dtype) {
  const std::string sd_model = args.str("sd_model");
  const std::string save_to = args.required("save_to");
  std::vector<std::string> inputs = models;
  inputs.push_back(sd_model);
  check_output(save_to, inputs, "--save_to");
  if (args.str("precision") != "float")
    args.fail("--precision " + args.str("precision") + " with --sd_model: sumi merges into a checkpoint in float32 only");
  auto pm = tool_plugin_manager(args.strs("plugin-dir"));
  std::vector<std::string> given;
  if (!f.named() && args.on(kKohyaV2)) given.push_back(kKohyaV2);
  const std::string component =
      tool_model_component(pm, sd_model, "--sd_model", given, f.implied,
                           f.named() ? "merge into other checkpoints with sumi merge_lora" : "");
  // kohya cannot tell whether a --v2 model predicts v; it marks the merge v-prediction.
  const ModelDescription described = describe_for_kohya(pm, component);
  const bool v2 = described.kohya_v2;
  host::Registry registry;
  std::cout << "loading SD model: " << sd_model << std::endl;
  PluginModel model(pm, registry, component, sd_model, "model");

  at::NoGradGuard no_grad;
  for (size_t i = 0; i < models.size(); ++i) {
    std::cout << "loading: " << models[i] << std::endl;
    const StateDict sd = read_state_dict(models[i], "--models", at::kFloat);
    std::vector<std::string> downs;
    for (const auto& [k, t] : sd.tensors)
      if (contains(k, "lora_down")) downs.push_back(k);
    std::cout << "merging..." << std::endl;
    sumi_progress* bar = host::progress_begin("merging", static_cast<int64_t>(downs.size()));
    for (const auto& key : downs) {
      host::progress_update(bar, 1, nullptr);
      const auto cut = key.find("lora_down");
      const std::string up_key = key.substr(0, cut) + "lora_up" + key.substr(cut + 9);
      const std::string alpha_key = key.substr(0, cut) + "alpha";
      // kohya: the name without the trailing ".lora_down.weight"
      const auto dot2 = key.rfind('.', key.rfind('.') - 1);
      const std::string module = key.substr(0, dot2);
      const ModelModule* m = model.find(module);
      if (!m || !m->weight.defined()) {
        std::cout << "no module found for LoRA weight: " << key << std::endl;
        continue;
      }
      const at::Tensor* up = sd.find(up_key);
      if (!up) throw host::UserError("--models '" + models[i] + "': '" + key + "' has no '" + up_key + "'");
      const at::Tensor& down = sd.tensors.at(key);
      const int64_t dim = down.size(0);
      const at::Tensor* alpha = sd.find(alpha_key);
      const at::Tensor scale = alpha ? alpha->reshape({}) / dim : at::scalar_tensor(static_cast<double>(dim) / dim, at::kDouble);
      at::Tensor w = m->weight;
      at::Tensor delta;
      try {
        delta = lora_delta(w.to(at::kFloat), down, *up, scale, ratios[i]);
      } catch (const c10::Error& e) {
        throw host::UserError("--models '" + models[i] + "': module '" + module + "' (lora_down " +
                              c10::str(down.sizes()) + ") does not fit the model's weight " +
                              c10::str(w.sizes()) + ": is the LoRA for this model?");
      }
      if (!delta.sizes().equals(w.sizes()))
        throw host::UserError("--models '" + models[i] + "': module '" + module + "' gives a change of shape " +
                              c10::str(delta.sizes()) + " for a weight of shape " + c10::str(w.sizes()) +
                              ": is the LoRA for this model?");
      w.copy_(w.to(at::kFloat).add(delta));
    }
    host::progress_end(bar);
  }

  Metadata meta;
  if (!args.on("no_metadata")) {
    ModelSpec spec;
    spec.kind = ModelSpecKind::checkpoint;
    set_modelspec_model(spec, described, v2);
    spec.title = file_stem(save_to);
    spec.timestamp = std::time(nullptr);
    meta = modelspec_metadata(spec);
    std::vector<std::string> all{sd_model};
    all.insert(all.end(), models.begin(), models.end());
    meta["modelspec.merged_from"] = merged_from_titles(all);
    if (v2)
      std::cerr << "sumi " << args.prog()
                << ": cannot tell whether the model is for v-prediction; its metadata says v-prediction (as kohya's)\n";
  }
  std::cout << "saving SD model to: " << save_to << std::endl;
  // Written beside the destination, given its metadata, then renamed into place.
  const std::string staged = save_to + ".sumi-" + std::to_string(::getpid()) + ".safetensors";
  try {
    model.save(staged, save_dtype.value_or(at::kFloat));
    // The model plugin's own entries (the parts' configs a reload needs when the shapes cannot
    // tell them, e.g. non-default head counts) stay; kohya's modelspec goes on top.
    io::update_safetensors_metadata(staged, meta);
    fs::rename(staged, save_to);
  } catch (...) {
    std::error_code ec;
    fs::remove(staged, ec);
    throw;
  }
  return 0;
}

int merge_loras(const ToolArgs& args, const MergeFlags& f, const std::vector<std::string>& models,
                const std::vector<double>& ratios, at::ScalarType merge_dtype, at::ScalarType save_dtype) {
  const std::string save_to = args.required("save_to");
  check_output(save_to, models, "--save_to");
  const bool concat = args.on("concat");
  std::map<std::string, at::Tensor> merged;
  std::vector<std::string> alpha_order;          // modules in kohya's base_alphas order
  std::map<std::string, double> base_alphas;     // first-seen alpha
  std::map<std::string, bool> base_alpha_is_int;  // alpha defaulted to the rank (an int in kohya)
  std::vector<int64_t> base_dims_seen;
  std::map<std::string, int64_t> base_dims;
  std::optional<std::string> v2, base_model;
  for (size_t i = 0; i < models.size(); ++i) {
    std::cout << "loading: " << models[i] << std::endl;
    const StateDict sd = read_state_dict(models[i], "--models", merge_dtype);
    if (!v2 && sd.metadata.count("ss_v2")) v2 = sd.metadata.at("ss_v2");
    if (!base_model && sd.metadata.count("ss_base_model_version")) base_model = sd.metadata.at("ss_base_model_version");
    std::map<std::string, double> alphas;
    std::map<std::string, int64_t> dims;
    for (const auto& [k, t] : sd.tensors) {
      if (contains(k, "alpha")) {
        const std::string mod = k.substr(0, k.rfind(".alpha"));
        const double a = t.to(at::kFloat).reshape({}).item<double>();
        alphas[mod] = a;
        if (!base_alphas.count(mod)) {
          base_alphas[mod] = a;
          base_alpha_is_int[mod] = false;
          alpha_order.push_back(mod);
        }
      } else if (contains(k, "lora_down")) {
        const std::string mod = k.substr(0, k.rfind(".lora_down"));
        dims[mod] = t.size(0);
        if (!base_dims.count(mod)) {
          base_dims[mod] = t.size(0);
          base_dims_seen.push_back(t.size(0));
        }
      } else if (!contains(k, "lora_up")) {
        throw host::UserError("--models '" + models[i] + "': tensor '" + k +
                              "' is not a kohya LoRA tensor (lora_down / lora_up / alpha); merge_lora merges kohya LoRAs");
      }
    }
    for (const auto& [mod, d] : dims)
      if (!alphas.count(mod)) {
        alphas[mod] = static_cast<double>(d);
        if (!base_alphas.count(mod)) {
          base_alphas[mod] = static_cast<double>(d);
          base_alpha_is_int[mod] = true;
          alpha_order.push_back(mod);
        }
      }
    std::cout << "merging..." << std::endl;
    for (const auto& [k, t] : sd.tensors) {
      if (contains(k, "alpha")) continue;
      const bool is_up = contains(k, "lora_up");
      const std::string mod = k.substr(0, k.rfind(".lora_"));
      if (!base_alphas.count(mod) || !alphas.count(mod))
        throw host::UserError("--models '" + models[i] + "': tensor '" + k + "' has no lora_down for module '" + mod + "'");
      double scale = std::sqrt(alphas[mod] / base_alphas[mod]) * ratios[i];
      if (is_up) scale = std::abs(scale);
      const at::Tensor scaled = t.mul(scale);
      auto it = merged.find(k);
      if (it == merged.end()) {
        merged.emplace(k, scaled);
      } else if (concat) {
        it->second = at::cat({it->second, scaled}, is_up ? 1 : 0);
      } else {
        if (!it->second.sizes().equals(t.sizes()))
          throw host::UserError("--models '" + models[i] + "': tensor '" + k + "' has shape " + c10::str(t.sizes()) +
                                " but the LoRAs before it have " + c10::str(it->second.sizes()) +
                                "; LoRAs of different ranks (or SD1 and SD2) can only be joined with --concat");
        it->second = it->second + scaled;
      }
    }
  }
  for (const auto& mod : alpha_order) {
    merged[mod + ".alpha"] = base_alpha_is_int[mod] ? at::scalar_tensor(static_cast<int64_t>(base_alphas[mod]), at::kLong)
                                                    : at::scalar_tensor(base_alphas[mod], at::kDouble).to(at::kFloat);
    if (args.on("shuffle")) {
      // kohya's torch.randperm on the default generator (as unseeded there as here).
      const std::string kd = mod + ".lora_down.weight", ku = mod + ".lora_up.weight";
      if (!merged.count(kd) || !merged.count(ku)) continue;
      const at::Tensor perm = at::randperm(merged[kd].size(0));
      merged[kd] = merged[kd].index_select(0, perm);
      merged[ku] = merged[ku].index_select(1, perm);
    }
  }

  // kohya's minimum network metadata: one rank / alpha if all modules share it, else "Dynamic".
  bool same_dims = true, same_alphas = true;
  for (int64_t d : base_dims_seen) same_dims = same_dims && d == base_dims_seen.front();
  const double first_alpha = base_alphas.at(alpha_order.front());
  for (const auto& [m, a] : base_alphas) same_alphas = same_alphas && a == first_alpha;
  Metadata meta{{"ss_network_module", "networks.lora"}};
  meta["ss_network_dim"] = same_dims && !base_dims_seen.empty() ? std::to_string(base_dims_seen.front()) : "Dynamic";
  meta["ss_network_alpha"] = !same_alphas ? "Dynamic"
                             : base_alpha_is_int[alpha_order.front()] ? std::to_string(static_cast<int64_t>(first_alpha))
                                                                      : py_float(first_alpha);
  if (v2) meta["ss_v2"] = *v2;
  if (base_model) meta["ss_base_model_version"] = *base_model;
  std::cout << "calculating hashes and creating metadata..." << std::endl;
  std::vector<std::pair<std::string, at::Tensor>> tensors(merged.begin(), merged.end());
  const Hashes h = kohya_hashes(tensors, meta);
  meta["sshs_model_hash"] = h.model_hash;
  meta["sshs_legacy_hash"] = h.legacy_hash;
  if (!args.on("no_metadata")) {
    const bool is_v2 = v2 && *v2 == "True";
    auto pm = tool_plugin_manager(args.strs("plugin-dir"));
    const LoraModel base = model_for_lora_files(pm, base_model, is_v2, f.implied, "sumi " + args.prog() + " --models");
    ModelSpec spec;
    spec.kind = ModelSpecKind::lora;
    set_modelspec_model(spec, base.description, is_v2);
    spec.title = file_stem(save_to);
    spec.timestamp = std::time(nullptr);
    for (auto& [k, v] : modelspec_metadata(spec)) meta[k] = v;
    meta["modelspec.merged_from"] = merged_from_titles(models);
    if (is_v2)
      std::cerr << "sumi " << args.prog()
                << ": cannot tell whether the LoRA is for v-prediction; its metadata says v-prediction (as kohya's)\n";
  }
  for (auto& [k, t] : tensors) t = t.to(save_dtype);
  std::cout << "saving model to: " << save_to << std::endl;
  write_kohya(save_to, std::move(tensors), meta);
  return 0;
}

int run_merge(const std::vector<std::string>& argv, const MergeFlags& f) {
  const std::string prog = f.named() ? "sdxl_merge_lora" : "merge_lora";
  ToolArgs args(prog, f.named() ? "Merges LoRAs into an SDXL checkpoint, or into one LoRA (kohya networks/sdxl_merge_lora.py)."
                             : "Merges LoRAs into an SD1/SD2 checkpoint, or into one LoRA (kohya networks/merge_lora.py).");
  if (!f.named()) args.flag(kKohyaV2, "the checkpoint is SD 2.x (read from the file when not given)");
  args.value("save_precision", "precision of the saved file (default: --precision)", std::nullopt, {"float", "fp16", "bf16"})
      .value("precision", "precision of the merge", "float", {"float", "fp16", "bf16"})
      .value("sd_model", "checkpoint to merge into (.safetensors, .ckpt); without it the LoRAs are merged into one LoRA")
      .value("save_to", "the file to write (.safetensors)")
      .list("models", "LoRA files to merge")
      .list("ratios", "one ratio per LoRA")
      .flag("no_metadata", "write no modelspec metadata (a merged LoRA keeps kohya's minimum ss_* keys)")
      .flag("concat", "stack the LoRAs along the rank instead of adding them (the output's rank is the sum)")
      .flag("shuffle", "permute each module's rank (torch.randperm, as kohya)")
      .list("plugin-dir", "extra plugin folder (the model plugins: --sd_model's, and the one the metadata names)");
  if (!args.parse(argv)) return 0;
  const auto& models = args.strs("models");
  const std::vector<double> ratios = args.lora_ratios();
  const at::ScalarType merge_dtype = *precision_type(args.str("precision"));
  const std::optional<at::ScalarType> save_precision = precision_type(args.str("save_precision"));
  if (args.given("sd_model")) {
    if (args.on("concat") || args.on("shuffle")) args.fail("--concat and --shuffle are for merging LoRAs into one LoRA (no --sd_model)");
    return merge_into_model(args, f, models, ratios, save_precision.value_or(merge_dtype));
  }
  if (!f.named() && args.on(kKohyaV2)) args.fail("--v2 is about the --sd_model checkpoint; a LoRA merge reads ss_v2 from the files");
  return merge_loras(args, f, models, ratios, merge_dtype, save_precision.value_or(merge_dtype));
}

}  // namespace

int cmd_merge_lora(const std::vector<std::string>& args) { return run_merge(args, {""}); }
int cmd_sdxl_merge_lora(const std::vector<std::string>& args) { return run_merge(args, {kKohyaSdxl}); }

}  // namespace sumi::app::tools
