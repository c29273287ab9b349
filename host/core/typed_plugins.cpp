#include "typed_plugins.h"

#include "core/error.h"
#include "core/handle_scope.h"

#include <nlohmann/json.hpp>

namespace sumi::host {

namespace {

sumi_dtype* dtype_arg(std::optional<at::ScalarType> dtype, sumi_dtype& storage) {
  if (!dtype) return nullptr;
  storage = from_scalar_type(*dtype);
  return &storage;
}

}  // namespace

// ---------------------------------------------------------------- model
void ModelPlugin::load(const std::string& path) { c_.check(vt().load(c_.self(), path.c_str()), ("load " + path).c_str()); }

const sumi_module_info* ModelPlugin::modules(int64_t& n) {
  const sumi_module_info* mods = nullptr;
  n = 0;
  c_.check(vt().modules(c_.self(), &mods, &n), "modules");
  return mods;
}

std::pair<at::Tensor, at::Tensor> ModelPlugin::encode_text(const std::vector<std::string>& prompts) {
  std::vector<const char*> ps;
  for (const auto& p : prompts) ps.push_back(p.c_str());
  HandleScope keep;
  sumi_tensor cond = nullptr, pooled = nullptr;
  c_.check(vt().encode_text(c_.self(), ps.data(), static_cast<int64_t>(ps.size()), &cond, &pooled), "encode_text");
  at::Tensor c = keep.take(cond), p = keep.take(pooled);
  return {c, p};
}

at::Tensor ModelPlugin::denoise(const at::Tensor& latents, const at::Tensor& timesteps, const at::Tensor& cond,
                                const at::Tensor& pooled, const at::Tensor& added) {
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vt().denoise(c_.self(), keep(latents), keep(timesteps), keep(cond), keep(pooled), keep(added), &out), "denoise");
  return keep.take(out);
}

at::Tensor ModelPlugin::vae_encode(const at::Tensor& images, bool sample) {
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vt().vae_encode(c_.self(), keep(images), sample ? 1 : 0, &out), "vae_encode");
  return keep.take(out);
}

at::Tensor ModelPlugin::vae_decode(const at::Tensor& latents) {
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vt().vae_decode(c_.self(), keep(latents), &out), "vae_decode");
  return keep.take(out);
}

void ModelPlugin::set_network(void* network_self, const sumi_network_vtable* network, const int32_t* selected) {
  c_.check(vt().set_network(c_.self(), network_self, network, selected), "set_network");
}

void ModelPlugin::detach_network_noexcept() noexcept { (void)vt().set_network(c_.self(), nullptr, nullptr, nullptr); }

void ModelPlugin::train_part(const std::string& part) {
  c_.require_slot(SUMI_HAS_FIELD(&vt(), sumi_model_vtable, train_part) && vt().train_part, "train_part", "1.1");
  c_.check(vt().train_part(c_.self(), part.c_str()), ("train_part " + part).c_str());
}

void ModelPlugin::add_token(const std::string& token, const std::string& init_word, int64_t num_vectors) {
  c_.require_slot(SUMI_HAS_FIELD(&vt(), sumi_model_vtable, add_token) && vt().add_token, "add_token", "1.1");
  c_.check(vt().add_token(c_.self(), token.c_str(), init_word.empty() ? nullptr : init_word.c_str(), num_vectors),
           ("add_token " + token).c_str());
}

void ModelPlugin::save_token(const std::string& token, const std::string& path, std::optional<at::ScalarType> dtype,
                             bool overwrite) {
  c_.require_slot(SUMI_HAS_FIELD(&vt(), sumi_model_vtable, save_token) && vt().save_token, "save_token", "1.1");
  sumi_dtype d{};
  c_.check(vt().save_token(c_.self(), token.c_str(), path.c_str(), dtype_arg(dtype, d), overwrite ? 1 : 0),
           ("save_token " + path).c_str());
}

void ModelPlugin::save(const std::string& path, std::optional<at::ScalarType> dtype, bool overwrite) {
  c_.require_slot(SUMI_HAS_FIELD(&vt(), sumi_model_vtable, save) && vt().save, "save", "1.1");
  sumi_dtype d{};
  c_.check(vt().save(c_.self(), path.c_str(), dtype_arg(dtype, d), overwrite ? 1 : 0), ("save " + path).c_str());
}

