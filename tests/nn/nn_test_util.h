// Shared helpers for the network tests: fixture paths, safetensors as name -> tensor maps (F32),
// the relative error the fixtures' README specifies, and models loaded from diffusers folders.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "nn/weights.h"

namespace sumi::nn::test {

std::string fixture(const std::string& rel);  // tests/data/fixtures/<rel>
TensorMap load_f32(const std::string& path);
// Goldens of one tiny model, loaded once.
const TensorMap& golden(const std::string& model);
const at::Tensor& golden(const std::string& model, const std::string& key);
// ||got - want|| / ||want||
double rel_err(const at::Tensor& got, const at::Tensor& want);

}  // namespace sumi::nn::test
