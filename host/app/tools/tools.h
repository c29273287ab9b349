// kohya-ss sd-scripts' tool scripts as `sumi` subcommands, each named after its script and
// taking that script's flags (docs/tools.md): `sumi resize_lora --model a --save_to b ...`.
#pragma once

#include <string>
#include <vector>

namespace sumi::app::tools {

int cmd_show_metadata(const std::vector<std::string>& args);
int cmd_resize_lora(const std::vector<std::string>& args);
int cmd_check_lora_weights(const std::vector<std::string>& args);
int cmd_merge_lora(const std::vector<std::string>& args);
int cmd_sdxl_merge_lora(const std::vector<std::string>& args);
int cmd_svd_merge_lora(const std::vector<std::string>& args);
int cmd_merge_models(const std::vector<std::string>& args);
int cmd_extract_lora_from_models(const std::vector<std::string>& args);
int cmd_extract_lora_from_dylora(const std::vector<std::string>& args);
// Dataset preparation (finetune/ and tools/ of sd-scripts).
int cmd_merge_captions_to_metadata(const std::vector<std::string>& args);
int cmd_merge_dd_tags_to_metadata(const std::vector<std::string>& args);
int cmd_clean_captions_and_tags(const std::vector<std::string>& args);
int cmd_resize_images_to_resolution(const std::vector<std::string>& args);
int cmd_lora_interrogator(const std::vector<std::string>& args);
int cmd_canny(const std::vector<std::string>& args);
int cmd_prepare_buckets_latents(const std::vector<std::string>& args);
int cmd_cache_latents(const std::vector<std::string>& args);
int cmd_cache_text_encoder_outputs(const std::vector<std::string>& args);
// `sumi convert` with the flags of kohya's tools/convert_diffusers20_original_sd.py.
int cmd_convert_diffusers20_original_sd(const std::vector<std::string>& args);

// Runs `command` if it is a tool: sets `rc` and returns true; false for any other name.
bool run_tool(const std::string& command, const std::vector<std::string>& args, int& rc);

// The tools' lines of `sumi --help`.
const char* tools_usage();

}  // namespace sumi::app::tools
