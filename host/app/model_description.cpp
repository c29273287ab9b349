#include "model_description.h"

#include "core/component.h"
#include "core/error.h"
#include "generation.h"

#include <nlohmann/json.hpp>

namespace sumi::app {

int64_t ModelDescription::BlockLayout::block_of(const std::string& name) const {
  int64_t best = -1;
  size_t best_len = 0;
  for (const auto& [prefix, block] : prefixes)
    if (prefix.size() > best_len && name.compare(0, prefix.size(), prefix) == 0) {
      best = block;
      best_len = prefix.size();
    }
  return best;
}

ModelDescription describe(host::Component& model) {
  ModelDescription d;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(describe_model(model));
    d.prediction_type = j.value("prediction_type", d.prediction_type);
    d.latent_channels = j.value("latent_channels", d.latent_channels);
    d.vae_scale_factor = j.value("vae_scale_factor", d.vae_scale_factor);
    if (j.contains("text_encoders")) d.text_encoders = j["text_encoders"].get<std::vector<std::string>>();
    if (j.contains("default_resolution") && j["default_resolution"].size() == 2) {
      d.default_width = j["default_resolution"][0].get<int64_t>();
      d.default_height = j["default_resolution"][1].get<int64_t>();
    }
    if (j.contains("added_conditioning")) d.added_conditioning = j["added_conditioning"].get<std::vector<std::string>>();
    d.text_encoder_output_cache = j.value("text_encoder_output_cache", false);
    d.kohya_base_model_version = j.value("kohya_base_model_version", "");
    d.kohya_v2 = j.value("kohya_v2", false);
    if (j.contains("kohya_flags")) d.kohya_flags = j["kohya_flags"].get<std::vector<std::string>>();
    d.kohya_trains_text_encoder = j.value("kohya_trains_text_encoder", true);
    d.modelspec_architecture = j.value("modelspec_architecture", "");
    d.modelspec_lora_implementation = j.value("modelspec_lora_implementation", "diffusers");
    if (j.contains("block_lr_layout")) {
      const auto& b = j["block_lr_layout"];
      ModelDescription::BlockLayout layout;
      layout.blocks = b.at("blocks").get<int64_t>();
      layout.description = b.value("description", "");
      for (const auto& p : b.at("prefixes")) layout.prefixes.emplace_back(p.at(0).get<std::string>(), p.at(1).get<int64_t>());
      d.block_lr = std::move(layout);
    }
  } catch (const nlohmann::json::exception& e) {
    throw host::UserError(std::string("model '") + model.info().name + "': its describe gave unexpected JSON (" + e.what() +
                          "); rebuild the plugin against this SDK");
  }
  return d;
}

}  // namespace sumi::app
