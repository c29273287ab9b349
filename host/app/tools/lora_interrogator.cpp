// `sumi lora_interrogator` (kohya networks/lora_interrogator.py): which tokens a LoRA's
// text-encoder part reacts to. Every token id of the vocabulary up to the last special id goes
// alone between BOS and EOS through the text encoder, without and with the LoRA (multiplier 1);
// the mean absolute difference of the two [3, C] outputs ranks the tokens, and the top 100 are
// printed in kohya's format. The model (and its tokenizer) and the network are plugins: the
// model's encode_tokens / token_text slots (ABI 1.3) encode raw ids and name the tokens, the
// network plugin that reads the file (probe) applies it at runtime.
#include "app/tools/tools.h"

#include "app/app.h"
#include "app/model_file.h"
#include "app/network_settings.h"
#include "app/tools/plugin_model.h"
#include "app/tools/tool_args.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/registry.h"
#include "core/typed_plugins.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

namespace sumi::app::tools {
namespace {

struct VocabRange {
  int64_t bos = 0, eos = 0, last = 0;  // kohya interrogates ids 0 .. max(all_special_ids)
};

VocabRange vocab_range(host::Component& model) {
  const auto j = nlohmann::json::parse(host::ModelPlugin(model).describe());
  if (!j.contains("tokenizer"))
    throw host::UserError("the model plugin does not describe its tokenizer (describe has no \"tokenizer\" object); "
                          "update the plugin");
  const auto& t = j.at("tokenizer");
  VocabRange r;
  r.bos = t.at("bos_token_id").get<int64_t>();
  r.eos = t.at("eos_token_id").get<int64_t>();
  for (const auto& id : t.at("special_token_ids")) r.last = std::max(r.last, id.get<int64_t>());
  return r;
}

// The text encoder's output for token ids [B, T] (the model's conditioning, float32).
at::Tensor encode(host::Component& model, const at::Tensor& ids) {
  return host::ModelPlugin(model).encode_tokens(ids).to(at::kFloat).clone();
}

// Routes the text encoder through `network` (selected modules), or back to plain with nullptr.
void route(host::Component& model, host::Component* network, const std::vector<int32_t>& selected) {
  host::ModelPlugin m(model);
  if (!network) return m.set_network(nullptr, nullptr, nullptr);
  m.set_network(network->self(), &host::NetworkPlugin(*network).vtable(), selected.data());
}

// Python's "{:<20s}": padded with spaces to 20 code points.
std::string pad_right(const std::string& s, size_t width) {
  size_t points = 0;
  for (unsigned char c : s) points += (c & 0xC0) != 0x80;
  return points >= width ? s : s + std::string(width - points, ' ');
}

}  // namespace

int cmd_lora_interrogator(const std::vector<std::string>& argv) {
  ToolArgs args("lora_interrogator",
                "the tokens a LoRA's text-encoder part changes the most (kohya networks/lora_interrogator.py).");
  args.flag(kKohyaV2, "the model is Stable Diffusion 2.x (read from the file when not given)")
      .value("sd_model", "Stable Diffusion model to load (.safetensors / .ckpt / diffusers folder)")
      .value("model", "LoRA model to interrogate (.safetensors)")
      .value("batch_size", "token prompts per text-encoder call", "16")
      .value("clip_skip", "use the output of the n-th layer from the end of the text encoder (n >= 1)")
      .list("plugin-dir", "extra plugin folder (the model and network plugins)");
  if (!args.parse(argv)) return 0;
  const std::string sd_model = args.required("sd_model");
  const std::string lora = args.required("model");
  const int64_t batch = args.integer("batch_size");
  if (batch < 1) args.fail("--batch_size must be at least 1, got " + std::to_string(batch));
  const auto clip_skip = args.opt_integer("clip_skip");
  if (clip_skip && *clip_skip < 1) args.fail("--clip_skip must be at least 1 (the last layer), got " + std::to_string(*clip_skip));
  auto pm = tool_plugin_manager(args.strs("plugin-dir"));
  const std::string component = tool_model_component(
      pm, sd_model, "--sd_model", args.on(kKohyaV2) ? std::vector<std::string>{kKohyaV2} : std::vector<std::string>{});
  const WeightsFile file = read_weights_file(lora);

  host::Registry registry;
  std::cerr << "loading SD model: " << sd_model << "\n";
  std::map<std::string, std::string> config;
  if (clip_skip) config["clip_skip"] = std::to_string(*clip_skip);
  PluginModel model(pm, registry, component, sd_model, "model", config);
  host::Component& m = model.component();
  const VocabRange range = vocab_range(m);

  std::cerr << "loading LoRA: " << lora << "\n";
  auto ref = pm.find(SUMI_KIND_NETWORK, find_network_component(pm, file));
  host::Component network(ref, "network", registry, host::make_config(*ref.component, {}));
  configure_network_from_file(network, file);
  const std::vector<int32_t> selected = prepare_network(m, network, lora, 1.0, false);
  // kohya looks for "lora_te" keys; here: does the network wrap any text-encoder module?
  const auto mods = model_modules(m);
  bool has_te = false;
  for (size_t i = 0; i < mods.size(); ++i) has_te |= selected[i] != 0 && mods[i].role != SUMI_ROLE_UNET;
  if (!has_te)
    throw host::UserError("This LoRA does not have modules for Text Encoder, cannot interrogate / "
                          "このLoRAはText Encoder向けのモジュールがないため調査できません (" + lora + ")");

  std::cerr << "interrogate tokens are: 0 to " << range.last << "\n";
  at::NoGradGuard no_grad;
  const int64_t n = range.last + 1;
  std::vector<float> diffs(static_cast<size_t>(n));
  sumi_progress* bar = host::progress_begin("tokens", n);
  try {
    for (int64_t first = 0; first < n; first += batch) {
      const int64_t b = std::min(batch, n - first);
      at::Tensor ids = at::empty({b, 3}, at::kLong);
      ids.select(1, 0).fill_(range.bos);
      ids.select(1, 1).copy_(at::arange(first, first + b, at::kLong));
      ids.select(1, 2).fill_(range.eos);
      route(m, nullptr, selected);
      const at::Tensor orig = encode(m, ids);
      route(m, &network, selected);
      const at::Tensor with = encode(m, ids);
      const at::Tensor d = (orig - with).abs().mean({1, 2}).contiguous();
      std::copy_n(d.data_ptr<float>(), b, diffs.begin() + first);
      host::progress_update(bar, b, nullptr);
    }
  } catch (...) {
    route(m, nullptr, selected);
    host::progress_end(bar);
    throw;
  }
  route(m, nullptr, selected);
  host::progress_end(bar);

  // sorted(diffs.items(), key=lambda x: -x[1]): stable, ties in token order.
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return diffs[a] > diffs[b]; });
  std::cout << "top 100:\n";
  for (size_t i = 0; i < std::min<size_t>(100, order.size()); ++i) {
    const std::string text = host::ModelPlugin(m).token_text(order[i]);
    char head[32], tail[32];
    std::snprintf(head, sizeof head, "[%3zu]: %5lld ", i, static_cast<long long>(order[i]));
    std::snprintf(tail, sizeof tail, ": %.5f", static_cast<double>(diffs[order[i]]));
    std::cout << head << pad_right(text, 20) << tail << "\n";
  }
  return 0;
}

}  // namespace sumi::app::tools
