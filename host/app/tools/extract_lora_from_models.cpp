// `sumi extract_lora_from_models`: kohya's networks/extract_lora_from_models.py — a LoRA that
// approximates the difference between a tuned and an original checkpoint: per module,
// SVD of W_tuned - W_org split at --dim (--conv_dim for 3x3 convolutions), factors clamped at
// the --clamp_quantile quantile, alpha = rank. Both checkpoints load through their model
// plugin and the `lora` network plugin picks the modules (kohya's LierLa set, C3Lier with
// --conv_dim), so the host knows no model's layer names. The text encoders are included only
// when some weight there changed by more than --min_diff (v0.7.0's fixed 0.1 by default).
#include "app/tools/tools.h"

#include "app/model_file.h"
#include "app/network_settings.h"

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

int cmd_extract_lora_from_models(const std::vector<std::string>& argv) {
  ToolArgs args("extract_lora_from_models",
                "A LoRA from the difference of a tuned and an original checkpoint, by SVD (kohya networks/extract_lora_from_models.py).");
  args.flag(kKohyaV2, "the checkpoints are SD 2.x (read from the files when not given)")
      .flag("v_parameterization", "mark the LoRA for v-prediction in its metadata (default: for the models --v2 names)")
      .flag(kKohyaSdxl, "the checkpoints are SDXL (read from the files when not given)")
      .value("save_precision", "precision of the saved file (default float)", std::nullopt, {"float", "fp16", "bf16"})
      .value("model_org", "the original checkpoint (.safetensors, .ckpt or a diffusers folder)")
      .value("model_tuned", "the tuned checkpoint; the LoRA is the change from --model_org to it")
      .value("save_to", "the file to write (.safetensors)")
      .value("dim", "rank of the Linear and 1x1-conv modules", "4")
      .value("conv_dim", "rank of the 3x3-conv modules (default: none extracted)")
      .value("device", "device for the SVD (cpu; cuda where this libtorch has it)")
      .value("clamp_quantile", "clamp both factors at this quantile of their values, (0, 1]", "0.99")
      .value("min_diff", "extract the text encoder(s) only if some weight changed by more than this", "0.1")
      .flag("no_metadata", "write no modelspec metadata (kohya's minimum ss_* keys are kept)")
      .list("plugin-dir", "extra plugin folder (model and lora plugins)");
  if (!args.parse(argv)) return 0;
  const std::string org = args.required("model_org"), tuned = args.required("model_tuned");
  const std::string save_to = args.required("save_to");
  check_output(save_to, {org, tuned}, "--save_to");
  std::vector<std::string> given;
  for (const char* f : {kKohyaV2, kKohyaSdxl})
    if (args.on(f)) given.push_back(f);
  if (given.size() > 1) args.fail("--v2 and --sdxl cannot be given together");
  const int64_t dim = args.integer("dim");
  const std::optional<int64_t> conv_dim = args.opt_integer("conv_dim");
  if (dim < 1) args.fail("--dim must be at least 1");
  if (conv_dim && *conv_dim < 1) args.fail("--conv_dim must be at least 1");
  const double quantile = args.real("clamp_quantile");
  if (!(quantile > 0 && quantile <= 1)) args.fail("--clamp_quantile must be in (0, 1]");
  const double min_diff = args.real("min_diff");
  const std::string device = check_device(args.str("device"));
  const std::optional<at::ScalarType> save_dtype = precision_type(args.str("save_precision"));
  auto pm = tool_plugin_manager(args.strs("plugin-dir"));
  const std::string component = tool_model_component(pm, org, "--model_org", given);
  const std::string tuned_component = tool_model_component(pm, tuned, "--model_tuned", given);
  if (tuned_component != component)
    throw host::UserError("--model_org '" + org + "' is loaded by model component '" + component + "', --model_tuned '" +
                          tuned + "' by '" + tuned_component + "': a LoRA is extracted between two checkpoints of one model");
  // kohya's --v_parameterization defaults to --v2: v-prediction for the models --v2 names.
  const ModelDescription described =
      describe_for_kohya(pm, component, args.on("v_parameterization") ? std::optional<bool>(true) : std::nullopt);
  const bool v2 = described.kohya_v2, v_param = args.on("v_parameterization") || v2;

  host::Registry registry;
  std::cout << "loading original " << component << " model : " << org << std::endl;
  PluginModel model_o(pm, registry, component, org, "model_org");
  std::cout << "loading tuned " << component << " model : " << tuned << std::endl;
  PluginModel model_t(pm, registry, component, tuned, "model_tuned");

  // The modules a kohya LoRA of these ranks covers, as the lora plugin selects them.
  auto lora_ref = pm.find(SUMI_KIND_NETWORK, "lora");
  std::map<std::string, std::string> cfg{{"dim", std::to_string(dim)}, {"alpha", std::to_string(dim)}};
  if (conv_dim) {
    cfg["conv_dim"] = std::to_string(*conv_dim);
    cfg["conv_alpha"] = std::to_string(*conv_dim);
  }
  host::Component lora(lora_ref, "network", registry, host::make_config(*lora_ref.component, cfg));
  const std::vector<sumi_module_info> mods = model_o.module_infos();
  const auto n = static_cast<int64_t>(mods.size());
  std::vector<int32_t> selected;
  attach_modules(lora, mods, selected);
  if (model_t.modules().size() != static_cast<size_t>(n))
    throw host::UserError("--model_org and --model_tuned have different module lists (" + std::to_string(n) + " and " +
                          std::to_string(model_t.modules().size()) + "): they are not the same kind of model");

  struct Diff {
    std::string name;
    at::Tensor diff;
    bool text_encoder;
  };
  std::vector<Diff> diffs;
  bool te_different = false;
  at::NoGradGuard no_grad;
  for (int64_t i = 0; i < n; ++i) {
    if (!selected[static_cast<size_t>(i)]) continue;
    const ModelModule& mo = model_o.modules()[static_cast<size_t>(i)];
    const ModelModule* mt = model_t.find(mo.name);
    if (!mt || !mt->weight.defined() || !mo.weight.defined() || !mt->weight.sizes().equals(mo.weight.sizes()))
      throw host::UserError("module '" + mo.name + "' differs in shape between --model_org and --model_tuned: "
                            "they are not the same kind of model");
    at::Tensor d = mt->weight.to(at::kFloat) - mo.weight.to(at::kFloat);
    const bool te = mo.role != SUMI_ROLE_UNET;
    if (te && !te_different) {
      const double m = d.abs().max().item<double>();
      if (m > min_diff) {
        te_different = true;
        std::cout << "Text encoder is different. " << py_float(m) << " > " << py_float(min_diff) << std::endl;
      }
    }
    diffs.push_back({mo.name, d, te});
  }
  if (!te_different) std::cout << "Text encoder is same. Extract U-Net only." << std::endl;

  std::cout << "calculating by svd" << std::endl;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  sumi_progress* bar = host::progress_begin("svd", static_cast<int64_t>(diffs.size()));
  for (const Diff& d : diffs) {
    host::progress_update(bar, 1, nullptr);
    if (d.text_encoder && !te_different) continue;
    const at::Tensor& W = d.diff;
    const bool conv = W.dim() == 4;
    const bool conv3 = conv && !(W.size(2) == 1 && W.size(3) == 1);
    const int64_t out_dim = W.size(0), in_dim = W.size(1);
    const int64_t rank = std::min({conv3 && conv_dim ? *conv_dim : dim, in_dim, out_dim});
    const Svd s = svd(W.reshape({out_dim, -1}), device, "module '" + d.name + "'");
    at::Tensor down, up;
    split(s, rank, W.sizes(), down, up);
    if (!conv) up = up.reshape({out_dim, rank});
    clamp_quantile(up, down, quantile);
    tensors.emplace_back(d.name + ".lora_up.weight", up.contiguous());
    tensors.emplace_back(d.name + ".lora_down.weight", down.contiguous());
    tensors.emplace_back(d.name + ".alpha", at::scalar_tensor(static_cast<double>(rank), at::kFloat));
  }
  host::progress_end(bar);

  Metadata meta{{"ss_v2", v2 ? "True" : "False"},
                {"ss_base_model_version", described.kohya_base_model_version},
                {"ss_network_module", "networks.lora"},
                {"ss_network_dim", std::to_string(dim)},
                {"ss_network_alpha", std::to_string(dim)},
                {"ss_network_args", conv_dim ? "{\"conv_dim\": " + std::to_string(*conv_dim) + ", \"conv_alpha\": " +
                                                   std::to_string(*conv_dim) + "}"
                                             : "{}"}};
  if (!args.on("no_metadata")) {
    ModelSpec spec;
    spec.kind = ModelSpecKind::lora;
    set_modelspec_model(spec, described, v_param);
    spec.title = file_stem(save_to);
    spec.timestamp = std::time(nullptr);
    for (auto& [k, v] : modelspec_metadata(spec)) meta[k] = v;
  }
  if (save_dtype)
    for (auto& [k, t] : tensors) t = t.to(*save_dtype);
  const Hashes h = kohya_hashes(tensors, meta);
  meta["sshs_model_hash"] = h.model_hash;
  meta["sshs_legacy_hash"] = h.legacy_hash;
  write_kohya(save_to, std::move(tensors), meta);
  std::cout << "LoRA weights are saved to: " << save_to << std::endl;
  return 0;
}

}  // namespace sumi::app::tools