std::string ModelPlugin::describe() {
  if (!SUMI_HAS_FIELD(&vt(), sumi_model_vtable, describe) || !vt().describe) return "{}";
  const char* text = nullptr;
  c_.check(vt().describe(c_.self(), &text), "describe");
  return text ? std::string(text) : std::string("{}");
}

void ModelPlugin::load_token(const std::string& token, const std::string& path) {
  c_.require_slot(SUMI_HAS_FIELD(&vt(), sumi_model_vtable, load_token) && vt().load_token, "load_token", "1.2");
  c_.check(vt().load_token(c_.self(), token.c_str(), path.c_str()), ("load_token " + path).c_str());
}

void ModelPlugin::convert(const std::string& src, const std::string& dst, std::optional<at::ScalarType> dtype, bool overwrite) {
  c_.require_slot(SUMI_HAS_FIELD(&vt(), sumi_model_vtable, convert) && vt().convert, "convert", "1.2");
  sumi_dtype d{};
  c_.check(vt().convert(c_.self(), src.c_str(), dst.c_str(), dtype_arg(dtype, d), overwrite ? 1 : 0),
           ("convert " + src + " -> " + dst).c_str());
}

std::optional<std::string> ModelPlugin::probe(const std::string& path, std::string* why) {
  if (!SUMI_HAS_FIELD(&vt(), sumi_model_vtable, probe) || !vt().probe) {
    if (why) *why = "the plugin was built before ABI 1.2 and cannot say";
    return std::nullopt;
  }
  set_last_error("");
  const char* json = nullptr;
  if (vt().probe(c_.self(), path.c_str(), &json) == SUMI_OK) return std::string(json ? json : "{}");
  if (why) *why = last_error();
  return std::nullopt;
}

at::Tensor ModelPlugin::encode_tokens(const at::Tensor& ids) {
  c_.require_slot(SUMI_HAS_FIELD(&vt(), sumi_model_vtable, encode_tokens) && vt().encode_tokens, "encode_tokens", "1.3");
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vt().encode_tokens(c_.self(), keep(ids), &out), "encode_tokens");
  return keep.take(out);
}

std::string ModelPlugin::token_text(int64_t id) {
  c_.require_slot(SUMI_HAS_FIELD(&vt(), sumi_model_vtable, token_text) && vt().token_text, "token_text", "1.3");
  const char* text = nullptr;
  c_.check(vt().token_text(c_.self(), id, &text), "token_text");
  return text ? std::string(text) : std::string();
}

bool ModelPlugin::release_part(const std::string& part) {
  if (!SUMI_HAS_FIELD(&vt(), sumi_model_vtable, release_part) || !vt().release_part) return false;
  const sumi_status st = vt().release_part(c_.self(), part.c_str());
  if (st == SUMI_ERR_UNSUPPORTED) return false;
  c_.check(st, ("release_part " + part).c_str());
  return true;
}

bool ModelPlugin::has_probe() const { return SUMI_HAS_FIELD(&vt(), sumi_model_vtable, probe) && vt().probe; }
bool ModelPlugin::has_save() const { return SUMI_HAS_FIELD(&vt(), sumi_model_vtable, save) && vt().save; }
bool ModelPlugin::has_save_token() const { return SUMI_HAS_FIELD(&vt(), sumi_model_vtable, save_token) && vt().save_token; }
bool ModelPlugin::has_load_token() const { return SUMI_HAS_FIELD(&vt(), sumi_model_vtable, load_token) && vt().load_token; }

// ---------------------------------------------------------------- noise scheduler
void NoiseSchedulerPlugin::set_timesteps(int64_t n) { c_.check(vt().set_timesteps(c_.self(), n), "set_timesteps"); }

at::Tensor NoiseSchedulerPlugin::timesteps() {
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vt().timesteps(c_.self(), &out), "timesteps");
  return keep.take(out);
}

at::Tensor NoiseSchedulerPlugin::sigmas() {
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vt().sigmas(c_.self(), &out), "sigmas");
  return keep.take(out);
}

