// Gradient checkpointing: run a block without keeping its activations and recompute them during
// backward, trading compute for memory (what diffusers' enable_gradient_checkpointing does).
// Gradients reach every leaf the block uses, including adapter (LoRA) parameters reached through
// its layers' hooks, also when no activation entering the block requires grad (frozen base model
// with trainable adapters inside).
// Internal to sumi_sd_nn.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

namespace torch::nn {
class Module;
}

namespace sumi::nn {

using CheckpointBody = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;

// `body(inputs)` with activations recomputed in backward. The autocast state at the call is
// restored for the recomputation. Call only when grad mode is on.
at::Tensor checkpointed(const torch::nn::Module& owner, CheckpointBody body,
                        std::vector<at::Tensor> inputs);

}  // namespace sumi::nn
