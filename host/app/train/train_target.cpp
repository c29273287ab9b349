#include "app/train/train_target.h"

#include "app/app.h"
#include "app/network_settings.h"
#include "app/network_stack.h"
#include "app/train/network_file.h"
#include "app/train/settings_check.h"
#include "core/error.h"
#include "core/tensor_handle.h"
#include "core/typed_plugins.h"
#include "sumi/io/safetensors_torch.h"

#include <optional>
#include <vector>

namespace fs = std::filesystem;

namespace sumi::app {

namespace {

// kohya's precision names -> the dtype the model's save slots take.
sumi_dtype save_dtype(const std::string& precision) {
  if (precision == "float") return sumi_dtype{SUMI_DTYPE_CODE_FLOAT, 32, 1};
  if (precision == "fp16") return sumi_dtype{SUMI_DTYPE_CODE_FLOAT, 16, 1};
  if (precision == "bf16") return sumi_dtype{SUMI_DTYPE_CODE_BFLOAT, 16, 1};
  throw host::UserError("save_precision: expected float, fp16 or bf16, got '" + precision + "'");
}

// train_network.py: the network plugin's parameters, saved in kohya's LoRA file format.
class NetworkTarget final : public TrainTarget {
 public:
  NetworkTarget(const TrainSettings& s, host::PluginManager& pm, host::Registry& registry, host::Component& model,
                const ModelDescription& description)
      : s_(s), registry_(registry), description_(description) {
    // train_network.py merges --base_weights into the model before it creates the network.
    merge_network_files(pm, model, s.base_weights, s.base_weights_multiplier);
    auto ref = pm.find(SUMI_KIND_NETWORK, s.network_type);
    network_.emplace(ref, "network", registry, host::make_config(*ref.component, s.network_params));
    // kohya's --dim_from_weights (create_network_from_weights): the file's modules and ranks.
    if (s.dim_from_weights) {
      if (s.network_weights.empty())
        throw host::UserError("[network] dim_from_weights (--dim_from_weights) takes the ranks from the weights file: give [network] "
                              "weights (--network_weights)");
      if (!configure_network_from_file(*network_, read_weights_file(s.network_weights)))
        throw host::UserError("[network] dim_from_weights (--dim_from_weights): network '" + s.network_type +
                              "' cannot take its ranks from a file (its plugin predates ABI 1.3's configure_from_weights)");
    }
    attach_network(model, *network_, s.network_weights, s.network_multiplier, true);
  }
  const char* component() const override { return "network"; }
  bool state_keeps_all() const override { return true; }
  host::Component* network() override { return &*network_; }
  std::string state_name() const override { return s_.network_type; }
  void save(const fs::path& path, const RunFacts& run) override {
    NetworkFacts facts;
    facts.component = network_->info().name;
    facts.has_metadata = host::NetworkPlugin(*network_).has_metadata();
    facts.metadata = network_metadata_of(*network_);
    auto md = network_metadata(s_, run, description_, &facts);
    for (auto& [k, v] : modelspec_metadata(run_modelspec(s_, ModelSpecKind::lora, run.width, run.height, description_))) md[k] = v;
    save_network(path.string(), registry_, "network", s_.save_precision, md);
  }

