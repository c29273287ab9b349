// Building blocks shared by the SD networks: thin torch::nn::Module wrappers around ATen ops.
// They exist so that parameter names come out exactly as diffusers names them
// (`weight`, `bias`, numbered children) and so that every op goes through the dispatcher,
// which keeps autocast (bf16/fp16) working. Internal to sumi_sd_nn.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace sumi::nn {

// An adapter hook (LoRA at run time): when set, a Linear / Conv2d returns
// adapter(input, frozen_output) instead of the frozen output. Set and cleared by model plugins.
using LayerAdapter = std::function<at::Tensor(const at::Tensor& input, const at::Tensor& base_output)>;

struct Linear : torch::nn::Module {
  Linear(int64_t in, int64_t out, bool bias = true);
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor weight, bias;
  LayerAdapter adapter;
};

struct Conv2d : torch::nn::Module {
  Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t padding = 0);
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor weight, bias;
  int64_t stride, padding;
  LayerAdapter adapter;
};

struct GroupNorm : torch::nn::Module {
  GroupNorm(int64_t groups, int64_t channels, double eps);
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor weight, bias;
  int64_t groups;
  double eps;
};

struct LayerNorm : torch::nn::Module {
  LayerNorm(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor weight, bias;
  double eps;
};

struct Embedding : torch::nn::Module {
  Embedding(int64_t count, int64_t dim);
  at::Tensor forward(const at::Tensor& ids) const;
  at::Tensor weight;
};

// Numbered children ("resnets.0", "resnets.1", ...) with typed access.
template <class T>
struct List : torch::nn::Module {
  std::shared_ptr<T> add(std::shared_ptr<T> m) {
    register_module(std::to_string(items.size()), m);
    items.push_back(m);
    return m;
  }
  size_t size() const { return items.size(); }
  T& operator[](size_t i) const { return *items[i]; }
  std::vector<std::shared_ptr<T>> items;
};

// bf16 models on the CPU: every Conv2d weight under `root` stored channels-last once (Conv2d
// convolves bf16 channels-last; the values do not change, only their layout).
void convs_to_channels_last(torch::nn::Module& root);

// Activations by the names the configs use ("silu", "gelu", "quick_gelu", "gelu_tanh").
at::Tensor activation(const std::string& name, const at::Tensor& x);

}  // namespace sumi::nn
