#include "dylora_file.h"

namespace sumi::dylora {

namespace {

using sumi::shape_str;

[[noreturn]] void invalid(const std::string& msg) { throw Error(SUMI_ERR_INVALID_ARGUMENT, "dylora: " + msg); }

}  // namespace

FileLayout read_file(const std::vector<std::string>& names, const std::vector<Tensor>& tensors) {
  if (names.size() != tensors.size())
    invalid("load got " + std::to_string(names.size()) + " names for " + std::to_string(tensors.size()) + " tensors");
  FileLayout f;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& key = names[i];
    const Tensor& t = tensors[i];
    std::string part;
    for (const char* sfx : {".lora_down.weight", ".lora_up.weight", ".alpha"}) {
      const std::string s = sfx;
      if (key.size() > s.size() && key.compare(key.size() - s.size(), s.size(), s) == 0) part = s;
    }
    if (part.empty())
      invalid("the file's tensor '" + key +
              "' is not a kohya LoRA / DyLoRA key (expected <module>.lora_down.weight, <module>.lora_up.weight or "
              "<module>.alpha); is this a network of another kind?");
    const std::string mod = key.substr(0, key.size() - part.size());
    FileModule& m = f.modules[mod];
    Tensor* dst = part == ".alpha" ? &m.alpha : part == ".lora_down.weight" ? &m.down : &m.up;
    if (dst->defined()) invalid("the file's tensor '" + key + "' is given twice");
    if (part == ".alpha" && t.numel() != 1)
      invalid("the file's '" + key + "' has shape " + shape_str(t.sizes()) + "; an alpha is one number");
    if (part != ".alpha" && t.dim() != 2 && t.dim() != 4)
      invalid("the file's '" + key + "' has shape " + shape_str(t.sizes()) + "; LoRA weights are 2-d (Linear) or 4-d (Conv2d)");
    *dst = t;
  }
  bool first = true;
  for (const auto& [mod, m] : f.modules) {
    if (!m.down.defined() || !m.up.defined())
      invalid("the file has " + std::string(m.down.defined() ? "lora_down" : m.up.defined() ? "lora_up" : "only alpha") + " but no " +
              (m.down.defined() ? "lora_up" : "lora_down") + " for module '" + mod + "'");
    const int64_t r = m.down.size(0);
    if (m.up.size(1) != r)
      invalid("module '" + mod + "': lora_down has rank " + std::to_string(r) + " but lora_up " + shape_str(m.up.sizes()) + " has " +
              std::to_string(m.up.size(1)));
    if (first) f.rank = r;
    else if (r != f.rank) f.mixed_ranks = true;
    first = false;
    if (m.down.dim() == 4 && (m.down.size(2) > 1 || m.down.size(3) > 1)) f.conv3x3 = true;
    if (mod.rfind("lora_unet_", 0) == 0) f.unet = true;
    if (mod.rfind("lora_te", 0) == 0) f.text_encoder = true;
  }
  return f;
}

}  // namespace sumi::dylora
