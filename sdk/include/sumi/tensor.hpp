// sumi/tensor.hpp — the header-only C++17 skin over the C ABI for plugin authors.
//
// Gives a RAII `sumi::Tensor` over host-owned handles, operators and named ops that run ATen
// kernels inside the host (so autograd, autocast and devices work), guards for grad mode and
// autocast, and custom autograd functions. Needs no libtorch. Errors from the host surface as
// `sumi::Error` exceptions on the plugin side only; the export glue in sumi/plugin.hpp turns
// them back into status codes at the boundary.
//
//   sumi::Tensor y = sumi::ops::linear(x, w) * scale + b;
#ifndef SUMI_TENSOR_HPP
#define SUMI_TENSOR_HPP

#include <sumi/sumi.h>

#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// sumi_dtype is a C struct in the global namespace; compare it there so lookup finds it.
inline bool operator==(sumi_dtype a, sumi_dtype b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}
inline bool operator!=(sumi_dtype a, sumi_dtype b) { return !(a == b); }

namespace sumi {

namespace detail {
// The host table of this plugin library. Set once by the entry point; hidden visibility keeps
// one copy per library.
inline const sumi_host_api* g_host = nullptr;
}  // namespace detail

inline const sumi_host_api& api() { return *detail::g_host; }

// A failed host call or a plugin-side error. `code` travels back across the boundary.
class Error : public std::runtime_error {
 public:
  Error(sumi_status code, const std::string& message) : std::runtime_error(message), code_(code) {}
  sumi_status code() const { return code_; }

