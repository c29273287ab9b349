// The host function table: every function a plugin may call. Each one catches everything
// (guarded) so no exception crosses into plugin code; failures land in the last error.
#include "host_api.h"

#include "error.h"
#include "op_bridge.h"
#include "progress.h"
#include "registry.h"
#include "tensor_handle.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstring>

struct sumi_autograd_ctx_s {
  torch::autograd::AutogradContext* ctx = nullptr;
  std::vector<at::Tensor> to_save;   // filled during forward
  std::vector<at::Tensor> saved;     // unpacked during backward
  bool unpacked = false;
};

namespace sumi::host {

// ---------------------------------------------------------------- dtype / device codes
at::ScalarType to_scalar_type(sumi_dtype d) {
  switch (d.code) {
    case SUMI_DTYPE_CODE_FLOAT:
      if (d.bits == 32) return at::kFloat;
      if (d.bits == 16) return at::kHalf;
      if (d.bits == 64) return at::kDouble;
      break;
    case SUMI_DTYPE_CODE_BFLOAT:
      if (d.bits == 16) return at::kBFloat16;
      break;
    case SUMI_DTYPE_CODE_INT:
      if (d.bits == 64) return at::kLong;
      if (d.bits == 32) return at::kInt;
      if (d.bits == 16) return at::kShort;
      if (d.bits == 8) return at::kChar;
      break;
    case SUMI_DTYPE_CODE_UINT:
      if (d.bits == 8) return at::kByte;
      break;
    case SUMI_DTYPE_CODE_BOOL:
      return at::kBool;
  }
  throw UserError("unsupported DLPack dtype code " + std::to_string(d.code) + " with " + std::to_string(d.bits) +
                  " bits");
}

sumi_dtype from_scalar_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return {SUMI_DTYPE_CODE_FLOAT, 32, 1};
    case at::kHalf: return {SUMI_DTYPE_CODE_FLOAT, 16, 1};
    case at::kDouble: return {SUMI_DTYPE_CODE_FLOAT, 64, 1};
    case at::kBFloat16: return {SUMI_DTYPE_CODE_BFLOAT, 16, 1};
    case at::kLong: return {SUMI_DTYPE_CODE_INT, 64, 1};
    case at::kInt: return {SUMI_DTYPE_CODE_INT, 32, 1};
    case at::kShort: return {SUMI_DTYPE_CODE_INT, 16, 1};
    case at::kChar: return {SUMI_DTYPE_CODE_INT, 8, 1};
    case at::kByte: return {SUMI_DTYPE_CODE_UINT, 8, 1};
    case at::kBool: return {SUMI_DTYPE_CODE_BOOL, 8, 1};
    default: throw UserError(std::string("dtype ") + c10::toString(t) + " has no sumi ABI code");
  }
}

at::Device to_device(sumi_device d) {
  if (d.device_type == SUMI_DEVICE_CPU) return at::Device(at::kCPU);
  if (d.device_type == SUMI_DEVICE_CUDA) return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(d.device_id));
  throw UserError("unsupported DLPack device type " + std::to_string(d.device_type));
}

sumi_device from_device(const at::Device& d) {
  if (d.is_cuda()) return {SUMI_DEVICE_CUDA, d.index() < 0 ? 0 : d.index()};
  return {SUMI_DEVICE_CPU, 0};
}

const at::Tensor& unwrap(sumi_tensor t) {
  if (!t) throw UserError("NULL tensor handle");
  return t->tensor;
}

void release_handle(sumi_tensor t) {
  if (t && t->refs.fetch_sub(1) == 1) delete t;
}

