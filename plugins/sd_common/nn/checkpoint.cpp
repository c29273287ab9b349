#include "checkpoint.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/module.h>

#include <stdexcept>

#include <sumi/torch_compat.hpp>
#include "layers.h"

namespace sumi::nn {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Body : torch::CustomClassHolder {
  CheckpointBody fn;
  bool cpu_autocast = false, cuda_autocast = false;
  c10::ScalarType cpu_dtype = at::kBFloat16, cuda_dtype = at::kHalf;
};

// Backward recomputes the body with grad on and back-propagates through it into every leaf it
// used — the block's own parameters, and also tensors the block cannot list: an adapter's
// parameters reached through a Linear/Conv2d hook live in the host registry (PyTorch's reentrant
// checkpoint works the same way). Only the inputs' gradients are returned to the outer graph.
struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  // `trigger`: an empty tensor that requires grad when something trainable is inside, so that the
  // output requires grad (and backward runs) even when no input does (frozen base + adapters).
  static at::Tensor forward(AutogradContext* ctx, c10::intrusive_ptr<Body> body, at::TensorList inputs,
                            at::Tensor trigger) {
    ctx->save_for_backward(inputs.vec());
    ctx->saved_data["body"] = c10::IValue::make_capsule(body);
    return body->fn(inputs.vec());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto body = c10::static_intrusive_pointer_cast<Body>(ctx->saved_data["body"].toCapsule());
    std::vector<at::Tensor> inputs;
    for (const auto& t : ctx->get_saved_variables()) {
      auto d = t.detach();
      d.requires_grad_(t.requires_grad());
      inputs.push_back(d);
    }
    variable_list result(1 + inputs.size() + 1);  // body, inputs..., trigger
    if (!grad_outputs[0].defined()) return result;
    at::Tensor out;
    {
      at::AutoGradMode grad_on(true);
      torch_compat::AutocastGuard cpu(c10::DeviceType::CPU, body->cpu_dtype, body->cpu_autocast);
      torch_compat::AutocastGuard cuda(c10::DeviceType::CUDA, body->cuda_dtype, body->cuda_autocast);
      out = body->fn(inputs);
    }
    if (!out.requires_grad()) return result;
    torch::autograd::backward({out}, {grad_outputs[0]}, /*retain_graph=*/false, /*create_graph=*/false);
    for (size_t i = 0; i < inputs.size(); ++i)
      if (inputs[i].requires_grad()) result[1 + i] = inputs[i].grad();
    return result;
  }
};

// Whether running `owner` can produce something that requires grad besides its inputs: a
// trainable parameter of its own, or an adapter hook on one of its layers.
bool has_trainable_inside(const torch::nn::Module& owner) {
  for (const auto& p : owner.parameters(true))
    if (p.requires_grad()) return true;
  for (const auto& m : owner.modules(/*include_self=*/false)) {
    if (const auto* l = dynamic_cast<const Linear*>(m.get()); l && l->adapter) return true;
    if (const auto* c = dynamic_cast<const Conv2d*>(m.get()); c && c->adapter) return true;
  }
  return false;
}

}  // namespace

at::Tensor checkpointed(const torch::nn::Module& owner, CheckpointBody fn, std::vector<at::Tensor> inputs) {
  auto body = c10::make_intrusive<Body>();
  body->fn = std::move(fn);
  body->cpu_autocast = torch_compat::autocast_enabled(c10::DeviceType::CPU);
  body->cpu_dtype = torch_compat::autocast_dtype(c10::DeviceType::CPU);
  body->cuda_autocast = torch_compat::autocast_enabled(c10::DeviceType::CUDA);
  body->cuda_dtype = torch_compat::autocast_dtype(c10::DeviceType::CUDA);
  at::Tensor trigger = at::empty({0}, inputs.empty() ? at::TensorOptions() : at::TensorOptions().device(inputs[0].device()));
  if (has_trainable_inside(owner)) trigger.requires_grad_(true);
  return CheckpointFunction::apply(body, at::TensorList(inputs), trigger);
}

}  // namespace sumi::nn