 private:
  sumi_status code_;
};

inline void check(sumi_status status) {
  if (status != SUMI_OK) throw Error(status, api().last_error());
}

namespace dtype {
constexpr sumi_dtype f32{SUMI_DTYPE_CODE_FLOAT, 32, 1};
constexpr sumi_dtype f64{SUMI_DTYPE_CODE_FLOAT, 64, 1};
constexpr sumi_dtype f16{SUMI_DTYPE_CODE_FLOAT, 16, 1};
constexpr sumi_dtype bf16{SUMI_DTYPE_CODE_BFLOAT, 16, 1};
constexpr sumi_dtype i64{SUMI_DTYPE_CODE_INT, 64, 1};
constexpr sumi_dtype i32{SUMI_DTYPE_CODE_INT, 32, 1};
constexpr sumi_dtype u8{SUMI_DTYPE_CODE_UINT, 8, 1};
constexpr sumi_dtype boolean{SUMI_DTYPE_CODE_BOOL, 8, 1};
}  // namespace dtype

// A counted reference to a host tensor.
class Tensor {
 public:
  Tensor() = default;
  // Takes ownership of a new reference.
  static Tensor adopt(sumi_tensor h) { return Tensor(h); }
  // Adds a reference to a borrowed handle.
  static Tensor borrow(sumi_tensor h) {
    if (h) api().tensor_retain(h);
    return Tensor(h);
  }
  Tensor(const Tensor& o) : h_(o.h_) {
    if (h_) api().tensor_retain(h_);
  }
  Tensor(Tensor&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  Tensor& operator=(Tensor o) noexcept {
    std::swap(h_, o.h_);
    return *this;
  }
  ~Tensor() {
    if (h_) api().tensor_release(h_);
  }

  bool defined() const { return h_ != nullptr; }
  sumi_tensor get() const { return h_; }
  // Gives up ownership (for returning a new reference across the boundary).
  sumi_tensor release() { return std::exchange(h_, nullptr); }

  int64_t dim() const { return api().tensor_ndim(h_); }
  std::vector<int64_t> sizes() const {
    std::vector<int64_t> s(static_cast<size_t>(dim()));
    api().tensor_shape(h_, s.data(), static_cast<int64_t>(s.size()));
    return s;
  }
  int64_t size(int64_t d) const {
    auto s = sizes();
    if (d < 0) d += static_cast<int64_t>(s.size());
    return s.at(static_cast<size_t>(d));
  }
  int64_t numel() const {
    int64_t n = 1;
    for (auto v : sizes()) n *= v;
    return n;
  }
  sumi_dtype dtype() const { return api().tensor_dtype(h_); }
  sumi_device device() const { return api().tensor_device(h_); }
  bool requires_grad() const { return api().tensor_requires_grad(h_) != 0; }
  Tensor grad() const {
    sumi_tensor g = nullptr;
    check(api().tensor_grad(h_, &g));
    return Tensor(g);
  }
  double item() const {
    double v = 0;
    check(api().tensor_item(h_, &v));
    return v;
  }
  // Copy out as a flat vector (converted to float64 / float32).
  std::vector<double> to_vector() const {
    std::vector<double> v(static_cast<size_t>(numel()));
    check(api().tensor_copy_to(h_, dtype::f64, v.data(), v.size() * sizeof(double)));
    return v;
  }
  std::vector<float> to_float_vector() const {
    std::vector<float> v(static_cast<size_t>(numel()));
    check(api().tensor_copy_to(h_, dtype::f32, v.data(), v.size() * sizeof(float)));
    return v;
  }
  static Tensor from_data(const std::vector<float>& data, const std::vector<int64_t>& shape) {
    sumi_tensor out = nullptr;
    check(api().tensor_from_data(data.data(), dtype::f32, shape.data(),
                                  static_cast<int64_t>(shape.size()), &out));
    return Tensor(out);
  }
  static Tensor from_data(const std::vector<double>& data, const std::vector<int64_t>& shape) {
    sumi_tensor out = nullptr;
    check(api().tensor_from_data(data.data(), dtype::f64, shape.data(),
                                  static_cast<int64_t>(shape.size()), &out));
    return Tensor(out);
  }

 private:
  explicit Tensor(sumi_tensor h) : h_(h) {}
  sumi_tensor h_ = nullptr;
};

// None for optional op arguments.
struct None {};
constexpr None none{};

// One boxed op argument. Owns the storage of list arguments for the duration of the call.
class Arg {
 public:
  Arg(None) { v_.tag = SUMI_VALUE_NONE; }
  Arg(const Tensor& t) {
    if (t.defined()) {
      v_.tag = SUMI_VALUE_TENSOR;
      v_.u.tensor = t.get();
    } else {
      v_.tag = SUMI_VALUE_NONE;
    }
  }
  Arg(int v) : Arg(static_cast<int64_t>(v)) {}
  Arg(int64_t v) {
    v_.tag = SUMI_VALUE_INT;
    v_.u.i = v;
  }
  Arg(double v) {
    v_.tag = SUMI_VALUE_DOUBLE;
    v_.u.d = v;
  }
  Arg(bool v) {
    v_.tag = SUMI_VALUE_BOOL;
    v_.u.b = v ? 1 : 0;
  }
  Arg(const char* s) {
    v_.tag = SUMI_VALUE_STRING;
    v_.u.str = s;
  }
  Arg(sumi_dtype d) {
    v_.tag = SUMI_VALUE_DTYPE;
    v_.u.dtype = d;
  }
  Arg(sumi_device d) {
    v_.tag = SUMI_VALUE_DEVICE;
    v_.u.device = d;
  }
  Arg(std::vector<int64_t> v) : ints_(std::move(v)) {
    v_.tag = SUMI_VALUE_INT_LIST;
    v_.u.ints.data = ints_.data();
    v_.u.ints.size = static_cast<int64_t>(ints_.size());
  }
  Arg(std::initializer_list<int64_t> v) : Arg(std::vector<int64_t>(v)) {}
  Arg(const std::vector<Tensor>& ts) {
    for (const auto& t : ts) handles_.push_back(t.get());
    v_.tag = SUMI_VALUE_TENSOR_LIST;
    v_.u.tensors.data = handles_.data();
    v_.u.tensors.size = static_cast<int64_t>(handles_.size());
  }
  Arg(const Arg& o) : v_(o.v_), ints_(o.ints_), handles_(o.handles_) { fix(); }
  const sumi_value& value() const { return v_; }

 private:
  void fix() {
    if (v_.tag == SUMI_VALUE_INT_LIST) v_.u.ints.data = ints_.data();
    if (v_.tag == SUMI_VALUE_TENSOR_LIST) v_.u.tensors.data = handles_.data();
  }
  sumi_value v_{};
  std::vector<int64_t> ints_;
  std::vector<sumi_tensor> handles_;
};

// A resolved ATen operator. Resolve once (e.g. a function-local static), call many times.
class Op {
 public:
  Op(const char* name, const char* overload = "") { check(api().op_find(name, overload, &op_)); }