namespace {

// ---------------------------------------------------------------- tensors
void tensor_retain(sumi_tensor t) {
  if (t) t->refs.fetch_add(1);
}
int64_t tensor_ndim(sumi_tensor t) { return t ? t->tensor.dim() : 0; }
int64_t tensor_shape(sumi_tensor t, int64_t* out, int64_t max_dims) {
  if (!t) return 0;
  const auto s = t->tensor.sizes();
  for (int64_t i = 0; i < static_cast<int64_t>(s.size()) && i < max_dims; ++i) out[i] = s[static_cast<size_t>(i)];
  return static_cast<int64_t>(s.size());
}
sumi_dtype tensor_dtype(sumi_tensor t) {
  try {
    return from_scalar_type(unwrap(t).scalar_type());
  } catch (...) {
    return {0, 0, 0};
  }
}
sumi_device tensor_device(sumi_tensor t) { return t ? from_device(t->tensor.device()) : sumi_device{0, 0}; }
int32_t tensor_requires_grad(sumi_tensor t) { return t && t->tensor.requires_grad() ? 1 : 0; }
sumi_status tensor_grad(sumi_tensor t, sumi_tensor* out) {
  return guarded([&] {
    const auto& g = unwrap(t).grad();
    *out = g.defined() ? make_handle(g) : nullptr;
  });
}
sumi_status tensor_from_data(const void* data, sumi_dtype dtype, const int64_t* shape, int64_t ndim, sumi_tensor* out) {
  return guarded([&] {
    if (ndim < 0 || (ndim > 0 && !shape)) throw UserError("tensor_from_data: bad shape");
    std::vector<int64_t> sizes(shape, shape + ndim);
    auto t = at::empty(sizes, at::TensorOptions().dtype(to_scalar_type(dtype)));
    if (t.numel() > 0) {
      if (!data) throw UserError("tensor_from_data: NULL data for a non-empty tensor");
      std::memcpy(t.data_ptr(), data, t.nbytes());
    }
    *out = make_handle(std::move(t));
  });
}
sumi_status tensor_copy_to(sumi_tensor t, sumi_dtype dtype, void* dst, size_t nbytes) {
  return guarded([&] {
    auto c = unwrap(t).detach().to(at::kCPU, to_scalar_type(dtype)).contiguous();
    if (c.nbytes() != nbytes) {
      throw UserError("tensor_copy_to: tensor needs " + std::to_string(c.nbytes()) + " bytes, buffer has " +
                      std::to_string(nbytes));
    }
    if (nbytes) std::memcpy(dst, c.data_ptr(), nbytes);
  });
}
sumi_status tensor_item(sumi_tensor t, double* out) {
  return guarded([&] {
    const auto& x = unwrap(t);
    if (x.numel() != 1) throw UserError("tensor_item: tensor has " + std::to_string(x.numel()) + " elements, not 1");
    *out = x.item<double>();
  });
}

// ---------------------------------------------------------------- errors
const char* last_error_c() { return last_error().c_str(); }
sumi_status set_error_c(sumi_status code, const char* message) {
  set_last_error(message ? message : "");
  return code;
}

// ---------------------------------------------------------------- grad mode / autocast
int32_t grad_mode_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }
void grad_mode_set(int32_t enabled) { at::GradMode::set_enabled(enabled != 0); }

void autocast_get(int32_t device_type, int32_t* enabled, sumi_dtype* dtype) {
  if (device_type == SUMI_DEVICE_CUDA) {
    *enabled = at::autocast::is_enabled() ? 1 : 0;
    *dtype = from_scalar_type(at::autocast::get_autocast_gpu_dtype());
  } else {
    *enabled = at::autocast::is_cpu_enabled() ? 1 : 0;
    *dtype = from_scalar_type(at::autocast::get_autocast_cpu_dtype());
  }
}
void autocast_set(int32_t device_type, int32_t enabled, sumi_dtype dtype) {
  try {
    const auto st = to_scalar_type(dtype);
    if (device_type == SUMI_DEVICE_CUDA) {
      at::autocast::set_enabled(enabled != 0);
      at::autocast::set_autocast_gpu_dtype(st);
    } else {
      at::autocast::set_cpu_enabled(enabled != 0);
      at::autocast::set_autocast_cpu_dtype(st);
    }
  } catch (const std::exception& e) {
    set_last_error(e.what());
  }
}

