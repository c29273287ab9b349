// Textual Inversion embedding files as kohya's sd-scripts and A1111 write and read them: one
// token's vectors, [n, width] per text encoder. SD 1.x / 2.x: `emb_params` in a .safetensors
// file, or A1111's torch.save dict `{"string_to_param": {"*": tensor}, ...}` (.pt / .bin, read by
// the restricted unpickler); SDXL: `clip_l` (text encoder 1) and `clip_g` (text encoder 2).
// The token is the file's stem.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "nn/detect.h"

namespace sumi::sd {

struct EmbeddingFile {
  std::string token;  // the file stem
  at::Tensor rows;    // [n, width] for the (first) text encoder: emb_params / clip_l
  at::Tensor rows2;   // SDXL: [n, width2] for the second text encoder (clip_g); undefined otherwise
};

// Reads the vectors for `family`, checking their widths against the text encoder(s)
// (`width2` for SDXL's second). Throws std::runtime_error naming the file and what is wrong:
// an unreadable or refused file, an embedding of another family, missing or misshapen vectors.
EmbeddingFile read_embedding_file(const std::string& path, nn::ModelFamily family, int64_t width, int64_t width2 = 0);

// Writes `rows` (and `rows2` for SDXL) as a .safetensors embedding file, converting to `dtype`
// (unset: fp32). Refuses another extension, and an existing file unless `overwrite`; the file
// is written to a temporary name and renamed.
void write_embedding_file(const std::string& path, nn::ModelFamily family, const at::Tensor& rows,
                          const at::Tensor& rows2, std::optional<at::ScalarType> dtype, bool overwrite);

}  // namespace sumi::sd