  // All results, tensor lists flattened in order.
  std::vector<Tensor> call_all(std::initializer_list<Arg> args) const {
    std::vector<sumi_value> in;
    in.reserve(args.size());
    for (const auto& a : args) in.push_back(a.value());
    sumi_value out[8];
    int64_t n = 0;
    check(api().op_call(op_, in.data(), static_cast<int64_t>(in.size()), out, 8, &n));
    std::vector<Tensor> result;
    for (int64_t i = 0; i < n; ++i) {
      if (out[i].tag == SUMI_VALUE_TENSOR) {
        result.push_back(Tensor::adopt(out[i].u.tensor));
        out[i].tag = SUMI_VALUE_NONE;
      } else if (out[i].tag == SUMI_VALUE_TENSOR_LIST) {
        for (int64_t k = 0; k < out[i].u.tensors.size; ++k)
          result.push_back(Tensor::borrow(out[i].u.tensors.data[k]));
      }
    }
    api().values_release(out, n);
    return result;
  }
  // The first tensor result.
  Tensor operator()(std::initializer_list<Arg> args) const {
    auto r = call_all(args);
    if (r.empty()) throw Error(SUMI_ERR_RUNTIME, "op returned no tensor");
    return r.front();
  }

 private:
  sumi_op op_ = nullptr;
};

// Named ops: thin wrappers that resolve their operator once.
#define SUMI_OP_(name, overload)                 \
  [] () -> const ::sumi::Op& {                   \
    static const ::sumi::Op op_(name, overload); \
    return op_;                                  \
  }()

namespace ops {
inline Tensor add(const Tensor& a, const Tensor& b, double alpha = 1.0) {
  return SUMI_OP_("aten::add", "Tensor")({a, b, alpha});
}
inline Tensor add(const Tensor& a, double b) { return SUMI_OP_("aten::add", "Scalar")({a, b, 1.0}); }
inline Tensor sub(const Tensor& a, const Tensor& b) { return SUMI_OP_("aten::sub", "Tensor")({a, b, 1.0}); }
inline Tensor sub(const Tensor& a, double b) { return SUMI_OP_("aten::sub", "Scalar")({a, b, 1.0}); }
inline Tensor rsub(const Tensor& a, double b) { return SUMI_OP_("aten::rsub", "Scalar")({a, b, 1.0}); }
inline Tensor mul(const Tensor& a, const Tensor& b) { return SUMI_OP_("aten::mul", "Tensor")({a, b}); }
inline Tensor mul(const Tensor& a, double b) { return SUMI_OP_("aten::mul", "Scalar")({a, b}); }
inline Tensor div(const Tensor& a, const Tensor& b) { return SUMI_OP_("aten::div", "Tensor")({a, b}); }
inline Tensor div(const Tensor& a, double b) { return SUMI_OP_("aten::div", "Scalar")({a, b}); }
inline Tensor neg(const Tensor& a) { return SUMI_OP_("aten::neg", "")({a}); }
inline Tensor matmul(const Tensor& a, const Tensor& b) { return SUMI_OP_("aten::matmul", "")({a, b}); }
inline Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor()) {
  return SUMI_OP_("aten::linear", "")({x, w, b});
}
inline Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b = Tensor(),
                     std::vector<int64_t> stride = {1, 1}, std::vector<int64_t> padding = {0, 0},
                     std::vector<int64_t> dilation = {1, 1}, int64_t groups = 1) {
  return SUMI_OP_("aten::conv2d", "")({x, w, b, std::move(stride), std::move(padding),
                                       std::move(dilation), groups});
}
inline Tensor softmax(const Tensor& x, int64_t dim) {
  return SUMI_OP_("aten::softmax", "int")({x, dim, none});
}
inline Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& w = Tensor(),
                         const Tensor& b = Tensor(), double eps = 1e-5) {
  return SUMI_OP_("aten::group_norm", "")({x, groups, w, b, eps});
}
inline Tensor layer_norm(const Tensor& x, std::vector<int64_t> shape, const Tensor& w = Tensor(),
                         const Tensor& b = Tensor(), double eps = 1e-5) {
  return SUMI_OP_("aten::layer_norm", "")({x, std::move(shape), w, b, eps});
}
inline Tensor reshape(const Tensor& x, std::vector<int64_t> shape) {
  return SUMI_OP_("aten::reshape", "")({x, std::move(shape)});
}
inline Tensor permute(const Tensor& x, std::vector<int64_t> dims) {
  return SUMI_OP_("aten::permute", "")({x, std::move(dims)});
}
inline Tensor transpose(const Tensor& x, int64_t a, int64_t b) {
  return SUMI_OP_("aten::transpose", "int")({x, a, b});
}
inline Tensor flatten(const Tensor& x, int64_t start = 0, int64_t end = -1) {
  return SUMI_OP_("aten::flatten", "using_ints")({x, start, end});
}
inline Tensor cat(const std::vector<Tensor>& xs, int64_t dim = 0) {
  return SUMI_OP_("aten::cat", "")({xs, dim});
}
inline Tensor sum(const Tensor& x) { return SUMI_OP_("aten::sum", "")({x, none}); }
inline Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim = false) {
  return SUMI_OP_("aten::sum", "dim_IntList")({x, std::move(dims), keepdim, none});
}
inline Tensor mean(const Tensor& x) { return SUMI_OP_("aten::mean", "")({x, none}); }
inline Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim = false) {
  return SUMI_OP_("aten::mean", "dim")({x, std::move(dims), keepdim, none});
}
inline Tensor pow(const Tensor& x, double e) { return SUMI_OP_("aten::pow", "Tensor_Scalar")({x, e}); }
inline Tensor sqrt(const Tensor& x) { return SUMI_OP_("aten::sqrt", "")({x}); }
inline Tensor exp(const Tensor& x) { return SUMI_OP_("aten::exp", "")({x}); }
inline Tensor log(const Tensor& x) { return SUMI_OP_("aten::log", "")({x}); }
inline Tensor abs(const Tensor& x) { return SUMI_OP_("aten::abs", "")({x}); }
inline Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  return SUMI_OP_("aten::where", "self")({cond, a, b});
}
inline Tensor gt(const Tensor& a, double b) { return SUMI_OP_("aten::gt", "Scalar")({a, b}); }
inline Tensor lt(const Tensor& a, double b) { return SUMI_OP_("aten::lt", "Scalar")({a, b}); }
inline Tensor clamp(const Tensor& x, double lo, double hi) {
  return SUMI_OP_("aten::clamp", "")({x, lo, hi});
}
inline Tensor maximum(const Tensor& a, const Tensor& b) { return SUMI_OP_("aten::maximum", "")({a, b}); }
inline Tensor tanh(const Tensor& x) { return SUMI_OP_("aten::tanh", "")({x}); }
inline Tensor sigmoid(const Tensor& x) { return SUMI_OP_("aten::sigmoid", "")({x}); }
inline Tensor silu(const Tensor& x) { return SUMI_OP_("aten::silu", "")({x}); }
inline Tensor gelu(const Tensor& x) { return SUMI_OP_("aten::gelu", "")({x, "none"}); }
inline Tensor dropout(const Tensor& x, double p, bool train) {
  return SUMI_OP_("aten::dropout", "")({x, p, train});
}
inline Tensor zeros_like(const Tensor& x) {
  return SUMI_OP_("aten::zeros_like", "")({x, none, none, none, none, none});
}
inline Tensor ones_like(const Tensor& x) {
  return SUMI_OP_("aten::ones_like", "")({x, none, none, none, none, none});
}
inline Tensor zeros(std::vector<int64_t> shape, sumi_dtype dt = dtype::f32) {
  return SUMI_OP_("aten::zeros", "")({std::move(shape), dt, none, none, none});
}
inline Tensor randn_like(const Tensor& x) {
  return SUMI_OP_("aten::randn_like", "")({x, none, none, none, none, none});
}
inline Tensor to(const Tensor& x, sumi_dtype dt) {
  return SUMI_OP_("aten::to", "dtype")({x, dt, false, false, none});
}
inline Tensor contiguous(const Tensor& x) { return SUMI_OP_("aten::contiguous", "")({x}); }
inline Tensor detach(const Tensor& x) { return SUMI_OP_("aten::detach", "")({x}); }
inline Tensor clone(const Tensor& x) { return SUMI_OP_("aten::clone", "")({x, none}); }
inline Tensor norm(const Tensor& x) { return SUMI_OP_("aten::norm", "Scalar")({x, 2.0}); }
// In-place updates (optimizers use these under NoGradGuard).
inline void mul_(const Tensor& x, double s) { SUMI_OP_("aten::mul_", "Scalar")({x, s}); }
inline void mul_(const Tensor& x, const Tensor& s) { SUMI_OP_("aten::mul_", "Tensor")({x, s}); }
inline void add_(const Tensor& x, const Tensor& y, double alpha = 1.0) {
  SUMI_OP_("aten::add_", "Tensor")({x, y, alpha});
}
inline void addcmul_(const Tensor& x, const Tensor& a, const Tensor& b, double value = 1.0) {
  SUMI_OP_("aten::addcmul_", "")({x, a, b, value});
}
inline void addcdiv_(const Tensor& x, const Tensor& a, const Tensor& b, double value = 1.0) {
  SUMI_OP_("aten::addcdiv_", "")({x, a, b, value});
}
inline void lerp_(const Tensor& x, const Tensor& end, double weight) {
  SUMI_OP_("aten::lerp_", "Scalar")({x, end, weight});
}
inline void copy_(const Tensor& dst, const Tensor& src) { SUMI_OP_("aten::copy_", "")({dst, src, false}); }
inline void zero_(const Tensor& x) { SUMI_OP_("aten::zero_", "")({x}); }
inline void fill_(const Tensor& x, double v) { SUMI_OP_("aten::fill_", "Scalar")({x, v}); }
// Draws U[lo, hi) into x from the host's generator (torch's nn.init.uniform_).
inline void uniform_(const Tensor& x, double lo, double hi) { SUMI_OP_("aten::uniform_", "")({x, lo, hi}); }
// `x` on the device of `like`, its dtype kept (a copy only when the devices differ).
inline Tensor to_device_of(const Tensor& x, const Tensor& like) {
  return SUMI_OP_("aten::to", "device")({x, like.device(), x.dtype(), false, false, none});
}
// Zeros of `shape` (float32) on the device of `like`; on the CPU when `like` is undefined.
inline Tensor zeros_on(const Tensor& like, std::vector<int64_t> shape) {
  if (!like.defined()) return zeros(std::move(shape));
  return SUMI_OP_("aten::new_zeros", "")({like, std::move(shape), dtype::f32});
}
}  // namespace ops

