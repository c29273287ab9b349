#include "network_settings.h"

#include "sumi/io/safetensors.h"

#include <set>

namespace sumi::app {

std::map<std::string, std::string> lora_settings_from_file(const std::string& path) {
  const auto file = io::SafetensorsFile::open(path);
  const std::string down = ".lora_down.weight";
  std::set<int64_t> dims, conv_dims;
  bool unet = false, text = false;
  for (const auto& t : file->tensors()) {
    if (t.name.size() <= down.size() || t.name.compare(t.name.size() - down.size(), down.size(), down) != 0) continue;
    if (t.shape.empty()) continue;
    const bool conv3 = t.shape.size() == 4 && (t.shape[2] != 1 || t.shape[3] != 1);
    (conv3 ? conv_dims : dims).insert(t.shape[0]);
    if (t.name.rfind("lora_unet_", 0) == 0) unet = true;
    if (t.name.rfind("lora_te", 0) == 0) text = true;
  }
  std::map<std::string, std::string> out;
  if (dims.size() == 1) out["dim"] = std::to_string(*dims.begin());
  if (conv_dims.size() == 1) out["conv_dim"] = std::to_string(*conv_dims.begin());
  if (unet && !text) out["train_unet_only"] = "true";
  if (text && !unet) out["train_text_encoder_only"] = "true";
  return out;
}

}  // namespace sumi::app