double NoiseSchedulerPlugin::init_noise_sigma() {
  double v = 1.0;
  c_.check(vt().init_noise_sigma(c_.self(), &v), "init_noise_sigma");
  return v;
}

at::Tensor NoiseSchedulerPlugin::scale_model_input(const at::Tensor& sample, int64_t step_index) {
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vt().scale_model_input(c_.self(), keep(sample), step_index, &out), "scale_model_input");
  return keep.take(out);
}

at::Tensor NoiseSchedulerPlugin::step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample,
                                      const at::Tensor& noise) {
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vt().step(c_.self(), keep(model_output), step_index, keep(sample), keep(noise), &out), "step");
  return keep.take(out);
}

at::Tensor NoiseSchedulerPlugin::add_noise(const at::Tensor& original, const at::Tensor& noise, const at::Tensor& timesteps) {
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vt().add_noise(c_.self(), keep(original), keep(noise), keep(timesteps), &out), "add_noise");
  return keep.take(out);
}

at::Tensor NoiseSchedulerPlugin::velocity(const at::Tensor& sample, const at::Tensor& noise, const at::Tensor& timesteps) {
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vt().velocity(c_.self(), keep(sample), keep(noise), keep(timesteps), &out), "velocity");
  return keep.take(out);
}

at::Tensor NoiseSchedulerPlugin::alphas_cumprod() {
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vt().alphas_cumprod(c_.self(), &out), "alphas_cumprod");
  return keep.take(out);
}

NoiseSchedulerPlugin::Description NoiseSchedulerPlugin::describe() {
  Description d;
  d.a1111_name = c_.info().name;
  if (!SUMI_HAS_FIELD(&vt(), sumi_noise_scheduler_vtable, describe) || !vt().describe) return d;
  const char* text = nullptr;
  c_.check(vt().describe(c_.self(), &text), "describe");
  const std::string who = "noise scheduler '" + std::string(c_.info().name) + "'";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text ? text : "{}");
  } catch (const nlohmann::json::exception& e) {
    throw UserError(who + ": describe returned invalid JSON (" + e.what() + "); the plugin is broken, report it to its author");
  }
  if (!j.is_object()) throw UserError(who + ": describe must return a JSON object; the plugin is broken");
  if (j.contains("a1111_name")) {
    if (!j["a1111_name"].is_string() || j["a1111_name"].get<std::string>().empty())
      throw UserError(who + ": describe's \"a1111_name\" must be a non-empty string");
    d.a1111_name = j["a1111_name"].get<std::string>();
  }
  if (j.contains("noises_per_step")) {
    if (!j["noises_per_step"].is_number_integer() || j["noises_per_step"].get<int64_t>() < 0)
      throw UserError(who + ": describe's \"noises_per_step\" must be a non-negative integer");
    d.noises_per_step = j["noises_per_step"].get<int64_t>();
  }
  return d;
}

// ---------------------------------------------------------------- optimizer, LR scheduler
void OptimizerPlugin::add_param_group(const std::string& group, const std::vector<at::Tensor>& params) {
  HandleScope keep;
  std::vector<sumi_tensor> hs;
  for (const auto& p : params) hs.push_back(keep(p));
  c_.check(c_.vtable<sumi_optimizer_vtable>().add_param_group(c_.self(), group.c_str(), hs.data(), static_cast<int64_t>(hs.size())),
           ("add_param_group " + group).c_str());
}

void OptimizerPlugin::step(const std::vector<double>& lrs) {
  c_.check(c_.vtable<sumi_optimizer_vtable>().step(c_.self(), lrs.data(), static_cast<int64_t>(lrs.size())), "step");
}

double LrSchedulerPlugin::factor(int64_t step, int64_t total_steps, int64_t warmup_steps, double base_lr) {
  const sumi_lr_query q{sizeof(sumi_lr_query), step, total_steps, warmup_steps, base_lr};
  double f = 1.0;
  c_.check(c_.vtable<sumi_lr_scheduler_vtable>().factor(c_.self(), &q, &f), "factor");
  return f;
}

