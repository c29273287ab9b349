#include "weights.h"

#include <torch/nn/module.h>

#include <sstream>
#include <stdexcept>

#include "layers.h"

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

namespace {

// torch::nn::Module keeps its parameter table protected and refuses to register a name twice;
// a pointer to the inherited member reaches the table of any module.
struct ParameterTable : torch::nn::Module {
  static torch::OrderedDict<std::string, at::Tensor>& of(torch::nn::Module& m) { return m.*(&ParameterTable::parameters_); }
};

// The member of a sumi layer that holds parameter `name` (the layer computes with it).
at::Tensor* layer_member(torch::nn::Module& m, const std::string& name) {
  auto pick = [&](at::Tensor& weight, at::Tensor* bias) -> at::Tensor* {
    if (name == "weight") return &weight;
    if (name == "bias" && bias) return bias;
    return nullptr;
  };
  if (auto* l = dynamic_cast<Linear*>(&m)) return pick(l->weight, &l->bias);
  if (auto* c = dynamic_cast<Conv2d*>(&m)) return pick(c->weight, &c->bias);
  if (auto* g = dynamic_cast<GroupNorm*>(&m)) return pick(g->weight, &g->bias);
  if (auto* n = dynamic_cast<LayerNorm*>(&m)) return pick(n->weight, &n->bias);
  if (auto* e = dynamic_cast<Embedding*>(&m)) return pick(e->weight, nullptr);
  return nullptr;
}

}  // namespace

void replace_parameters(torch::nn::Module& module, const ParameterReplacer& replace) {
  for (const auto& item : module.named_modules("", /*include_self=*/true)) {
    torch::nn::Module& m = *item.value();
    auto& table = ParameterTable::of(m);
    for (auto& entry : table) {
      const std::string full = item.key().empty() ? entry.key() : item.key() + "." + entry.key();
      at::Tensor* member = layer_member(m, entry.key());
      if (!member)
        throw std::logic_error("replace_parameters: '" + full + "' belongs to a layer type (" + m.name() +
                               ") whose forward this function cannot redirect");
      at::Tensor next = replace(full, entry.value());
      if (!next.defined() || !next.sizes().equals(entry.value().sizes()))
        throw std::runtime_error("replace_parameters: the replacement of '" + full + "' has shape " +
                                 (next.defined() ? shape_str(next.sizes()) : std::string("(undefined)")) +
                                 ", expected " + shape_str(entry.value().sizes()));
      entry.value() = next;
      *member = next;
    }
  }
}

TensorMap named_tensors(const torch::nn::Module& module) {
  TensorMap out;
  for (const auto& item : module.named_parameters(true)) out.emplace(item.key(), item.value());
  return out;
}

}  // namespace sumi::nn
