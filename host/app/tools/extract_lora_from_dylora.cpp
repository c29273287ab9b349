// `sumi extract_lora_from_dylora`: kohya's networks/extract_lora_from_dylora.py — a DyLoRA file
// cut into plain LoRA files of ranks unit, 2 * unit, ... below its full rank. DyLoRA trains every
// leading block of ranks to work on its own, so a rank-r LoRA is just the first r rows of
// lora_down and columns of lora_up. As kohya does: alpha is copied unchanged (the rank-r file
// scales by alpha / r), tensors keep their dtype, each file is <save_to stem>-<rank, 4 digits>
// <ext>, its metadata is the source's with ss_network_dim = r and ss_training_comment
// "split from DyLoRA, rank R to r; <comment>". kohya writes the hashes of each split into the
// source's metadata after copying it for that split, so every file but the first carries the
// previous split's sshs_* hashes (the first the source's); the files here carry the same values.
#include "app/tools/tools.h"

#include "app/tools/kohya_files.h"
#include "app/tools/tool_args.h"
#include "core/error.h"
#include "sumi/io/torch_checkpoint.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <iostream>

namespace fs = std::filesystem;

namespace sumi::app::tools {

namespace {

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// The file's tensors as they are stored (kohya's load_file keeps dtypes), sorted by name.
StateDict read_as_stored(const std::string& path) {
  if (!fs::exists(path)) throw host::UserError("--model '" + path + "' does not exist");
  if (fs::is_directory(path)) throw host::UserError("--model '" + path + "' is a folder; expected a DyLoRA .safetensors file");
  StateDict sd;
  sd.path = path;
  try {
    std::string ext = fs::path(path).extension().string();
    for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (ext == ".safetensors") {
      auto file = io::SafetensorsFile::open(path);
      sd.metadata = file->metadata();
      for (const auto& info : file->tensors()) sd.tensors[info.name] = io::load_tensor(file, info);
    } else {
      for (auto& [k, t] : io::load_torch_checkpoint(path)) sd.tensors[k] = t;
    }
  } catch (const host::UserError&) {
    throw;
  } catch (const std::exception& e) {
    throw host::UserError("--model '" + path + "' cannot be read: " + e.what());
  }
  return sd;
}

}  // namespace

int cmd_extract_lora_from_dylora(const std::vector<std::string>& argv) {
  ToolArgs args("extract_lora_from_dylora",
                "Plain LoRA files of ranks unit, 2*unit, ... cut from a DyLoRA file (kohya networks/extract_lora_from_dylora.py).");
  args.value("unit", "size of the rank steps to split into (the DyLoRA's unit or a multiple of it)")
      .value("save_to", "base name of the files to write: <stem>-<rank>.safetensors, one per rank below the full rank")
      .value("model", "the DyLoRA file to split (.safetensors; .ckpt/.pt read without metadata)");
  if (!args.parse(argv)) return 0;

  const std::string model = args.required("model");
  const std::string save_to = args.required("save_to");
  if (!args.given("unit")) args.fail("--unit is required: the rank step of the files to write (e.g. the DyLoRA's unit, from its ss_network_args)");
  const int64_t unit = args.integer("unit");
  if (unit < 1) args.fail("--unit must be at least 1 (got " + std::to_string(unit) + ")");
  const fs::path base(save_to);
  const std::string stem = (base.parent_path() / base.stem()).string();
  const std::string ext = base.extension().string();

  std::cout << "loading Model..." << std::endl;
  StateDict sd = read_as_stored(model);
  std::cout << "Splitting Model..." << std::endl;
  int64_t max_rank = 0;
  for (const auto& [k, t] : sd.tensors)
    if (contains(k, "lora_down")) max_rank = std::max<int64_t>(max_rank, t.dim() > 0 ? t.size(0) : 0);
  std::cout << "Max rank: " << max_rank << std::endl;
  if (max_rank == 0)
    throw host::UserError("--model '" + model + "' has no lora_down tensors; it is not a DyLoRA (kohya LoRA-format) file");
  if (unit >= max_rank)
    args.fail("--unit " + std::to_string(unit) + " leaves no rank below the file's rank " + std::to_string(max_rank) +
              "; the files written are ranks unit, 2*unit, ... < " + std::to_string(max_rank));

  std::vector<std::string> outputs;
  for (int64_t r = unit; r < max_rank; r += unit) {
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, "-%04lld", static_cast<long long>(r));
    outputs.push_back(stem + suffix + ext);
    check_output(outputs.back(), {model}, "--save_to");
  }

  Metadata running = sd.metadata;  // kohya's `metadata`, which each split's hashes overwrite
  const std::string comment = sd.metadata.count("ss_training_comment") ? sd.metadata.at("ss_training_comment") : "";
  size_t i = 0;
  for (int64_t r = unit; r < max_rank; r += unit, ++i) {
    std::cout << "Splitting rank " << r << std::endl;
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& [k, t] : sd.tensors) {
      if (contains(k, "lora_down")) tensors.emplace_back(k, t.slice(0, 0, r).contiguous());
      else if (contains(k, "lora_up")) tensors.emplace_back(k, t.slice(1, 0, r).contiguous());
      else tensors.emplace_back(k, t);
    }
    Metadata meta = running;
    meta["ss_training_comment"] = "split from DyLoRA, rank " + std::to_string(max_rank) + " to " + std::to_string(r) + "; " + comment;
    meta["ss_network_dim"] = std::to_string(r);
    const Hashes h = kohya_hashes(tensors, running);
    running["sshs_model_hash"] = h.model_hash;
    running["sshs_legacy_hash"] = h.legacy_hash;
    std::cout << "saving model to: " << outputs[i] << std::endl;
    write_kohya(outputs[i], std::move(tensors), meta);
  }
  return 0;
}

}  // namespace sumi::app::tools