// ---------------------------------------------------------------- custom autograd
struct PluginFunction : public torch::autograd::Function<PluginFunction> {
  // Inputs arrive as a TensorList: that is what makes autograd treat each one as a variable.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, int64_t fn_bits,
                                                at::TensorList inputs) {
    const auto* fn = reinterpret_cast<const sumi_autograd_function*>(fn_bits);
    ctx->saved_data["fn"] = fn_bits;
    ctx->saved_data["n_inputs"] = static_cast<int64_t>(inputs.size());
    sumi_autograd_ctx_s c;
    c.ctx = ctx;
    std::vector<sumi_tensor> in;
    for (const auto& t : inputs) in.push_back(make_handle(t));
    std::vector<sumi_tensor> out(16, nullptr);
    int64_t n_out = 0;
    sumi_status s = SUMI_ERR_EXCEPTION;
    try {
      s = fn->forward(fn->user, &c, in.data(), static_cast<int64_t>(in.size()), out.data(), 16, &n_out);
    } catch (...) {
      set_last_error(std::string("plugin autograd function '") + (fn->name ? fn->name : "?") + "' threw in forward");
    }
    for (auto h : in) release_handle(h);
    if (s != SUMI_OK) {
      throw UserError(std::string("autograd function '") + (fn->name ? fn->name : "?") + "' forward failed: " +
                      last_error());
    }
    torch::autograd::variable_list result;
    for (int64_t i = 0; i < n_out; ++i) {
      result.push_back(unwrap(out[static_cast<size_t>(i)]));
      release_handle(out[static_cast<size_t>(i)]);
    }
    ctx->save_for_backward(c.to_save);
    return result;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto* fn = reinterpret_cast<const sumi_autograd_function*>(ctx->saved_data["fn"].toInt());
    const int64_t n_in = ctx->saved_data["n_inputs"].toInt();
    sumi_autograd_ctx_s c;
    c.ctx = ctx;
    c.saved = ctx->get_saved_variables();
    c.unpacked = true;
    std::vector<sumi_tensor> g;
    for (const auto& t : grad_outputs) g.push_back(make_handle(t.defined() ? t : at::Tensor()));
    std::vector<sumi_tensor> gi(static_cast<size_t>(n_in), nullptr);
    sumi_status s = SUMI_ERR_EXCEPTION;
    try {
      s = fn->backward(fn->user, &c, g.data(), static_cast<int64_t>(g.size()), gi.data(), n_in);
    } catch (...) {
      set_last_error(std::string("plugin autograd function '") + (fn->name ? fn->name : "?") + "' threw in backward");
    }
    for (auto h : g) release_handle(h);
    if (s != SUMI_OK) {
      for (auto h : gi) release_handle(h);
      throw UserError(std::string("autograd function '") + (fn->name ? fn->name : "?") + "' backward failed: " +
                      last_error());
    }
    torch::autograd::variable_list result{at::Tensor()};  // for fn_bits
    for (auto h : gi) {
      result.push_back(h ? h->tensor : at::Tensor());
      release_handle(h);
    }
    return result;
  }
};

sumi_status autograd_apply(const sumi_autograd_function* fn, const sumi_tensor* inputs, int64_t n_inputs,
                           sumi_tensor* outputs, int64_t max_outputs, int64_t* n_outputs) {
  return guarded([&] {
    if (!fn || fn->struct_size < sizeof(sumi_autograd_function) || !fn->forward || !fn->backward)
      throw UserError("autograd_apply: incomplete sumi_autograd_function");
    torch::autograd::variable_list in;
    for (int64_t i = 0; i < n_inputs; ++i) in.push_back(unwrap(inputs[i]));
    auto out = PluginFunction::apply(reinterpret_cast<int64_t>(fn), at::TensorList(in));
    if (static_cast<int64_t>(out.size()) > max_outputs) throw UserError("autograd_apply: more outputs than room");
    for (size_t i = 0; i < out.size(); ++i) outputs[i] = make_handle(out[i]);
    *n_outputs = static_cast<int64_t>(out.size());
  });
}
sumi_status autograd_save(sumi_autograd_ctx* ctx, const sumi_tensor* tensors, int64_t n) {
  return guarded([&] {
    if (!ctx || ctx->unpacked) throw UserError("autograd_save: only valid inside forward");
    for (int64_t i = 0; i < n; ++i) ctx->to_save.push_back(unwrap(tensors[i]));
  });
}
sumi_status autograd_saved(sumi_autograd_ctx* ctx, int64_t index, sumi_tensor* out) {
  return guarded([&] {
    if (!ctx || !ctx->unpacked) throw UserError("autograd_saved: only valid inside backward");
    if (index < 0 || index >= static_cast<int64_t>(ctx->saved.size()))
      throw UserError("autograd_saved: index " + std::to_string(index) + " out of " + std::to_string(ctx->saved.size()));
    *out = make_handle(ctx->saved[static_cast<size_t>(index)]);
  });
}

