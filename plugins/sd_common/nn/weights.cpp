#include "weights.h"

#include <torch/nn/module.h>

#include <sstream>
#include <stdexcept>

namespace sumi::nn {

namespace {

// Buffers that checkpoints carry but that sumi's modules compute on the fly.
bool known_extra(const std::string& name) {
  auto ends_with = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends_with("embeddings.position_ids") || ends_with("logit_scale");
}

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << '[';
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << ']';
  return o.str();
}

std::string first_names(const std::vector<std::string>& names) {
  std::ostringstream o;
  for (size_t i = 0; i < names.size() && i < 8; ++i) o << (i ? ", " : "") << names[i];
  if (names.size() > 8) o << ", ... (" << names.size() << " in all)";
  return o.str();
}

}  // namespace

LoadReport load_weights(torch::nn::Module& module, const TensorMap& weights,
                        const LoadOptions& options) {
  LoadReport report;
  TensorMap scoped;
  for (const auto& [name, t] : weights)
    if (name.compare(0, options.prefix.size(), options.prefix) == 0)
      scoped.emplace(name.substr(options.prefix.size()), t);

  std::map<std::string, bool> used;
  at::NoGradGuard no_grad;
  for (auto& item : module.named_parameters(/*recurse=*/true)) {
    const auto& name = item.key();
    auto& param = item.value();
    auto it = scoped.find(name);
    if (it == scoped.end()) {
      report.missing.push_back(name);
      continue;
    }
    const auto& src = it->second;
    if (src.sizes() != param.sizes())
      throw std::runtime_error("weights: '" + options.prefix + name + "' has shape " +
                               shape_str(src.sizes()) + " but the model expects " +
                               shape_str(param.sizes()) +
                               "; the config does not match this checkpoint");
    param.copy_(src.to(param.device(), param.scalar_type()));
    used[name] = true;
    report.loaded.push_back(name);
  }
  for (const auto& [name, t] : scoped)
    if (!used.count(name) && !known_extra(name)) report.unexpected.push_back(name);

  if (options.strict && (!report.missing.empty() || !report.unexpected.empty())) {
    std::string msg = "weights: the tensors do not match the model";
    if (!options.prefix.empty()) msg += " (prefix '" + options.prefix + "')";
    if (!report.missing.empty()) msg += "; missing: " + first_names(report.missing);
    if (!report.unexpected.empty()) msg += "; unexpected: " + first_names(report.unexpected);
    msg += ". Check that the file is the model kind you asked for (and its config), or load "
           "non-strictly.";
    throw std::runtime_error(msg);
  }
  return report;
}

TensorMap named_tensors(const torch::nn::Module& module) {
  TensorMap out;
  for (const auto& item : module.named_parameters(true)) out.emplace(item.key(), item.value());
  return out;
}

}  // namespace sumi::nn
