#include "checkpoint.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/module.h>

#include <stdexcept>

#include "autocast.h"

namespace sumi::nn {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Body : torch::CustomClassHolder {
  CheckpointBody fn;
  std::vector<at::Tensor> params;
  bool cpu_autocast = false, cuda_autocast = false;
  c10::ScalarType cpu_dtype = at::kBFloat16, cuda_dtype = at::kHalf;
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  // Tensors must arrive as TensorList for autograd to see them as inputs.
  static at::Tensor forward(AutogradContext* ctx, c10::intrusive_ptr<Body> body,
                            at::TensorList inputs, at::TensorList params) {
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
    at::Tensor out;
    {
      at::AutoGradMode grad_on(true);
      AutocastGuard cpu(c10::DeviceType::CPU, body->cpu_dtype, body->cpu_autocast);
      AutocastGuard cuda(c10::DeviceType::CUDA, body->cuda_dtype, body->cuda_autocast);
      out = body->fn(inputs);
    }
    std::vector<at::Tensor> wrt;
    std::vector<size_t> slot;  // position in the result for each entry of wrt
    for (size_t i = 0; i < inputs.size(); ++i)
      if (inputs[i].requires_grad()) {
        wrt.push_back(inputs[i]);
        slot.push_back(1 + i);
      }
    for (size_t i = 0; i < body->params.size(); ++i) {
      wrt.push_back(body->params[i]);
      slot.push_back(1 + inputs.size() + i);
    }
    variable_list result(1 + inputs.size() + body->params.size());
    if (wrt.empty() || !out.requires_grad()) return result;
    auto grads = torch::autograd::grad({out}, wrt, {grad_outputs[0]}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t i = 0; i < grads.size(); ++i) result[slot[i]] = grads[i];
    return result;
  }
};

}  // namespace

at::Tensor checkpointed(const torch::nn::Module& owner, CheckpointBody fn,
                        std::vector<at::Tensor> inputs) {
  auto body = c10::make_intrusive<Body>();
  body->fn = std::move(fn);
  for (const auto& p : owner.parameters(true))
    if (p.requires_grad()) body->params.push_back(p);
  body->cpu_autocast = autocast_enabled(c10::DeviceType::CPU);
  body->cpu_dtype = autocast_dtype(c10::DeviceType::CPU);
  body->cuda_autocast = autocast_enabled(c10::DeviceType::CUDA);
  body->cuda_dtype = autocast_dtype(c10::DeviceType::CUDA);
  std::vector<at::Tensor> params = body->params;
  return CheckpointFunction::apply(body, at::TensorList(inputs), at::TensorList(params));
}

}  // namespace sumi::nn
