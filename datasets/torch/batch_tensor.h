// Batch assembly into ATen tensors (target sumi_datasets_torch, the only part of the dataset
// layer that uses libtorch): bucket-sized images stacked as the VAE encoder's input, and the
// SDXL size conditioning of each sample. Include <ATen/ATen.h> in the .cpp that calls these.
#pragma once

#include <vector>

#include "sumi/datasets/image.h"

namespace at {
class Tensor;
}

namespace sumi::datasets {

// [N, 3, H, W] float32 in [-1, 1] (kohya's ToTensor + Normalize(0.5, 0.5)). All images must
// have the same size (one bucket); throws std::invalid_argument naming the odd one.
at::Tensor images_to_tensor(const std::vector<const Image*>& images);

// SDXL micro-conditioning per sample, int64 [N, 2] each, (height, width) / (top, left) as
// kohya passes them: original size, crop top-left (from kohya's get_crop_ltrb), target size.
struct SdxlSizes {
  at::Tensor* original_hw;
  at::Tensor* crop_top_left;
  at::Tensor* target_hw;
};
void sdxl_size_conditioning(const std::vector<const TrainingImage*>& samples, const SdxlSizes& out);

}  // namespace sumi::datasets
