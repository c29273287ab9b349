// End to end against sd-scripts' own numbers: tiny-sd1's CLIP text encoder (written here in
// ATen, standing in for the model plugin) with the kohya-made LoRA applied through the
// network, at runtime and merged, must give the `lora.te.*` goldens that the reference stack
// computed with the LoRA merged by sd-scripts.
#include <doctest/doctest.h>

#include "lora_test_util.h"

#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"

#include <functional>

using sumi::test::fixture;

namespace {

using Linear = std::function<at::Tensor(const std::string& path, const at::Tensor& x)>;

struct Clip {
  std::map<std::string, at::Tensor> w;
  explicit Clip(const std::string& file) {
    for (auto& [k, t] : sumi::io::load_all(file, at::kFloat)) w[k] = t;
  }
  const at::Tensor& p(const std::string& k) const { return w.at(k); }
  at::Tensor ln(const at::Tensor& x, const std::string& m) const {
    return at::layer_norm(x, {x.size(-1)}, p(m + ".weight"), p(m + ".bias"), 1e-5);
  }
  // Returns {penultimate hidden state, last_hidden_state}; `linear` runs every Linear.
  std::pair<at::Tensor, at::Tensor> run(const at::Tensor& ids, const Linear& linear) const {
    const int64_t b = ids.size(0), n = ids.size(1), c = 32, heads = 4, hd = c / heads;
    at::Tensor h = p("text_model.embeddings.token_embedding.weight").index_select(0, ids.reshape(-1)).view({b, n, c}) +
                   p("text_model.embeddings.position_embedding.weight").narrow(0, 0, n);
    const at::Tensor causal = at::full({n, n}, -INFINITY).triu(1);
    at::Tensor penultimate;
    for (int l = 0; l < 3; ++l) {
      const std::string pre = "text_model.encoder.layers." + std::to_string(l);
      at::Tensor x = ln(h, pre + ".layer_norm1");
      auto split = [&](const at::Tensor& t) { return t.view({b, n, heads, hd}).transpose(1, 2); };
      at::Tensor q = split(linear(pre + ".self_attn.q_proj", x)) * (1.0 / std::sqrt(static_cast<double>(hd)));
      at::Tensor k = split(linear(pre + ".self_attn.k_proj", x)), v = split(linear(pre + ".self_attn.v_proj", x));
      at::Tensor a = at::softmax(q.matmul(k.transpose(-1, -2)) + causal, -1).matmul(v).transpose(1, 2).reshape({b, n, c});
      h = h + linear(pre + ".self_attn.out_proj", a);
      x = linear(pre + ".mlp.fc1", ln(h, pre + ".layer_norm2"));
      h = h + linear(pre + ".mlp.fc2", x * at::sigmoid(1.702 * x));
      if (l == 1) penultimate = h;
    }
    return {penultimate, ln(h, "text_model.final_layer_norm")};
  }
};

double rel(const at::Tensor& got, const at::Tensor& want) {
  return (got - want).norm().item<double>() / want.norm().item<double>();
}

std::string kohya(const std::string& path) {
  std::string n = "lora_te_" + path;
  std::replace(n.begin(), n.end(), '.', '_');
  return n;
}

}  // namespace

TEST_CASE("lora: tiny-sd1 text encoder with the kohya LoRA matches sd-scripts' goldens") {
  const Clip clip(fixture("tiny-sd1/text_encoder/model.safetensors"));
  std::map<std::string, at::Tensor> gold;
  for (auto& [k, t] : sumi::io::load_all(fixture("tiny-sd1.golden.safetensors"))) gold[k] = t;
  const at::Tensor ids = gold.at("tok.ids_77").to(at::kLong);
  at::NoGradGuard no_grad;

  const Linear plain = [&](const std::string& m, const at::Tensor& x) {
    return at::linear(x, clip.p(m + ".weight"), clip.p(m + ".bias"));
  };
  auto base = clip.run(ids, plain);
  // The stand-in encoder itself reproduces transformers.
  CHECK(rel(base.second, gold.at("te.last_hidden_state")) < 1e-4);
  CHECK(rel(base.first, gold.at("te.penultimate")) < 1e-4);

  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  auto a = sumi::test::attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}});
  {
    std::vector<std::string> names;
    std::vector<const char*> cnames;
    std::vector<sumi_tensor> hs;
    for (auto& [k, t] : sumi::io::load_all(fixture("tiny-sd1.lora.safetensors"))) {
      names.push_back(k);
      hs.push_back(sumi::host::make_handle(t));
    }
    for (auto& n : names) cnames.push_back(n.c_str());
    sumi_status st = a->vt().load(a->net->self(), cnames.data(), hs.data(), static_cast<int64_t>(hs.size()));
    for (auto h : hs) sumi::host::host_api()->tensor_release(h);
    a->net->check(st, "load");
  }

  const Linear runtime = [&](const std::string& m, const at::Tensor& x) {
    at::Tensor y = plain(m, x);
    const size_t i = mods.index(kohya(m));
    REQUIRE(a->selected[i]);
    sumi_tensor hx = sumi::host::make_handle(x), hy = sumi::host::make_handle(y), out = nullptr;
    sumi_status st = a->vt().forward(a->net->self(), static_cast<int64_t>(i), hx, hy, &out);
    sumi::host::host_api()->tensor_release(hx);
    sumi::host::host_api()->tensor_release(hy);
    a->net->check(st, "forward");
    at::Tensor r = sumi::host::unwrap(out);
    sumi::host::host_api()->tensor_release(out);
    return r;
  };
  auto with = clip.run(ids, runtime);
  CHECK(rel(with.second, gold.at("lora.te.last_hidden_state")) < 1e-4);
  CHECK(rel(with.first, gold.at("lora.te.penultimate")) < 1e-4);
  CHECK(rel(base.second, gold.at("lora.te.last_hidden_state")) > 1e-3);  // the LoRA does change the output

  const Linear merged = [&](const std::string& m, const at::Tensor& x) {
    sumi_tensor d = nullptr;
    a->net->check(a->vt().weight_delta(a->net->self(), static_cast<int64_t>(mods.index(kohya(m))), &d), "weight_delta");
    at::Tensor w = clip.p(m + ".weight") + sumi::host::unwrap(d);
    sumi::host::host_api()->tensor_release(d);
    return at::linear(x, w, clip.p(m + ".bias"));
  };
  auto m = clip.run(ids, merged);
  CHECK(rel(m.second, gold.at("lora.te.last_hidden_state")) < 1e-4);
  CHECK(rel(m.first, gold.at("lora.te.penultimate")) < 1e-4);
}
