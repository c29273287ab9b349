// Typed host-side views of a component, one per plugin kind: each call takes and returns
// at::Tensors, keeps the handles it lends and adopts (HandleScope), checks the status (a
// UserError naming the component and the call) and, for a slot appended after 1.0, that the
// plugin has it (require_slot) — so the engine never touches a raw vtable. A view borrows its
// component and costs nothing to make: `ModelPlugin(model).denoise(...)`.
#pragma once

#include "core/component.h"

#include <sumi/sumi.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace sumi::host {

class ModelPlugin {
 public:
  explicit ModelPlugin(Component& c) : c_(c) {}
  Component& component() const { return c_; }

  void load(const std::string& path);
  // The adaptable modules (borrowed from the plugin, valid until it is destroyed) in the layout
  // the plugin wrote them; app::model_modules gives this host's layout.
  const sumi_module_info* modules(int64_t& n);
  // [cond, pooled] (pooled undefined for a model without one).
  std::pair<at::Tensor, at::Tensor> encode_text(const std::vector<std::string>& prompts);
  at::Tensor denoise(const at::Tensor& latents, const at::Tensor& timesteps, const at::Tensor& cond,
                     const at::Tensor& pooled = {}, const at::Tensor& added = {});
  at::Tensor vae_encode(const at::Tensor& images, bool sample);
  at::Tensor vae_decode(const at::Tensor& latents);
  // Routes the model's forward through a network (NULL detaches).
  void set_network(void* network_self, const sumi_network_vtable* network, const int32_t* selected);
  // Detaches whatever network is routed; never throws (for destructors).
  void detach_network_noexcept() noexcept;

  // Training the model itself (1.1).
  void train_part(const std::string& part);
  void add_token(const std::string& token, const std::string& init_word, int64_t num_vectors);
  void save_token(const std::string& token, const std::string& path, std::optional<at::ScalarType> dtype, bool overwrite);
  void save(const std::string& path, std::optional<at::ScalarType> dtype, bool overwrite);
  // 1.2: describe ("{}" for a 1.0 / 1.1 model, which says nothing of itself), load_token, convert.
  std::string describe();
  void load_token(const std::string& token, const std::string& path);
  void convert(const std::string& src, const std::string& dst, std::optional<at::ScalarType> dtype, bool overwrite);
  // The probe's answer (JSON) when this component loads `path`; nullopt with `why` (the plugin's
  // message) otherwise, and for a model without the slot.
  std::optional<std::string> probe(const std::string& path, std::string* why = nullptr);
  // 1.3: token-level text encoding.
  at::Tensor encode_tokens(const at::Tensor& ids);
  std::string token_text(int64_t id);
  // 1.4: frees `part`; false when the model keeps it (no slot, or it declines).
  bool release_part(const std::string& part);
  // Whether the plugin has the slot (present and set), for checks before a run starts.
  bool has_probe() const;
  bool has_save() const;
  bool has_save_token() const;
  bool has_load_token() const;

 private:
  const sumi_model_vtable& vt() const { return c_.vtable<sumi_model_vtable>(); }
  Component& c_;
};

class NoiseSchedulerPlugin {
 public:
  explicit NoiseSchedulerPlugin(Component& c) : c_(c) {}
  Component& component() const { return c_; }

  void set_timesteps(int64_t num_inference_steps);
  at::Tensor timesteps();  // float64
  at::Tensor sigmas();     // float64; empty for samplers without sigmas
  double init_noise_sigma();
  at::Tensor scale_model_input(const at::Tensor& sample, int64_t step_index);
  // `noise` (may be undefined) is the fresh noise of an ancestral step.
  at::Tensor step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample, const at::Tensor& noise);
  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise, const at::Tensor& timesteps);
  at::Tensor velocity(const at::Tensor& sample, const at::Tensor& noise, const at::Tensor& timesteps);
  at::Tensor alphas_cumprod();

  // What the sampler says about itself (ABI 1.4 describe); a 1.0 - 1.3 scheduler, or one whose
  // answer leaves a key out, gets the defaults: its component name and one noise per step.
  struct Description {
    std::string a1111_name;       // its label in A1111's `parameters` text
    int64_t noises_per_step = 1;  // gen_img's scheduler_num_noises_per_step
  };
  Description describe();

 private:
  const sumi_noise_scheduler_vtable& vt() const { return c_.vtable<sumi_noise_scheduler_vtable>(); }
  Component& c_;
};

class OptimizerPlugin {
 public:
  explicit OptimizerPlugin(Component& c) : c_(c) {}
  void add_param_group(const std::string& group, const std::vector<at::Tensor>& params);
  void step(const std::vector<double>& lrs);

 private:
  Component& c_;
};

class LrSchedulerPlugin {
 public:
  explicit LrSchedulerPlugin(Component& c) : c_(c) {}
  double factor(int64_t step, int64_t total_steps, int64_t warmup_steps, double base_lr);

 private:
  Component& c_;
};

class NetworkPlugin {
 public:
  explicit NetworkPlugin(Component& c) : c_(c) {}
  Component& component() const { return c_; }
  const sumi_network_vtable& vtable() const { return c_.vtable<sumi_network_vtable>(); }

  void set_multiplier(double multiplier);
  void set_training(bool training);
  // Fills the network from named tensors (kohya keys) of the file `from` (named in errors).
  void load(const std::vector<std::string>& names, const std::vector<at::Tensor>& tensors, const std::string& from);
  // The weight delta of module `index` at multiplier 1 (undefined when it has none).
  at::Tensor weight_delta(int64_t index);
  // 1.3: the bias delta; undefined for a network without the slot or a module without one.
  at::Tensor bias_delta(int64_t index);
  // 1.3: kohya's max-norm rule (--scale_weight_norms); nullopt for a network without one.
  struct MaxNorm {
    int64_t keys_scaled = 0;
    double mean_norm = 0, max_norm = 0;
  };
  std::optional<MaxNorm> apply_max_norm(double max_norm);
  // Sets the network to train at `multiplier` again; never throws (for destructors).
  void resume_training_noexcept(double multiplier) noexcept;
  // 1.3: probe; a network that has it reads attach's records at this ABI's size (an older one
  // reads the 1.0 - 1.2 records).
  bool has_probe() const;
  void attach(const sumi_module_info* modules, int64_t n, int32_t* selected);
  // 1.3: per tensor of a file (named `from` in errors), whether the network reads it (non-zero).
  std::vector<int32_t> probe(const std::vector<sumi_file_tensor>& tensors, const std::string& metadata_json,
                             const std::string& from);
  // 1.3: sizes the network from a file's tensors; false for a network without the slot.
  bool configure_from_weights(const std::vector<sumi_file_tensor>& tensors, const std::string& metadata_json,
                              const std::string& from);
  // 1.3: the network's own metadata (a JSON object); nullopt for a network without the slot.
  bool has_metadata() const;
  std::optional<std::string> metadata();

 private:
  Component& c_;
};

}  // namespace sumi::host