// ---------------------------------------------------------------- network
void NetworkPlugin::set_multiplier(double multiplier) {
  c_.check(vtable().set_multiplier(c_.self(), multiplier), "set_multiplier");
}

void NetworkPlugin::set_training(bool training) { c_.check(vtable().set_training(c_.self(), training ? 1 : 0), "set_training"); }

void NetworkPlugin::load(const std::vector<std::string>& names, const std::vector<at::Tensor>& tensors, const std::string& from) {
  HandleScope keep;
  std::vector<const char*> ns;
  std::vector<sumi_tensor> hs;
  for (const auto& n : names) ns.push_back(n.c_str());
  for (const auto& t : tensors) hs.push_back(keep(t));
  c_.check(vtable().load(c_.self(), ns.data(), hs.data(), static_cast<int64_t>(hs.size())), ("load " + from).c_str());
}

at::Tensor NetworkPlugin::weight_delta(int64_t index) {
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vtable().weight_delta(c_.self(), index, &out), "weight_delta");
  return keep.take(out);
}

at::Tensor NetworkPlugin::bias_delta(int64_t index) {
  if (!SUMI_HAS_FIELD(&vtable(), sumi_network_vtable, bias_delta) || !vtable().bias_delta) return at::Tensor();
  HandleScope keep;
  sumi_tensor out = nullptr;
  c_.check(vtable().bias_delta(c_.self(), index, &out), "bias_delta");
  return keep.take(out);
}

std::optional<NetworkPlugin::MaxNorm> NetworkPlugin::apply_max_norm(double max_norm) {
  if (!SUMI_HAS_FIELD(&vtable(), sumi_network_vtable, apply_max_norm) || !vtable().apply_max_norm) return std::nullopt;
  MaxNorm r;
  const sumi_status st = vtable().apply_max_norm(c_.self(), max_norm, &r.keys_scaled, &r.mean_norm, &r.max_norm);
  if (st == SUMI_ERR_UNSUPPORTED) return std::nullopt;
  c_.check(st, "apply_max_norm");
  return r;
}

void NetworkPlugin::resume_training_noexcept(double multiplier) noexcept {
  // The statuses are not checked: nothing may throw here.
  (void)vtable().set_multiplier(c_.self(), multiplier);
  (void)vtable().set_training(c_.self(), 1);
}

bool NetworkPlugin::has_probe() const { return SUMI_HAS_FIELD(&vtable(), sumi_network_vtable, probe) && vtable().probe; }

void NetworkPlugin::attach(const sumi_module_info* modules, int64_t n, int32_t* selected) {
  c_.check(vtable().attach(c_.self(), modules, n, selected), "attach");
}

std::vector<int32_t> NetworkPlugin::probe(const std::vector<sumi_file_tensor>& tensors, const std::string& metadata_json,
                                          const std::string& from) {
  c_.require_slot(has_probe(), "probe", "1.3");
  std::vector<int32_t> understood(tensors.size(), 0);
  c_.check(vtable().probe(c_.self(), tensors.data(), static_cast<int64_t>(tensors.size()), metadata_json.c_str(),
                          understood.data()),
           ("probe " + from).c_str());
  return understood;
}

bool NetworkPlugin::configure_from_weights(const std::vector<sumi_file_tensor>& tensors, const std::string& metadata_json,
                                           const std::string& from) {
  if (!SUMI_HAS_FIELD(&vtable(), sumi_network_vtable, configure_from_weights) || !vtable().configure_from_weights)
    return false;
  c_.check(vtable().configure_from_weights(c_.self(), tensors.data(), static_cast<int64_t>(tensors.size()),
                                           metadata_json.c_str()),
           ("configure_from_weights " + from).c_str());
  return true;
}

bool NetworkPlugin::has_metadata() const {
  return SUMI_HAS_FIELD(&vtable(), sumi_network_vtable, metadata) && vtable().metadata;
}

std::optional<std::string> NetworkPlugin::metadata() {
  if (!has_metadata()) return std::nullopt;
  const char* json = nullptr;
  c_.check(vtable().metadata(c_.self(), &json), "metadata");
  return std::string(json ? json : "{}");
}

}  // namespace sumi::host