// ---------------------------------------------------------------- configuration
const ConfigValue& config_value(const sumi_context* ctx, const char* key, int32_t type) {
  if (!ctx || !key) throw UserError("config: NULL context or key");
  auto it = ctx->config.find(key);
  if (it == ctx->config.end())
    throw UserError("config key '" + std::string(key) + "' is not in the schema of component '" + ctx->component + "'");
  const bool numeric_ok = type == SUMI_PARAM_DOUBLE && it->second.type == SUMI_PARAM_INT;
  if (it->second.type != type && !numeric_ok)
    throw UserError("config key '" + std::string(key) + "' of '" + ctx->component + "' has another type");
  return it->second;
}
sumi_status config_int(const sumi_context* ctx, const char* key, int64_t* out) {
  return guarded([&] { *out = config_value(ctx, key, SUMI_PARAM_INT).i; });
}
sumi_status config_double(const sumi_context* ctx, const char* key, double* out) {
  return guarded([&] {
    const auto& v = config_value(ctx, key, SUMI_PARAM_DOUBLE);
    *out = v.type == SUMI_PARAM_INT ? static_cast<double>(v.i) : v.d;
  });
}
sumi_status config_bool(const sumi_context* ctx, const char* key, int32_t* out) {
  return guarded([&] { *out = config_value(ctx, key, SUMI_PARAM_BOOL).b ? 1 : 0; });
}
sumi_status config_string(const sumi_context* ctx, const char* key, const char** out) {
  return guarded([&] { *out = config_value(ctx, key, SUMI_PARAM_STRING).s.c_str(); });
}
sumi_status config_double_list(const sumi_context* ctx, const char* key, const double** data, int64_t* size) {
  return guarded([&] {
    const auto& v = config_value(ctx, key, SUMI_PARAM_DOUBLE_LIST);
    *data = v.doubles.data();
    *size = static_cast<int64_t>(v.doubles.size());
  });
}
sumi_status config_int_list(const sumi_context* ctx, const char* key, const int64_t** data, int64_t* size) {
  return guarded([&] {
    const auto& v = config_value(ctx, key, SUMI_PARAM_INT_LIST);
    *data = v.ints.data();
    *size = static_cast<int64_t>(v.ints.size());
  });
}

// ---------------------------------------------------------------- registry
Registry& registry_of(sumi_context* ctx) {
  if (!ctx || !ctx->registry) throw UserError("registry: component context has no registry");
  return *ctx->registry;
}
sumi_status param_create(sumi_context* ctx, const char* name, sumi_tensor init, const char* group, sumi_tensor* out) {
  return guarded([&] {
    if (!name) throw UserError("param_create: NULL name");
    *out = make_handle(registry_of(ctx).add(ctx->component, name, unwrap(init), group ? group : "", true));
  });
}
sumi_status state_create(sumi_context* ctx, const char* name, sumi_tensor init, sumi_tensor* out) {
  return guarded([&] {
    if (!name) throw UserError("state_create: NULL name");
    *out = make_handle(registry_of(ctx).add(ctx->component, name, unwrap(init), "", false));
  });
}
sumi_status state_find(sumi_context* ctx, const char* name, sumi_tensor* out) {
  try {
    const auto* e = registry_of(ctx).find(ctx->component, name ? name : "");
    if (!e) {
      set_last_error("no state '" + std::string(name ? name : "") + "' in component '" + ctx->component + "'");
      return SUMI_ERR_NOT_FOUND;
    }
    *out = make_handle(e->tensor);
    return SUMI_OK;
  } catch (const std::exception& e) {
    set_last_error(e.what());
    return SUMI_ERR_RUNTIME;
  }
}

