// ATen operators by schema name: resolve through the dispatcher once, then convert boxed
// sumi_values to IValues following the operator's schema and call it boxed, so autograd,
// autocast and device dispatch apply exactly as for a direct call.
#include "op_bridge.h"

#include "error.h"
#include "tensor_handle.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <map>
#include <mutex>

struct sumi_op_s {
  explicit sumi_op_s(c10::OperatorHandle h, std::string n) : handle(std::move(h)), name(std::move(n)) {}
  c10::OperatorHandle handle;
  std::string name;
};

namespace sumi::host {

namespace {

std::string tag_name(int32_t tag) {
  static const char* names[] = {"None",   "Tensor", "int",      "float", "bool",  "int[]",
                                "float[]", "Tensor[]", "str", "dtype", "device", "bool[]"};
  return tag >= 0 && tag <= SUMI_VALUE_BOOL_LIST ? names[tag] : "tag " + std::to_string(tag);
}

c10::IValue to_ivalue(const sumi_value& v, const c10::Argument& arg, const std::string& op) {
  c10::TypePtr type = arg.type();
  if (type->kind() == c10::TypeKind::OptionalType) {
    if (v.tag == SUMI_VALUE_NONE) return c10::IValue();
    type = type->castRaw<c10::OptionalType>()->getElementType();
  }
  auto fail = [&](const std::string& why) -> c10::IValue {
    throw UserError(op + ": argument '" + arg.name() + "' expects " + arg.type()->str() + ", got " +
                    tag_name(v.tag) + (why.empty() ? "" : " (" + why + ")"));
  };
  const auto kind = type->kind();
  // Scalars may go where a number is expected; everything else must match the schema's kind,
  // or the dispatcher would assert deep inside the kernel.
  const bool number = kind == c10::TypeKind::IntType || kind == c10::TypeKind::FloatType ||
                      kind == c10::TypeKind::NumberType || kind == c10::TypeKind::BoolType ||
                      kind == c10::TypeKind::SymIntType;
  const bool list = kind == c10::TypeKind::ListType;
  switch (v.tag) {
    case SUMI_VALUE_TENSOR:
      if (kind != c10::TypeKind::TensorType) return fail("");
      break;
    case SUMI_VALUE_INT:
      if (!number && !list) return fail("");
      break;
    case SUMI_VALUE_DOUBLE:
      if (!number) return fail("");
      break;
    case SUMI_VALUE_BOOL:
      if (!number) return fail("");
      break;
    case SUMI_VALUE_INT_LIST:
    case SUMI_VALUE_DOUBLE_LIST:
    case SUMI_VALUE_BOOL_LIST:
    case SUMI_VALUE_TENSOR_LIST:
      if (!list) return fail("");
      break;
    case SUMI_VALUE_STRING:
      if (kind != c10::TypeKind::StringType) return fail("");
      break;
    default:
      break;
  }
  switch (v.tag) {
    case SUMI_VALUE_NONE:
      if (arg.default_value() && arg.default_value()->isNone()) return c10::IValue();
      return fail("None is only allowed for optional arguments");
    case SUMI_VALUE_TENSOR:
      return c10::IValue(unwrap(v.u.tensor));
    case SUMI_VALUE_INT:
      if (kind == c10::TypeKind::FloatType) return c10::IValue(static_cast<double>(v.u.i));
      if (kind == c10::TypeKind::BoolType) return c10::IValue(v.u.i != 0);
      if (kind == c10::TypeKind::ListType) return c10::IValue(std::vector<int64_t>{v.u.i});  // int[1] shorthand
      return c10::IValue(v.u.i);
    case SUMI_VALUE_DOUBLE:
      if (kind == c10::TypeKind::IntType) return fail("a float where an int is required");
      return c10::IValue(v.u.d);
    case SUMI_VALUE_BOOL:
      return c10::IValue(v.u.b != 0);
    case SUMI_VALUE_INT_LIST:
      return c10::IValue(std::vector<int64_t>(v.u.ints.data, v.u.ints.data + v.u.ints.size));
    case SUMI_VALUE_DOUBLE_LIST:
      return c10::IValue(std::vector<double>(v.u.doubles.data, v.u.doubles.data + v.u.doubles.size));
    case SUMI_VALUE_BOOL_LIST: {
      c10::List<bool> l;
      for (int64_t i = 0; i < v.u.bools.size; ++i) l.push_back(v.u.bools.data[i] != 0);
      return c10::IValue(l);
    }
    case SUMI_VALUE_TENSOR_LIST: {
      const bool optional_elems = kind == c10::TypeKind::ListType &&
                                  type->castRaw<c10::ListType>()->getElementType()->kind() ==
                                      c10::TypeKind::OptionalType;
      if (optional_elems) {
        c10::List<c10::optional<at::Tensor>> l;
        for (int64_t i = 0; i < v.u.tensors.size; ++i)
          l.push_back(v.u.tensors.data[i] ? c10::optional<at::Tensor>(unwrap(v.u.tensors.data[i])) : c10::nullopt);
        return c10::IValue(l);
      }
      c10::List<at::Tensor> l;
      for (int64_t i = 0; i < v.u.tensors.size; ++i) l.push_back(unwrap(v.u.tensors.data[i]));
      return c10::IValue(l);
    }
    case SUMI_VALUE_STRING:
      return c10::IValue(std::string(v.u.str ? v.u.str : ""));
    case SUMI_VALUE_DTYPE:
      return c10::IValue(static_cast<int64_t>(to_scalar_type(v.u.dtype)));
    case SUMI_VALUE_DEVICE:
      return c10::IValue(to_device(v.u.device));
    default:
      return fail("unknown value tag");
  }
}

void from_ivalue(const c10::IValue& iv, sumi_value& out, const std::string& op) {
  out = sumi_value{};
  if (iv.isNone()) {
    out.tag = SUMI_VALUE_NONE;
  } else if (iv.isTensor()) {
    out.tag = SUMI_VALUE_TENSOR;
    out.u.tensor = make_handle(iv.toTensor());
  } else if (iv.isTensorList()) {
    auto list = iv.toTensorList();
    auto* arr = new sumi_tensor[list.size()];
    for (size_t i = 0; i < list.size(); ++i) arr[i] = make_handle(list.get(i));
    out.tag = SUMI_VALUE_TENSOR_LIST;
    out.u.tensors.data = arr;
    out.u.tensors.size = static_cast<int64_t>(list.size());
  } else if (iv.isInt()) {
    out.tag = SUMI_VALUE_INT;
    out.u.i = iv.toInt();
  } else if (iv.isDouble()) {
    out.tag = SUMI_VALUE_DOUBLE;
    out.u.d = iv.toDouble();
  } else if (iv.isBool()) {
    out.tag = SUMI_VALUE_BOOL;
    out.u.b = iv.toBool() ? 1 : 0;
  } else {
    throw UserError(op + ": result of type " + iv.tagKind() + " cannot cross the sumi ABI");
  }
}

}  // namespace

sumi_status op_find(const char* name, const char* overload, sumi_op* out) {
  return guarded([&] {
    if (!name || !out) throw UserError("op_find: name and out are required");
    static std::mutex mu;
    static std::map<std::string, sumi_op> cache;  // handles live for the process
    const std::string ovl = overload ? overload : "";
    const std::string key = std::string(name) + "." + ovl;
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) {
      *out = it->second;
      return;
    }
    auto handle = c10::Dispatcher::singleton().findSchema({name, ovl});
    if (!handle) {
      throw UserError("no ATen operator '" + std::string(name) + (ovl.empty() ? "" : "." + ovl) +
                      "' in this libtorch; check the schema name and overload (e.g. aten::add + \"Tensor\")");
    }
    auto* op = new sumi_op_s(*handle, key);
    cache.emplace(key, op);
    *out = op;
  });
}