// "[2, 3]": a shape for messages.
inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

inline Tensor operator+(const Tensor& a, const Tensor& b) { return ops::add(a, b); }
inline Tensor operator+(const Tensor& a, double b) { return ops::add(a, b); }
inline Tensor operator+(double a, const Tensor& b) { return ops::add(b, a); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return ops::sub(a, b); }
inline Tensor operator-(const Tensor& a, double b) { return ops::sub(a, b); }
inline Tensor operator-(double a, const Tensor& b) { return ops::rsub(b, a); }
inline Tensor operator-(const Tensor& a) { return ops::neg(a); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return ops::mul(a, b); }
inline Tensor operator*(const Tensor& a, double b) { return ops::mul(a, b); }
inline Tensor operator*(double a, const Tensor& b) { return ops::mul(b, a); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return ops::div(a, b); }
inline Tensor operator/(const Tensor& a, double b) { return ops::div(a, b); }

// Thread-local grad mode, restored on scope exit.
class NoGradGuard {
 public:
  NoGradGuard() : prev_(api().grad_mode_enabled()) { api().grad_mode_set(0); }
  ~NoGradGuard() { api().grad_mode_set(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  int32_t prev_;
};

// Thread-local autocast for one device type, restored on scope exit.
class AutocastGuard {
 public:
  AutocastGuard(int32_t device_type, bool enabled, sumi_dtype dt = dtype::bf16) : device_(device_type) {
    api().autocast_get(device_, &prev_enabled_, &prev_dtype_);
    api().autocast_set(device_, enabled ? 1 : 0, dt);
  }
  ~AutocastGuard() { api().autocast_set(device_, prev_enabled_, prev_dtype_); }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  int32_t device_;
  int32_t prev_enabled_ = 0;
  sumi_dtype prev_dtype_{};
};

// Custom autograd: derive `struct F : sumi::Function<F>` with
//   static std::vector<Tensor> forward(sumi::AutogradContext&, const std::vector<Tensor>&);
//   static std::vector<Tensor> backward(sumi::AutogradContext&, const std::vector<Tensor>& grads);
// (backward returns one gradient per input; an undefined Tensor means none) and call F::apply.
class AutogradContext {
 public:
  explicit AutogradContext(sumi_autograd_ctx* c) : c_(c) {}
  void save_for_backward(const std::vector<Tensor>& ts) {
    std::vector<sumi_tensor> hs;
    for (const auto& t : ts) hs.push_back(t.get());
    check(api().autograd_save(c_, hs.data(), static_cast<int64_t>(hs.size())));
  }
  Tensor saved(int64_t i) const {
    sumi_tensor t = nullptr;
    check(api().autograd_saved(c_, i, &t));
    return Tensor::adopt(t);
  }

 private:
  sumi_autograd_ctx* c_;
};

namespace detail {
// Runs `f`, turning exceptions into a status and the host's last error. Every plugin-side
// boundary function goes through this.
template <class F>
sumi_status guarded(F&& f) noexcept {
  try {
    f();
    return SUMI_OK;
  } catch (const Error& e) {
    return api().set_error(e.code(), e.what());
  } catch (const std::exception& e) {
    return api().set_error(SUMI_ERR_EXCEPTION, e.what());
  } catch (...) {
    return api().set_error(SUMI_ERR_EXCEPTION, "unknown C++ exception in plugin");
  }
}
}  // namespace detail

template <class Derived>
class Function {
 public:
  static std::vector<Tensor> apply(const std::vector<Tensor>& inputs) {
    static const sumi_autograd_function fn = {sizeof(sumi_autograd_function), Derived::name(),
                                              nullptr, &forward_c, &backward_c};
    std::vector<sumi_tensor> in;
    for (const auto& t : inputs) in.push_back(t.get());
    sumi_tensor out[16];
    int64_t n = 0;
    check(api().autograd_apply(&fn, in.data(), static_cast<int64_t>(in.size()), out, 16, &n));
    std::vector<Tensor> result;
    for (int64_t i = 0; i < n; ++i) result.push_back(Tensor::adopt(out[i]));
    return result;
  }

 private:
  static sumi_status forward_c(void*, sumi_autograd_ctx* c, const sumi_tensor* inputs, int64_t n_in,
                               sumi_tensor* outputs, int64_t max_out, int64_t* n_out) {
    return detail::guarded([&] {
      std::vector<Tensor> in;
      for (int64_t i = 0; i < n_in; ++i) in.push_back(Tensor::borrow(inputs[i]));
      AutogradContext ctx(c);
      auto out = Derived::forward(ctx, in);
      if (static_cast<int64_t>(out.size()) > max_out) throw Error(SUMI_ERR_INVALID_ARGUMENT, "too many outputs");
      for (size_t i = 0; i < out.size(); ++i) outputs[i] = out[i].release();
      *n_out = static_cast<int64_t>(out.size());
    });
  }
  static sumi_status backward_c(void*, sumi_autograd_ctx* c, const sumi_tensor* grads, int64_t n_grads,
                                sumi_tensor* grad_inputs, int64_t n_in) {
    return detail::guarded([&] {
      std::vector<Tensor> g;
      for (int64_t i = 0; i < n_grads; ++i) g.push_back(Tensor::borrow(grads[i]));
      AutogradContext ctx(c);
      auto gi = Derived::backward(ctx, g);
      for (int64_t i = 0; i < n_in; ++i)
        grad_inputs[i] = i < static_cast<int64_t>(gi.size()) ? gi[static_cast<size_t>(i)].release() : nullptr;
    });
  }
};

}  // namespace sumi

#endif  // SUMI_TENSOR_HPP