sumi_status param_group_lr_scale(sumi_context* ctx, const char* group, double scale) {
  return guarded([&] {
    if (!(scale >= 0) || !std::isfinite(scale))
      throw UserError("param_group_lr_scale: the scale of group '" + std::string(group ? group : "") + "' of '" + ctx->component +
                      "' must be a finite number >= 0, got " + std::to_string(scale));
    registry_of(ctx).set_lr_scale(ctx->component, group ? group : "", scale);
  });
}

sumi_status device_c(const sumi_context* ctx, sumi_device* out) {
  return guarded([&] {
    if (!ctx || !out) throw UserError("device: null context or output");
    const c10::Device& d = ctx->registry->device();
    out->device_type = d.is_cuda() ? SUMI_DEVICE_CUDA : SUMI_DEVICE_CPU;
    out->device_id = d.has_index() ? d.index() : 0;
  });
}

// ---------------------------------------------------------------- native tier
void* native_tensor(sumi_tensor t) { return t ? static_cast<void*>(&t->tensor) : nullptr; }
sumi_tensor native_wrap(const void* at_tensor) {
  return at_tensor ? make_handle(*static_cast<const at::Tensor*>(at_tensor)) : nullptr;
}

void log_c(int32_t level, const char* component, const char* message) { log(level, component, message); }

sumi_host_api make_table() {
  sumi_host_api t{};
  t.struct_size = sizeof(sumi_host_api);
  t.abi_major = SUMI_ABI_MAJOR;
  t.abi_minor = SUMI_ABI_MINOR;
  t.last_error = &last_error_c;
  t.set_error = &set_error_c;
  t.log = &log_c;
  t.progress_begin = &progress_begin;
  t.progress_update = &progress_update;
  t.progress_end = &progress_end;
  t.tensor_retain = &tensor_retain;
  t.tensor_release = &release_handle;
  t.tensor_ndim = &tensor_ndim;
  t.tensor_shape = &tensor_shape;
  t.tensor_dtype = &tensor_dtype;
  t.tensor_device = &tensor_device;
  t.tensor_requires_grad = &tensor_requires_grad;
  t.tensor_grad = &tensor_grad;
  t.tensor_from_data = &tensor_from_data;
  t.tensor_copy_to = &tensor_copy_to;
  t.tensor_item = &tensor_item;
  t.op_find = &op_find;
  t.op_call = &op_call;
  t.values_release = &values_release;
  t.grad_mode_enabled = &grad_mode_enabled;
  t.grad_mode_set = &grad_mode_set;
  t.autocast_get = &autocast_get;
  t.autocast_set = &autocast_set;
  t.autograd_apply = &autograd_apply;
  t.autograd_save = &autograd_save;
  t.autograd_saved = &autograd_saved;
  t.config_int = &config_int;
  t.config_double = &config_double;
  t.config_bool = &config_bool;
  t.config_string = &config_string;
  t.config_double_list = &config_double_list;
  t.config_int_list = &config_int_list;
  t.param_create = &param_create;
  t.state_create = &state_create;
  t.state_find = &state_find;
  t.native_tensor = &native_tensor;
  t.native_wrap = &native_wrap;
  t.param_group_lr_scale = &param_group_lr_scale;
  t.device = &device_c;
  return t;
}

}  // namespace

const sumi_host_api* host_api() {
  static const sumi_host_api table = make_table();
  return &table;
}

}  // namespace sumi::host
