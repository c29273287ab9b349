#include "app/train/checkpoints.h"

#include "core/error.h"
#include "core/progress.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

namespace fs = std::filesystem;

namespace sumi::app {

namespace {

constexpr const char* kStateFormat = "sumi-train-state-1";

}  // namespace

Checkpoints::Checkpoints(const TrainSettings& s, host::Registry& registry, TrainTarget& target)
    : s_(s), registry_(registry), target_(target), outdir_(s.output_dir) {
  fs::create_directories(outdir_);
}

std::string Checkpoints::step_name(int64_t step) const {
  char b[32];
  std::snprintf(b, sizeof b, "-step%08lld", static_cast<long long>(step));
  return s_.output_name + b;
}

std::string Checkpoints::epoch_name(int64_t epoch) const {
  char b[32];
  std::snprintf(b, sizeof b, "-%06lld", static_cast<long long>(epoch));
  return s_.output_name + b;
}

fs::path Checkpoints::saved_path(const std::string& name) const {
  return outdir_ / (target_.saves_folder() ? name : name + ".safetensors");
}

std::string Checkpoints::save(const std::string& name, const RunFacts& run) {
  const fs::path path = saved_path(name);
  target_.save(path, run);
  return path.string();
}

bool Checkpoints::in_state(const host::RegistryEntry& e) const {
  return e.component == "optimizer" || (e.component == target_.component() && (target_.state_keeps_all() || e.trainable));
}

void Checkpoints::save_state(const std::string& name, const TrainPosition& at, const std::mt19937_64& data_rng,
                             const GradScaler* scaler) const {
  if (!s_.save_state) return;
  const fs::path dir = outdir_ / (name + "-state");
  const fs::path tmp = outdir_ / (name + "-state.tmp");
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  io::NamedTensors tensors;
  for (const auto& e : registry_.entries())
    if (in_state(e)) tensors.emplace_back(e.key(), e.tensor.detach().contiguous());
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    tensors.emplace_back("rng/torch_cpu", gen.get_state());
  }
  std::ostringstream rng;
  rng << data_rng;
  nlohmann::json j{{"format", kStateFormat},          {"step", at.step},     {"epoch", at.epoch},
                   {"batch_in_epoch", at.batch_in_epoch}, {"seed", s_.seed}, {"data_rng", rng.str()},
                   {"network", target_.state_name()},  {"optimizer", s_.optimizer_type}};
  if (scaler) {
    j["grad_scale"] = scaler->scale_value();
    j["grad_growth_tracker"] = scaler->growth_tracker();
  }
  io::save_tensors((tmp / "train_state.safetensors").string(), tensors, {});
  std::ofstream((tmp / "train_state.json").string()) << j.dump(1);
  fs::remove_all(dir);
  fs::rename(tmp, dir);
}

