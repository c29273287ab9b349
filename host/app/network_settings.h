// The settings a kohya LoRA file implies for the `lora` network plugin, as gen_img's
// create_network_from_weights reads them from the file instead of asking: the rank of its
// Linear / 1x1 layers (dim), of its 3x3 convolutions (conv_dim), and whether it covers only the
// U-Net or only the text encoder(s). Alphas need no setting: the plugin loads them per module.
#pragma once

#include <map>
#include <string>

namespace sumi::app {

// Keys of the lora plugin's schema with text values; a setting the file leaves open (mixed
// ranks: per-block dims) is not set. Reads the safetensors header only.
std::map<std::string, std::string> lora_settings_from_file(const std::string& path);

}  // namespace sumi::app
