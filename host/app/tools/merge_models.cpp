// `sumi merge_models`: kohya's tools/merge_models.py — the weighted sum of two or more
// single-file checkpoints, key by key (out = r1*W1 + r2*W2 + ..., each product rounded to the
// merge precision, then added). Every key of the first model is written; a key a later model
// lacks takes the first model's value for that model's share. --unet_only keeps the first
// model's VAE and text encoders. No metadata, as kohya.
#include "app/tools/tools.h"

#include "core/error.h"
#include "core/progress.h"
#include "sumi/io/safetensors_torch.h"
#include "app/tools/kohya_files.h"
#include "app/tools/lora_math.h"
#include "app/tools/tool_args.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <iostream>
#include <set>

namespace fs = std::filesystem;

namespace sumi::app::tools {

namespace {

// kohya's test on original-layout (LDM / SGM) key names: VAE and text encoders are the keys
// under these prefixes, everything else is U-Net. It reads only names, the way kohya's script
// does, so it needs no model plugin.
bool is_unet_key(const std::string& key) {
  return key.find("first_stage_model") == std::string::npos && key.find("cond_stage_model") == std::string::npos &&
         key.find("conditioner.") == std::string::npos;
}

// Older SD1 files name the CLIP text model without "text_model."; kohya merges them under the new names.
std::string normalised_key(const std::string& key) {
  static const std::pair<const char*, const char*> kRenames[] = {
      {"cond_stage_model.transformer.embeddings.", "cond_stage_model.transformer.text_model.embeddings."},
      {"cond_stage_model.transformer.encoder.", "cond_stage_model.transformer.text_model.encoder."},
      {"cond_stage_model.transformer.final_layer_norm.", "cond_stage_model.transformer.text_model.final_layer_norm."},
  };
  for (const auto& [from, to] : kRenames)
    if (key.rfind(from, 0) == 0) return to + key.substr(std::string(from).size());
  return key;
}

}  // namespace

int cmd_merge_models(const std::vector<std::string>& argv) {
  ToolArgs args("merge_models", "A weighted sum of checkpoints (kohya tools/merge_models.py).");
  args.list("models", "the checkpoints to merge (.safetensors), two or more")
      .value("output", "the file to write (.safetensors is appended when missing)")
      .list("ratios", "one ratio per model (default: equal ratios summing to 1)")
      .flag("unet_only", "merge only the U-Net; VAE and text encoders are the first model's")
      .value("device", "device for the sums", "cpu")
      .value("precision", "precision of the sums", "float", {"float", "fp16", "bf16"})
      .value("saving_precision", "precision of the saved file", "float", {"float", "fp16", "bf16"})
      .flag("show_skipped", "list the keys of later models that the first model does not have");
  if (!args.parse(argv)) return 0;
  const auto& models = args.strs("models");
  if (models.empty()) args.fail("--models is required: the checkpoints to merge");
  std::string output = args.required("output");
  if (output.size() < 12 || output.compare(output.size() - 12, 12, ".safetensors") != 0) output += ".safetensors";
  for (const auto& m : models) {
    if (m.size() < 11 || m.compare(m.size() - 11, 11, "safetensors") != 0)
      args.fail("--models '" + m + "' is not a .safetensors file (convert it first: sumi convert " + m + " out.safetensors)");
    if (!fs::is_regular_file(m)) args.fail("--models '" + m + "' does not exist");
  }
  check_output(output, models, "--output");
  std::vector<double> ratios = args.reals("ratios");
  if (!ratios.empty() && ratios.size() != models.size())
    args.fail("--models names " + std::to_string(models.size()) + " files but --ratios gives " +
              std::to_string(ratios.size()) + "; give one ratio per model or none");
  if (ratios.empty()) ratios.assign(models.size(), 1.0 / static_cast<double>(models.size()));
  const std::string device = check_device(args.str("device"));
  const at::ScalarType dtype = *precision_type(args.str("precision"));
  const at::ScalarType save_dtype = *precision_type(args.str("saving_precision"));
  const bool unet_only = args.on("unet_only");
  const c10::Device dev(device);

  auto open = [&](const std::string& path) {
    try {
      return io::SafetensorsFile::open(path);
    } catch (const std::exception& e) {
      args.fail("--models '" + path + "' cannot be read: " + e.what());
    }
  };
  auto value_of = [&](const std::shared_ptr<io::SafetensorsFile>& f, const io::TensorInfo& info) {
    return io::load_tensor(f, info).to(dev).to(dtype);
  };
  auto sorted_infos = [](const std::shared_ptr<io::SafetensorsFile>& f) {
    std::vector<const io::TensorInfo*> v;
    for (const auto& t : f->tensors()) v.push_back(&t);
    std::sort(v.begin(), v.end(), [](auto* a, auto* b) { return a->name < b->name; });
    return v;
  };

  std::map<std::string, at::Tensor> merged;
  std::map<std::string, double> supplementary;  // keys taking the first model's value, with that share
  std::set<std::string> first_keys;
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < models.size(); ++i) {
    const double ratio = ratios[i];
    std::cout << "Loading model " << models[i] << ", ratio = " << py_float(ratio) << "..." << std::endl;
    auto f = open(models[i]);
    const auto infos = sorted_infos(f);
    sumi_progress* bar = host::progress_begin("merging", static_cast<int64_t>(infos.size()));
    if (i == 0) {
      for (const auto* info : infos) {
        host::progress_update(bar, 1, nullptr);
        const std::string key = normalised_key(info->name);
        first_keys.insert(key);
        if (unet_only && !is_unet_key(key)) {
          supplementary[key] = 1.0;
          continue;
        }
        merged[key] = value_of(f, *info).mul(ratio);
      }
      host::progress_end(bar);
      std::cout << "Model has " << merged.size() << " keys " << (unet_only ? "(UNet only)" : "") << std::endl;
      continue;
    }
    std::set<std::string> keys;
    for (const auto* info : infos) {
      host::progress_update(bar, 1, nullptr);
      const std::string key = normalised_key(info->name);
      keys.insert(key);
      auto it = merged.find(key);
      if (it == merged.end()) {
        if (args.on("show_skipped") && !first_keys.count(key)) std::cout << "Skip: " << key << "\n";
        continue;
      }
      const at::Tensor v = value_of(f, *info);
      if (!v.sizes().equals(it->second.sizes()))
        args.fail("--models '" + models[i] + "': tensor '" + info->name + "' has shape " + c10::str(v.sizes()) +
                  " but the first model's is " + c10::str(it->second.sizes()) +
                  "; models of different families or sizes cannot be merged");
      it->second = it->second + v.mul(ratio);
    }
    host::progress_end(bar);
    for (const auto& [key, t] : merged) {
      if (keys.count(key)) continue;
      std::cerr << "Key " << key << " not in model " << models[i] << ", use first model's value\n";
      supplementary[key] += ratio;
    }
  }
  if (!supplementary.empty()) {
    std::cout << "add first model's value" << std::endl;
    auto f = open(models[0]);
    for (const auto* info : sorted_infos(f)) {
      const std::string key = normalised_key(info->name);
      auto s = supplementary.find(key);
      if (s == supplementary.end()) continue;
      if (is_unet_key(key)) std::cerr << "Key " << key << " not in all models, ratio = " << py_float(s->second) << "\n";
      const at::Tensor v = value_of(f, *info).mul(s->second);
      auto it = merged.find(key);
      if (it == merged.end()) merged[key] = v;
      else it->second = it->second + v;
    }
  }
  std::cout << "Saving to " << output << "..." << std::endl;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto& [k, t] : merged) tensors.emplace_back(k, t.to(at::kCPU).to(save_dtype));
  merged.clear();
  write_kohya(output, std::move(tensors), {});
  std::cout << "Done!" << std::endl;
  return 0;
}

}  // namespace sumi::app::tools
