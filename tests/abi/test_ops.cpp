// Op parity: ops called through the C ABI (via the C++ skin, as a plugin would) equal direct
// ATen calls, forward and gradients.
#include <doctest/doctest.h>

#include "core/host_api.h"
#include "core/tensor_handle.h"

#include <sumi/tensor.hpp>

#include <ATen/ATen.h>

namespace {

struct Bind {
  Bind() { sumi::detail::g_host = sumi::host::host_api(); }
};
const Bind bind_once;

sumi::Tensor wrap(const at::Tensor& t) { return sumi::Tensor::adopt(sumi::host::make_handle(t)); }
const at::Tensor& raw(const sumi::Tensor& t) { return sumi::host::unwrap(t.get()); }

at::Tensor leaf(std::vector<int64_t> shape, int seed) {
  at::manual_seed(seed);
  return at::randn(shape, at::kDouble).requires_grad_(true);
}

// Compares out = f_abi(inputs) with ref = f_aten(inputs) and the gradients of sum(out * w).
template <class FA, class FB>
void check_parity(const std::vector<at::Tensor>& inputs, FA f_abi, FB f_aten) {
  std::vector<at::Tensor> a_in, b_in;
  for (const auto& t : inputs) {
    a_in.push_back(t.detach().clone().requires_grad_(t.requires_grad()));
    b_in.push_back(t.detach().clone().requires_grad_(t.requires_grad()));
  }
  std::vector<sumi::Tensor> wrapped;
  for (const auto& t : a_in) wrapped.push_back(wrap(t));
  at::Tensor out_a = raw(f_abi(wrapped));
  at::Tensor out_b = f_aten(b_in);
  REQUIRE((out_a.sizes() == out_b.sizes()));
  CHECK(at::allclose(out_a, out_b, 1e-12, 1e-12));
  if (!out_b.requires_grad()) return;
  at::manual_seed(99);
  at::Tensor w = at::randn(out_b.sizes(), at::kDouble);
  (out_a * w).sum().backward();
  (out_b * w).sum().backward();
  for (size_t i = 0; i < a_in.size(); ++i) {
    if (!b_in[i].requires_grad()) continue;
    REQUIRE(a_in[i].grad().defined());
    CHECK(at::allclose(a_in[i].grad(), b_in[i].grad(), 1e-12, 1e-12));
  }
}

}  // namespace

TEST_CASE("op parity: arithmetic, matmul, linear") {
  using namespace sumi;
  auto a = leaf({3, 4}, 1), b = leaf({3, 4}, 2), w = leaf({5, 4}, 3), bias = leaf({5}, 4);
  check_parity({a, b}, [](auto& x) { return x[0] + x[1]; }, [](auto& x) { return x[0] + x[1]; });
  check_parity({a, b}, [](auto& x) { return x[0] - x[1] * 2.0; }, [](auto& x) { return x[0] - x[1] * 2.0; });
  check_parity({a, b}, [](auto& x) { return x[0] * x[1]; }, [](auto& x) { return x[0] * x[1]; });
  check_parity({a, b}, [](auto& x) { return x[0] / (ops::abs(x[1]) + 1.0); },
               [](auto& x) { return x[0] / (x[1].abs() + 1.0); });
  check_parity({a, w}, [](auto& x) { return ops::matmul(x[0], ops::transpose(x[1], 0, 1)); },
               [](auto& x) { return at::matmul(x[0], x[1].t()); });
  check_parity({a, w, bias}, [](auto& x) { return ops::linear(x[0], x[1], x[2]); },
               [](auto& x) { return at::linear(x[0], x[1], x[2]); });
  check_parity({a}, [](auto& x) { return 1.0 - x[0]; }, [](auto& x) { return 1.0 - x[0]; });
  check_parity({a}, [](auto& x) { return -x[0]; }, [](auto& x) { return -x[0]; });
}

TEST_CASE("op parity: conv2d, norms, softmax") {
  using namespace sumi;
  auto x = leaf({2, 4, 6, 6}, 5), w = leaf({8, 4, 3, 3}, 6), b = leaf({8}, 7);
  check_parity({x, w, b}, [](auto& t) { return ops::conv2d(t[0], t[1], t[2], {1, 1}, {1, 1}); },
               [](auto& t) { return at::conv2d(t[0], t[1], t[2], at::IntArrayRef{1, 1}, at::IntArrayRef{1, 1}); });
  check_parity({x, w}, [](auto& t) { return ops::conv2d(t[0], t[1], Tensor(), {2, 2}, {0, 0}); },
               [](auto& t) { return at::conv2d(t[0], t[1], at::Tensor(), at::IntArrayRef{2, 2}, at::IntArrayRef{0, 0}); });
  auto gw = leaf({4}, 8), gb = leaf({4}, 9);
  check_parity({x, gw, gb}, [](auto& t) { return ops::group_norm(t[0], 2, t[1], t[2], 1e-6); },
               [](auto& t) { return at::group_norm(t[0], 2, t[1], t[2], 1e-6); });
  auto y = leaf({3, 5, 6}, 10), lw = leaf({6}, 11), lb = leaf({6}, 12);
  check_parity({y, lw, lb}, [](auto& t) { return ops::layer_norm(t[0], {6}, t[1], t[2]); },
               [](auto& t) { return at::layer_norm(t[0], {6}, t[1], t[2]); });
  check_parity({y}, [](auto& t) { return ops::softmax(t[0], -1); }, [](auto& t) { return at::softmax(t[0], -1); });
}

