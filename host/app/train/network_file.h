// Writing a trained network the way kohya's train_network.py does: the registry entries of the
// network namespace under their own names (kohya keys), in the save precision, with the
// metadata the trainer built (`ss_*`, `modelspec.*`: train_metadata.h) and the `sshs_*` hashes
// that A1111's additional-networks extension and kohya read.
#pragma once

#include "core/registry.h"

#include <map>
#include <string>

namespace sumi::app {

// The bytes kohya hashes: SHA-256 of a safetensors file's data after its header
// (sshs_model_hash), and of 0x10000 bytes at 0x100000 (sshs_legacy_hash, first 8 hex digits).
struct SafetensorsHashes {
  std::string model_hash;
  std::string legacy_hash;
};
SafetensorsHashes safetensors_hashes(const std::string& path);

// Saves `component`'s registry entries (parameters and state) to `path` as `dtype`
// ("float"/"fp32", "fp16", "bf16"). `metadata` gets sshs_model_hash / sshs_legacy_hash added,
// computed as kohya does over the file with only the ss_* keys.
void save_network(const std::string& path, const host::Registry& registry, const std::string& component,
                  const std::string& dtype, std::map<std::string, std::string> metadata);

}  // namespace sumi::app
