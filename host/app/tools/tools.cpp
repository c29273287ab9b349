#include "app/tools/tools.h"

namespace sumi::app::tools {

namespace {
struct Tool {
  const char* name;
  int (*run)(const std::vector<std::string>&);
};
const Tool kTools[] = {
    {"show_metadata", cmd_show_metadata},
    {"resize_lora", cmd_resize_lora},
    {"check_lora_weights", cmd_check_lora_weights},
    {"merge_lora", cmd_merge_lora},
    {"sdxl_merge_lora", cmd_sdxl_merge_lora},
    {"svd_merge_lora", cmd_svd_merge_lora},
    {"merge_models", cmd_merge_models},
    {"extract_lora_from_models", cmd_extract_lora_from_models},
    {"extract_lora_from_dylora", cmd_extract_lora_from_dylora},
    {"merge_captions_to_metadata", cmd_merge_captions_to_metadata},
    {"merge_dd_tags_to_metadata", cmd_merge_dd_tags_to_metadata},
    {"clean_captions_and_tags", cmd_clean_captions_and_tags},
    {"resize_images_to_resolution", cmd_resize_images_to_resolution},
    {"canny", cmd_canny},
    {"prepare_buckets_latents", cmd_prepare_buckets_latents},
    {"cache_latents", cmd_cache_latents},
    {"cache_text_encoder_outputs", cmd_cache_text_encoder_outputs},
    {"convert_diffusers20_original_sd", cmd_convert_diffusers20_original_sd},
    {"lora_interrogator", cmd_lora_interrogator},
};
}  // namespace

bool run_tool(const std::string& command, const std::vector<std::string>& args, int& rc) {
  for (const Tool& t : kTools)
    if (command == t.name) {
      rc = t.run(args);
      return true;
    }
  return false;
}

const char* tools_usage() {
  return "kohya tool scripts (kohya's flags; sumi <tool> --help, docs/tools.md):\n"
         "  show_metadata --model F            a .safetensors file's header and metadata\n"
         "  check_lora_weights FILE            per-tensor mean / min |w| of a LoRA\n"
         "  resize_lora --model --save_to --new_rank   a LoRA at a new (or dynamic) rank by SVD\n"
         "  merge_lora / sdxl_merge_lora       LoRAs into a checkpoint (--sd_model) or into one LoRA\n"
         "  svd_merge_lora --models --ratios --new_rank   LoRAs into one LoRA of a new rank by SVD\n"
         "  extract_lora_from_models --model_org --model_tuned   a LoRA from two checkpoints\n"
         "  extract_lora_from_dylora --model --save_to --unit   LoRAs of ranks unit, 2*unit, ... from a DyLoRA\n"
         "  lora_interrogator --sd_model --model   the tokens a LoRA's text-encoder part reacts to\n"
         "  merge_models --models --ratios --output   a weighted sum of checkpoints\n"
         "  merge_captions_to_metadata / merge_dd_tags_to_metadata DIR OUT_JSON   caption / tag files into metadata\n"
         "  clean_captions_and_tags IN_JSON OUT_JSON   kohya's caption and tag clean-up of a metadata file\n"
         "  resize_images_to_resolution SRC DST   images shrunk to at most --max_resolution areas\n"
         "  canny --input --output             a Canny edge image (cv2.Canny)\n"
         "  prepare_buckets_latents DIR IN_JSON OUT_JSON MODEL   buckets into metadata, latents into .npz\n"
         "  cache_latents / cache_text_encoder_outputs [training flags]   the trainer's disk caches, made ahead\n"
         "  convert_diffusers20_original_sd SRC DST   sumi convert with kohya's flags (--v2 --fp16 ...)\n";
}

}  // namespace sumi::app::tools