TEST_CASE("op parity: shapes, reductions, elementwise") {
  using namespace sumi;
  auto a = leaf({2, 3, 4}, 13), b = leaf({2, 3, 4}, 14);
  check_parity({a}, [](auto& t) { return ops::reshape(t[0], {6, 4}); }, [](auto& t) { return t[0].reshape({6, 4}); });
  check_parity({a}, [](auto& t) { return ops::permute(t[0], {2, 0, 1}); }, [](auto& t) { return t[0].permute({2, 0, 1}); });
  check_parity({a, b}, [](auto& t) { return ops::cat({t[0], t[1]}, 1); }, [](auto& t) { return at::cat({t[0], t[1]}, 1); });
  check_parity({a}, [](auto& t) { return ops::sum(t[0]); }, [](auto& t) { return t[0].sum(); });
  check_parity({a}, [](auto& t) { return ops::sum(t[0], {1}, true); }, [](auto& t) { return t[0].sum({1}, true); });
  check_parity({a}, [](auto& t) { return ops::mean(t[0]); }, [](auto& t) { return t[0].mean(); });
  check_parity({a}, [](auto& t) { return ops::mean(t[0], {0, 2}); }, [](auto& t) { return t[0].mean(std::vector<int64_t>{0, 2}); });
  check_parity({a}, [](auto& t) { return ops::pow(t[0], 3.0); }, [](auto& t) { return t[0].pow(3.0); });
  check_parity({a}, [](auto& t) { return ops::sqrt(ops::abs(t[0]) + 0.5); },
               [](auto& t) { return (t[0].abs() + 0.5).sqrt(); });
  check_parity({a, b}, [](auto& t) { return ops::where(ops::gt(t[0], 0.0), t[0], t[1]); },
               [](auto& t) { return at::where(t[0] > 0.0, t[0], t[1]); });
  check_parity({a}, [](auto& t) { return ops::exp(ops::tanh(t[0])); }, [](auto& t) { return t[0].tanh().exp(); });
  check_parity({a}, [](auto& t) { return ops::silu(t[0]) + ops::gelu(t[0]) + ops::sigmoid(t[0]); },
               [](auto& t) { return at::silu(t[0]) + at::gelu(t[0]) + at::sigmoid(t[0]); });
  check_parity({a}, [](auto& t) { return ops::flatten(t[0], 1); }, [](auto& t) { return t[0].flatten(1); });
}

namespace {
// x * scale with a hand-written backward, through the host's custom-autograd hook.
struct ScaleBy3 : sumi::Function<ScaleBy3> {
  static const char* name() { return "scale_by_3"; }
  static std::vector<sumi::Tensor> forward(sumi::AutogradContext& ctx, const std::vector<sumi::Tensor>& in) {
    ctx.save_for_backward({in[0]});
    return {in[0] * 3.0};
  }
  static std::vector<sumi::Tensor> backward(sumi::AutogradContext& ctx, const std::vector<sumi::Tensor>& g) {
    auto x = ctx.saved(0);
    CHECK(x.dim() == 2);
    return {g[0] * 3.0};
  }
};
}  // namespace

TEST_CASE("custom autograd function registered through the host") {
  auto x = leaf({2, 3}, 20);
  auto y = ScaleBy3::apply({wrap(x)});
  REQUIRE(y.size() == 1);
  at::Tensor out = raw(y[0]);
  CHECK(out.requires_grad());
  (out * out).sum().backward();
  CHECK(at::allclose(x.grad(), 18.0 * x.detach()));
}

TEST_CASE("grad mode and autocast guards are thread-local and restored") {
  CHECK(at::GradMode::is_enabled());
  {
    sumi::NoGradGuard g;
    CHECK_FALSE(at::GradMode::is_enabled());
    auto x = leaf({2}, 1);
    CHECK_FALSE(raw(wrap(x) * 2.0).requires_grad());
  }
  CHECK(at::GradMode::is_enabled());
  {
    sumi::AutocastGuard ac(SUMI_DEVICE_CPU, true, sumi::dtype::bf16);
    at::Tensor a = at::randn({4, 4}), b = at::randn({4, 4});
    CHECK((raw(sumi::ops::matmul(wrap(a), wrap(b))).scalar_type() == at::kBFloat16));
  }
  at::Tensor a = at::randn({4, 4});
  CHECK((raw(sumi::ops::matmul(wrap(a), wrap(a))).scalar_type() == at::kFloat));
}

TEST_CASE("op errors come back as exceptions with the op and argument named") {
  auto a = wrap(at::randn({2, 3}));
  auto b = wrap(at::randn({4, 5}));
  CHECK_THROWS_WITH_AS(sumi::ops::matmul(a, b), doctest::Contains("mat1 and mat2"), sumi::Error);
  CHECK_THROWS_WITH_AS(sumi::Op("aten::no_such_op"), doctest::Contains("no ATen operator 'aten::no_such_op'"), sumi::Error);
  sumi::Op reshape("aten::reshape");
  CHECK_THROWS_WITH_AS(reshape({a, 1.5}), doctest::Contains("argument 'shape'"), sumi::Error);
}

TEST_CASE("tensor handles: data round trip and reference counts") {
  std::vector<float> data{1, 2, 3, 4, 5, 6};
  auto t = sumi::Tensor::from_data(data, {2, 3});
  CHECK(t.sizes() == std::vector<int64_t>{2, 3});
  CHECK(t.dtype() == sumi::dtype::f32);
  CHECK(t.to_float_vector() == data);
  sumi::Tensor copy = t;
  CHECK(sumi::host::unwrap(t.get()).data_ptr() == sumi::host::unwrap(copy.get()).data_ptr());
  CHECK(t.get()->refs.load() == 2);
  copy = sumi::Tensor();
  CHECK(t.get()->refs.load() == 1);
  CHECK(sumi::ops::sum(t).item() == doctest::Approx(21));
}
