// The attention compat layer against a direct softmax(QK^T / sqrt(d)) V, including the chunked
// query path and the causal mask.
#include <doctest/doctest.h>

#include <cmath>

#include "nn/attention_compat.h"
#include "nn_test_util.h"

using namespace sumi::nn;
using namespace sumi::nn::test;

namespace {
at::Tensor reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  auto s = at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(-1, -2)) / std::sqrt(double(q.size(-1)));
  if (causal) {
    auto mask = at::ones({q.size(2), k.size(2)}, at::kBool).triu(1);
    s = s.masked_fill(mask, -INFINITY);
  }
  return at::matmul(at::softmax(s, -1), v.to(at::kDouble)).to(at::kFloat);
}
}  // namespace

TEST_CASE("attention: matches softmax(QK^T/sqrt(d))V, plain, causal and upcast") {
  auto q = at::randn({2, 3, 17, 8}), k = at::randn({2, 3, 11, 8}), v = at::randn({2, 3, 11, 8});
  CHECK(rel_err(scaled_dot_product_attention(q, k, v), reference(q, k, v, false)) < 1e-5);
  auto kc = at::randn({2, 3, 17, 8}), vc = at::randn({2, 3, 17, 8});
  AttentionOptions causal;
  causal.causal = true;
  CHECK(rel_err(scaled_dot_product_attention(q, kc, vc, causal), reference(q, kc, vc, true)) < 1e-5);
  AttentionOptions up;
  up.upcast = true;
  auto out = scaled_dot_product_attention(q.to(at::kBFloat16), k.to(at::kBFloat16), v.to(at::kBFloat16), up);
  CHECK((out.scalar_type() == at::kBFloat16));
  CHECK(rel_err(out, reference(q, k, v, false)) < 2e-2);
}

TEST_CASE("attention: a query length beyond one chunk gives the same result") {
  // 2 * 1 * L * L elements > kAttentionChunkElements for L = 4200 (the chunked path on 1.x).
  const int64_t l = 4200;
  auto q = at::randn({1, 2, l, 4}), k = at::randn({1, 2, l, 4}), v = at::randn({1, 2, l, 4});
  auto out = scaled_dot_product_attention(q, k, v);
  auto rows = at::arange(0, l, 997);
  auto want = reference(q.index_select(2, rows), k, v, false);
  CHECK(rel_err(out.index_select(2, rows), want) < 1e-5);
}

TEST_CASE("attention: a smaller chunk (the model's mem_eff_attn option) computes the same rows") {
  auto q = at::randn({2, 3, 300, 8}), k = at::randn({2, 3, 120, 8}), v = at::randn({2, 3, 120, 8});
  AttentionOptions whole, small;
  small.chunk_elements = 2 * 3 * 120 * 7;  // 7 query rows per chunk: 43 chunks
  const auto a = scaled_dot_product_attention(q, k, v, whole), b = scaled_dot_product_attention(q, k, v, small);
  CHECK(rel_err(b, a) < 1e-6);
  CHECK(rel_err(b, reference(q, k, v, false)) < 1e-5);
}

TEST_CASE("attention: bf16 training gradients (probabilities recomputed in backward) match float64 autograd") {
  // The reduced-precision training path for large score matrices (here 2*4*2048*1024 = 2^24
  // elements, the threshold) keeps only q, k, v and recomputes the probabilities chunk
  // by chunk in backward. Its gradients are compared with float64 autograd through the plain
  // formula; the bound is what bf16 autograd through that same formula reaches on these inputs
  // (measured here, so it follows the CPU's kernels), with a small margin.
  at::manual_seed(7);
  const auto q0 = at::randn({2, 4, 2048, 16}), k0 = at::randn({2, 4, 1024, 16}), v0 = at::randn({2, 4, 1024, 16});
  const auto w = at::randn({2, 4, 2048, 16});  // loss = sum(out * w)
  auto grads = [&](at::ScalarType dt, bool plain, const AttentionOptions& opt) {
    auto q = q0.to(dt).requires_grad_(), k = k0.to(dt).requires_grad_(), v = v0.to(dt).requires_grad_();
    at::Tensor out;
    if (plain) {
      const auto s = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(16.0);
      out = at::matmul(at::softmax(s, -1), v);
    } else {
      out = scaled_dot_product_attention(q, k, v, opt);
    }
    (out.to(at::kDouble) * w.to(at::kDouble)).sum().backward();
    return std::vector<at::Tensor>{out.detach(), q.grad(), k.grad(), v.grad()};
  };
  const auto want = grads(at::kDouble, true, {});
  const auto bf16_plain = grads(at::kBFloat16, true, {});
  AttentionOptions chunked;
  chunked.chunk_elements = 2 * 4 * 1024 * 600;  // 600 query rows per chunk: 4 chunks, the last partial
  for (const AttentionOptions& opt : {AttentionOptions{}, chunked}) {
    const auto got = grads(at::kBFloat16, false, opt);
    for (size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i);
      CHECK((got[i].scalar_type() == at::kBFloat16));
      const double bound = 2.0 * rel_err(bf16_plain[i], want[i]) + 1e-3;
      CHECK(rel_err(got[i], want[i]) < bound);
    }
  }
  // Only q trainable (a LoRA on to_q alone): the same dq, no gradient asked of k or v.
  auto q = q0.to(at::kBFloat16).requires_grad_();
  (scaled_dot_product_attention(q, k0.to(at::kBFloat16), v0.to(at::kBFloat16), chunked).to(at::kDouble) *
   w.to(at::kDouble)).sum().backward();
  CHECK(rel_err(q.grad(), want[1]) < 2.0 * rel_err(bf16_plain[1], want[1]) + 1e-3);
}

TEST_CASE("attention: bf16 inference in cache-sized blocks per head matches float64 within bf16 autograd-free rounding") {
  // 2 x 4 heads x 1000 x 600 = 4.8M score elements and more: the blocked path (512-row blocks:
  // 512 + 488 rows per head, then 2600 rows over 1500 keys: 699-row cap 512, five blocks + a tail).
  at::manual_seed(11);
  for (const auto& [lq, lk] : {std::pair<int64_t, int64_t>{1000, 600}, {2600, 1500}}) {
    CAPTURE(lq);
    const auto q = at::randn({2, 4, lq, 32}), k = at::randn({2, 4, lk, 32}), v = at::randn({2, 4, lk, 32});
    const auto want = reference(q, k, v, false);
    const auto qb = q.to(at::kBFloat16), kb = k.to(at::kBFloat16), vb = v.to(at::kBFloat16);
    // The bound: the plain bf16 formula's own error on these inputs, with a margin.
    const auto plain = at::matmul(at::softmax(at::matmul(qb, kb.transpose(-1, -2)) / std::sqrt(32.0), -1), vb);
    const auto got = scaled_dot_product_attention(qb, kb, vb);
    CHECK((got.scalar_type() == at::kBFloat16));
    CHECK(rel_err(got, want) < 2.0 * rel_err(plain, want) + 1e-3);
  }
}

TEST_CASE("attention: rejects tensors that are not [B, H, L, D]") {
  CHECK_THROWS_AS(scaled_dot_product_attention(at::zeros({2, 3, 4}), at::zeros({2, 3, 4}), at::zeros({2, 3, 4})),
                  std::invalid_argument);
}
