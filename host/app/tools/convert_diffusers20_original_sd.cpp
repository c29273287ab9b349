// `sumi convert_diffusers20_original_sd`: kohya's tools/convert_diffusers20_original_sd.py as
// an alias of `sumi convert` (the model plugin's convert slot), with kohya's flags and their
// precision rules: a checkpoint is saved in --fp16 / --bf16 / --float / --save_precision_as
// (float32 when none, as kohya's models load in float32); a Diffusers folder in float16 only
// when --fp16 loads a Diffusers source in float16, else float32.
#include "app/tools/tools.h"

#include "app/commands.h"
#include "app/model_file.h"
#include "app/tools/plugin_model.h"
#include "app/tools/tool_args.h"
#include "core/error.h"

#include <filesystem>
#include <iostream>

namespace fs = std::filesystem;

namespace sumi::app::tools {

int cmd_convert_diffusers20_original_sd(const std::vector<std::string>& argv) {
  ToolArgs args("convert_diffusers20_original_sd",
                "Converts a Diffusers model to a single-file checkpoint or back (kohya tools/convert_diffusers20_original_sd.py; "
                "same as sumi convert).");
  args.positional("model_to_load", "checkpoint file or Diffusers folder to read")
      .positional("model_to_save", "checkpoint to write (a name with an extension: .safetensors) or Diffusers folder (no extension)")
      .flag(kKohyaV1, "the model is SD 1.x (detected from the file when neither --v1 nor --v2 is given)")
      .flag(kKohyaV2, "the model is SD 2.x")
      .flag("unet_use_linear_projection", "kohya: v2 Diffusers U-Net config with use_linear_projection (not supported)")
      .flag("fp16", "load a Diffusers source as float16 and save a checkpoint as float16")
      .flag("bf16", "save a checkpoint as bfloat16")
      .flag("float", "save a checkpoint as float32")
      .value("save_precision_as", "checkpoint precision (instead of --fp16 / --bf16 / --float)", "no", {"no", "fp16", "bf16", "float"})
      .value("epoch", "kohya writes it into .ckpt files only; sumi writes .safetensors, which do not carry it", "0")
      .value("global_step", "as --epoch", "0")
      .value("reference_model", "Diffusers model to copy scheduler / tokenizer configs from (not supported)")
      .flag("use_safetensors", "save a Diffusers folder's weights as .safetensors (sumi always does)")
      .list("plugin-dir", "extra plugin folder (the model plugins)");
  if (!args.parse(argv)) return 0;
  const std::string src = args.str("model_to_load"), dst = args.str("model_to_save");
  std::error_code ec;
  const bool load_file = fs::is_regular_file(src, ec);
  const bool save_file = !fs::path(dst).extension().empty();
  if (!fs::exists(src, ec)) args.fail("model_to_load '" + src + "' does not exist (a checkpoint file or a Diffusers folder)");
  if (args.on(kKohyaV1) && args.on(kKohyaV2))
    args.fail("--v1 and --v2 both given: name the family once (or neither, and it is read from the model)");
  if (args.on("unet_use_linear_projection"))
    args.fail("--unet_use_linear_projection is not supported: the model plugin writes the SD 2.x U-Net config of its "
              "standard layout; drop the flag");
  if (args.given("reference_model") && !save_file)
    args.fail("--reference_model is not supported: the model plugin writes the family's standard scheduler and tokenizer "
              "configs (those of kohya's default reference models); drop the flag");
  if (args.integer("epoch") != 0 || args.integer("global_step") != 0)
    args.fail("--epoch / --global_step are stored in .ckpt files only; sumi writes .safetensors, which kohya saves without them");
  if (save_file && fs::path(dst).extension() != ".safetensors")
    args.fail("model_to_save '" + dst + "': sumi writes .safetensors checkpoints (or a Diffusers folder: a name without "
              "an extension), not " + fs::path(dst).extension().string());
  const std::string spa = args.str("save_precision_as");
  std::string save_dtype;
  if (args.on("fp16") || spa == "fp16") save_dtype = "fp16";
  else if (args.on("bf16") || spa == "bf16") save_dtype = "bf16";
  else if (args.on("float") || spa == "float") save_dtype = "fp32";
  std::string dtype;
  if (save_file) {
    dtype = save_dtype.empty() ? "fp32" : save_dtype;
  } else {
    if (args.on("bf16") || args.on("float") || spa != "no")
      args.fail("--bf16 / --float / --save_precision_as set a checkpoint's precision; a Diffusers folder is saved in the "
                "precision it is loaded in (float32, or float16 with --fp16 from a Diffusers source)");
    dtype = args.on("fp16") && !load_file ? "fp16" : "fp32";
  }
  if (args.given("reference_model"))
    std::cout << "--reference_model is used for Diffusers output only (kohya ignores it for a checkpoint too)\n";
  // The model plugins say which component loads the source; --v1 / --v2 must name it.
  std::vector<std::string> given;
  for (const char* f : {kKohyaV1, kKohyaV2})
    if (args.on(f)) given.push_back(f);
  auto pm = tool_plugin_manager(args.strs("plugin-dir"));
  const std::string component = tool_model_component(pm, src, "model_to_load", given);

  std::cout << "loading " << (load_file ? "checkpoint" : std::string("Diffusers") + (args.on("fp16") ? " as fp16" : "")) << ": "
            << src << "\n";
  std::cout << "converting and saving as " << (save_file ? "checkpoint in " + dtype : std::string("Diffusers")) << ": " << dst
            << "\n";
  std::vector<std::string> convert{src, dst, "--dtype", dtype, "--family", component};
  // kohya replaces an existing output; the input is never the output.
  if (fs::exists(dst, ec)) {
    if (fs::equivalent(src, dst, ec)) args.fail("model_to_save is model_to_load; write to another path");
    convert.push_back("--overwrite");
  }
  for (const auto& d : args.strs("plugin-dir")) convert.insert(convert.end(), {"--plugin-dir", d});
  const int rc = app::cmd_convert(convert);
  if (rc == 0) std::cout << "model saved.\n";
  return rc;
}

}  // namespace sumi::app::tools
