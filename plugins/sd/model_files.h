// A Stable Diffusion checkpoint read from any of the forms people keep them in — an original
// single file (.safetensors, or a torch .ckpt/.pt read by the restricted unpickler) or a
// diffusers folder — as diffusers-named parts plus configs; and written back to either form.
// The family and configs are settled from names and shapes (single files) or config.json files
// (folders) before any tensor data is read, so a wrong family is refused without loading it.
// Shared by the sd1/sd2/sdxl model plugin and `sumi convert`.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "nn/detect.h"
#include "nn/key_map.h"

namespace sumi::sd {

enum class SourceForm { safetensors, torch_pickle, diffusers_folder };

struct ModelFiles {
  nn::ModelFamily family = nn::ModelFamily::sd1;
  SourceForm form = SourceForm::safetensors;
  std::string path;
  std::optional<nn::UNetConfig> unet_config;
  std::optional<nn::VaeConfig> vae_config;
  std::optional<nn::ClipTextConfig> te_config, te2_config;
  nn::ConvertedCheckpoint parts;  // diffusers / transformers names, no component prefix
  // A single file's own tensors under their original names (EMA copies removed): what makes
  // writing a single file back lossless (tensors diffusers has no place for).
  nn::TensorMap original;
  // Writing a single file from `parts` (no `original`): tensors under their original names to use
  // for what the diffusers form does not hold, instead of placeholders (nn::to_single_file).
  nn::TensorMap carry_over;
  // From a diffusers folder's scheduler config ("epsilon", "v_prediction"); "" when unknown.
  std::string prediction_type;
  // The diffusers scheduler config to sample with, as JSON text: a folder's own
  // scheduler/scheduler_config.json, or the family's standard one for a single file (what the
  // official scheduler_config.json files say: leading spacing, steps_offset 1), so the same
  // model gives the same images in either form.
  std::string scheduler_config;
};

struct ReadOptions {
  // Refuse a checkpoint of another family, before its tensor data is read.
  std::optional<nn::ModelFamily> expect;
  // Convert floating-point tensors; unset keeps the file's dtype (safetensors tensors then
  // stay zero-copy views of the mapped file).
  std::optional<at::ScalarType> dtype;
};

// "sd1" / "sd2" / "sdxl"; throws std::invalid_argument otherwise.
nn::ModelFamily family_from_string(const std::string& name);
// What users read: "SD 1.x", "SD 2.x", "SDXL".
const char* family_title(nn::ModelFamily family);

// The standard diffusers scheduler config of a family (SD 1.5's / 2.x's PNDM, SDXL base's Euler:
// scaled_linear 0.00085-0.012, leading spacing, steps_offset 1), with `prediction_type`
// ("" = epsilon). JSON text.
std::string standard_scheduler_config(nn::ModelFamily family, const std::string& prediction_type);

// The family of a checkpoint from its names and shapes (a safetensors header, the config.json
// files of a folder; a pickled .ckpt is unpickled, restricted) without reading tensor data where
// the form allows. Throws std::runtime_error naming the file when it is not an SD checkpoint.
nn::ModelFamily detect_family(const std::string& path);

// Throws std::runtime_error naming the file (and tensor / config) on anything it refuses.
ModelFiles read_model(const std::string& path, const ReadOptions& options = {});

// A standalone VAE (`--vae`): a diffusers vae folder or weights file, or an original-layout file
// (LDM names, with or without the first_stage_model. prefix). Returns diffusers names.
nn::TensorMap read_vae(const std::string& path, std::optional<at::ScalarType> dtype = {});

// Writers. Both write into a temporary sibling and rename onto `dst`, which must not exist.
void write_diffusers_folder(const ModelFiles& model, const std::string& dst);
void write_single_file(const ModelFiles& model, const std::string& dst);

// Either writer by the destination's form: `dst` ending in .safetensors is a single file,
// anything else a diffusers folder. With `overwrite` an existing `dst` is replaced only by a
// complete result (written beside it, then swapped in); without, an existing `dst` is refused.
// Shared by `sumi convert` and the model plugin's save.
void write_model(const ModelFiles& model, const std::string& dst, bool overwrite);

struct ConvertOptions {
  std::optional<at::ScalarType> dtype;      // floating-point tensors only
  std::optional<nn::ModelFamily> family;    // refuse a source of another family
  bool overwrite = false;
};

// Single file <-> diffusers folder, .ckpt -> .safetensors, dtype change. `dst` ending in
// .safetensors is a single file; anything else is a diffusers folder.
void convert_model(const std::string& src, const std::string& dst, const ConvertOptions& options);

}  // namespace sumi::sd