sumi_status op_call(sumi_op op, const sumi_value* args, int64_t n_args, sumi_value* results, int64_t max_results,
                    int64_t* n_results) {
  return guarded([&] {
    if (!op) throw UserError("op_call: NULL operator");
    const auto& schema = op->handle.schema();
    const auto& formals = schema.arguments();
    if (n_args < 0 || static_cast<size_t>(n_args) > formals.size()) {
      throw UserError(op->name + ": takes " + std::to_string(formals.size()) + " arguments, got " +
                      std::to_string(n_args) + " (schema: " + c10::toString(schema) + ")");
    }
    torch::jit::Stack stack;
    stack.reserve(formals.size());
    for (size_t i = 0; i < formals.size(); ++i) {
      if (i < static_cast<size_t>(n_args)) {
        stack.push_back(to_ivalue(args[i], formals[i], op->name));
      } else if (formals[i].default_value()) {
        stack.push_back(*formals[i].default_value());
      } else {
        throw UserError(op->name + ": argument '" + formals[i].name() + "' (#" + std::to_string(i) +
                        ") has no default and was not given (schema: " + c10::toString(schema) + ")");
      }
    }
    op->handle.callBoxed(stack);
    if (static_cast<int64_t>(stack.size()) > max_results) {
      throw UserError(op->name + ": returns " + std::to_string(stack.size()) + " values but room for " +
                      std::to_string(max_results) + " was given");
    }
    for (size_t i = 0; i < stack.size(); ++i) from_ivalue(stack[i], results[i], op->name);
    if (n_results) *n_results = static_cast<int64_t>(stack.size());
  });
}

void values_release(sumi_value* values, int64_t n) {
  for (int64_t i = 0; values && i < n; ++i) {
    auto& v = values[i];
    if (v.tag == SUMI_VALUE_TENSOR) {
      release_handle(v.u.tensor);
    } else if (v.tag == SUMI_VALUE_TENSOR_LIST) {
      for (int64_t k = 0; k < v.u.tensors.size; ++k) release_handle(v.u.tensors.data[k]);
      delete[] v.u.tensors.data;
    }
    v.tag = SUMI_VALUE_NONE;
  }
}

}  // namespace sumi::host