std::optional<TrainPosition> Checkpoints::resume(std::mt19937_64& data_rng, GradScaler* scaler) const {
  if (s_.resume.empty()) return std::nullopt;
  const fs::path dir = s_.resume;
  std::ifstream jf(dir / "train_state.json");
  if (!jf) throw host::UserError("--resume " + s_.resume + ": no train_state.json there (a folder written by --save_state)");
  nlohmann::json j;
  try {
    jf >> j;
  } catch (const std::exception& e) {
    throw host::UserError("--resume " + s_.resume + "/train_state.json: " + e.what());
  }
  if (j.value("format", "") != kStateFormat)
    throw host::UserError("--resume " + s_.resume + ": not a sumi training state (format '" + j.value("format", "") + "')");
  const std::string target = target_.state_name();
  if (j.value("network", "") != target || j.value("optimizer", "") != s_.optimizer_type)
    throw host::UserError("--resume " + s_.resume + ": saved with network '" + j.value("network", "") + "' and optimizer '" +
                          j.value("optimizer", "") + "', this run uses '" + target + "' and '" + s_.optimizer_type + "'");
  std::map<std::string, at::Tensor> saved;
  for (auto& [k, t] : io::load_all((dir / "train_state.safetensors").string())) saved[k] = t;
  at::NoGradGuard ng;
  for (const auto& e : registry_.entries()) {
    if (!in_state(e)) continue;
    auto it = saved.find(e.key());
    // The registry entries a run creates follow from its plugins and their arguments: a missing
    // or reshaped entry means the state was saved with other ones.
    const std::string hint = e.component == "optimizer"
                                 ? "; was it saved with another --optimizer_type or other --optimizer_args (e.g. block_wise, "
                                   "min_8bit_size)?"
                                 : "; was it saved with other --network_module / --network_args or another model?";
    if (it == saved.end()) throw host::UserError("--resume " + s_.resume + ": the state has no '" + e.key() + "'" + hint);
    if (!it->second.sizes().equals(e.tensor.sizes()))
      throw host::UserError("--resume " + s_.resume + ": '" + e.key() + "' has another shape than this run's" + hint);
    // Floating-point state converts (a precision change); codes do not (an 8-bit optimizer's
    // uint8 state against float32 state: its min_8bit_size differs).
    if (it->second.scalar_type() != e.tensor.scalar_type() && !(it->second.is_floating_point() && e.tensor.is_floating_point()))
      throw host::UserError("--resume " + s_.resume + ": '" + e.key() + "' is " + std::string(c10::toString(it->second.scalar_type())) +
                            " in the state and " + c10::toString(e.tensor.scalar_type()) +
                            " in this run (were the optimizer's arguments, e.g. min_8bit_size, different?)");
    e.tensor.copy_(it->second);
  }
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(saved.at("rng/torch_cpu"));
  }
  std::istringstream rng(j.at("data_rng").get<std::string>());
  rng >> data_rng;
  TrainPosition at;
  at.step = j.at("step").get<int64_t>();
  at.epoch = j.at("epoch").get<int>();
  at.batch_in_epoch = j.at("batch_in_epoch").get<size_t>();
  if (scaler && j.contains("grad_scale"))
    scaler->restore(j.at("grad_scale").get<double>(), j.at("grad_growth_tracker").get<int64_t>());
  host::log(SUMI_LOG_INFO, "train", "resuming at step " + std::to_string(at.step) + ", epoch " + std::to_string(at.epoch));
  return at;
}

// kohya's --save_last_n_*: a periodic save that falls out of the window is removed (its file or
// diffusers folder; its state folder under the _state window).
void Checkpoints::remove_saved(const std::string& name, bool model_file, bool state) const {
  if (model_file) fs::remove_all(saved_path(name));
  if (state) fs::remove_all(outdir_ / (name + "-state"));
}

void Checkpoints::prune_step_saves(int64_t step) const {
  auto remove_no = [&](const std::optional<int64_t>& last_n) -> std::optional<int64_t> {
    if (!last_n) return std::nullopt;
    int64_t r = step - *last_n - 1;  // kohya's get_remove_step_no
    if (r < 0) return std::nullopt;
    r -= r % s_.save_every_n_steps;
    return r > 0 ? std::optional<int64_t>(r) : std::nullopt;
  };
  if (auto r = remove_no(s_.save_last_n_steps)) remove_saved(step_name(*r), true, false);
  if (auto r = remove_no(s_.save_last_n_steps_state ? s_.save_last_n_steps_state : s_.save_last_n_steps))
    remove_saved(step_name(*r), false, s_.save_state);
}

void Checkpoints::prune_epoch_saves(int epoch) const {
  auto remove_no = [&](const std::optional<int64_t>& last_n) -> std::optional<int64_t> {
    if (!last_n) return std::nullopt;
    const int64_t r = epoch - s_.save_every_n_epochs * *last_n;  // kohya's get_remove_epoch_no
    return r > 0 ? std::optional<int64_t>(r) : std::nullopt;
  };
  if (auto r = remove_no(s_.save_last_n_epochs)) remove_saved(epoch_name(*r), true, false);
  if (auto r = remove_no(s_.save_last_n_epochs_state ? s_.save_last_n_epochs_state : s_.save_last_n_epochs))
    remove_saved(epoch_name(*r), false, s_.save_state);
}

}  // namespace sumi::app