 private:
  const TrainSettings& s_;
  host::Registry& registry_;
  const ModelDescription& description_;
  std::optional<host::Component> network_;
};

// The model writes its own file (its save / save_token slot); kohya's sai model spec is added to
// single files and embeddings (a diffusers folder gets none, as diffusers' save_pretrained writes
// none). Written under a temporary name, then renamed over the previous file.
class ModelFileTarget : public TrainTarget {
 public:
  ModelFileTarget(const TrainSettings& s, host::Component& model, const ModelDescription& description, ModelSpecKind kind)
      : s_(s), model_(model), description_(description), kind_(kind) {}
  const char* component() const override { return "model"; }
  std::string state_name() const override { return mode_name(s_.mode); }
  bool saves_folder() const override { return kind_ == ModelSpecKind::checkpoint && s_.save_model_as == "diffusers"; }
  void save(const fs::path& path, const RunFacts& run) override {
    // A folder's temporary name has no extension: the model plugin refuses to write a folder
    // whose name looks like a file (e.g. "x.ckpt").
    const fs::path tmp = saves_folder() ? fs::path(path.string() + "_tmp") : path.parent_path() / (path.stem().string() + ".tmp.safetensors");
    fs::remove_all(tmp);
    write(tmp);
    if (!saves_folder()) {
      io::update_safetensors_metadata(tmp.string(), modelspec_metadata(run_modelspec(s_, kind_, run.width, run.height, description_)));
    }
    fs::remove_all(path);
    fs::rename(tmp, path);
  }

 protected:
  virtual void write(const fs::path& tmp) = 0;
  host::ModelPlugin model() const { return host::ModelPlugin(model_); }

  const TrainSettings& s_;
  host::Component& model_;
  const ModelDescription& description_;
  ModelSpecKind kind_;
};

// train_textual_inversion.py: new tokens of the text encoder(s), saved as an embedding file.
class TextualInversionTarget final : public ModelFileTarget {
 public:
  TextualInversionTarget(const TrainSettings& s, host::Component& model, const ModelDescription& description)
      : ModelFileTarget(s, model, description, ModelSpecKind::textual_inversion) {
    model.require_slot(host::ModelPlugin(model).has_save_token(), "save_token", "1.1");
    host::ModelPlugin(model).add_token(s.token_string, s.init_word, s.num_vectors_per_token);
    if (!s.ti_weights.empty()) {
      // kohya's --weights: the token's vectors start from an embedding file (the model reads it).
      model.require_slot(host::ModelPlugin(model).has_load_token(), "load_token", "1.2");
      if (!fs::exists(s.ti_weights))
        throw host::UserError("--weights " + s.ti_weights + ": no such file (expected a Textual Inversion embedding)");
      host::ModelPlugin(model).load_token(s.token_string, s.ti_weights);
    }
  }

 private:
  void write(const fs::path& tmp) override {
    model().save_token(s_.token_string, tmp.string(), host::to_scalar_type(save_dtype(s_.save_precision)), true);
  }
};

// train_db.py / fine_tune.py: the UNet, and with train_text_encoder every text encoder the model
// describes; saved as the whole model.
class ModelPartsTarget final : public ModelFileTarget {
 public:
  ModelPartsTarget(const TrainSettings& s, host::Component& model, const ModelDescription& description)
      : ModelFileTarget(s, model, description, ModelSpecKind::checkpoint) {
    model.require_slot(host::ModelPlugin(model).has_save(), "save", "1.1");
    std::vector<std::string> parts{"unet"};
    if (s.train_text_encoder || (s.train_text_encoder_by_model && description.kohya_trains_text_encoder)) {
      if (description.text_encoders.empty()) parts.push_back("text_encoder");  // a 1.1 model: no describe
      parts.insert(parts.end(), description.text_encoders.begin(), description.text_encoders.end());
    }
    for (const auto& part : parts) host::ModelPlugin(model).train_part(part);
  }

 private:
  void write(const fs::path& tmp) override {
    model().save(tmp.string(), host::to_scalar_type(save_dtype(s_.save_precision)), true);
  }
};

}  // namespace

std::unique_ptr<TrainTarget> make_train_target(const TrainSettings& s, host::PluginManager& pm, host::Registry& registry,
                                               host::Component& model, const ModelDescription& description) {
  switch (s.mode) {
    case TrainMode::network: return std::make_unique<NetworkTarget>(s, pm, registry, model, description);
    case TrainMode::textual_inversion: return std::make_unique<TextualInversionTarget>(s, model, description);
    case TrainMode::dreambooth: return std::make_unique<ModelPartsTarget>(s, model, description);
  }
  throw host::UserError("unknown training mode");
}

}  // namespace sumi::app
