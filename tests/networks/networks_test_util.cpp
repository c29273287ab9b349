#include "networks_test_util.h"

#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"

#include <algorithm>
#include <fstream>
#include <stdexcept>

namespace sumi::test {

std::string net_fixture(const std::string& name) { return fixture("networks/" + name); }

const at::Tensor& net_golden(const std::string& kase, const std::string& key) {
  static std::map<std::string, std::map<std::string, at::Tensor>> cache;
  auto& m = cache[kase];
  if (m.empty())
    for (auto& [k, t] : io::load_all(net_fixture(kase + ".golden.safetensors"), at::kFloat)) m.emplace(k, t);
  auto it = m.find(key);
  if (it == m.end()) throw std::runtime_error("no golden " + key + " in " + kase);
  return it->second;
}

std::vector<std::string> registry_keys(const TestNetwork& n) {
  std::vector<std::string> out;
  for (const auto& e : n.registry.entries()) {
    if (e.component != "network") continue;
    std::string s = "[";
    for (int64_t i = 0; i < e.tensor.dim(); ++i) s += (i ? ", " : "") + std::to_string(e.tensor.size(i));
    out.push_back(e.name + "\t" + s + "]\t" + io::dtype_from_scalar_type(e.tensor.scalar_type()));
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> key_list(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && line[0] != '#') out.push_back(line);
  std::sort(out.begin(), out.end());
  return out;
}

void apply(ModelUnderTest& m, TestNetwork* n) {
  if (n) m.c->check(m.vt().set_network(m.self(), n->net->self(), &n->vt(), n->selected.data()), "set_network");
  else m.c->check(m.vt().set_network(m.self(), nullptr, nullptr, nullptr), "set_network(NULL)");
}

void merge(ModelUnderTest& m, TestNetwork& n) {
  at::NoGradGuard no_grad;
  const auto mods = m.modules();
  for (size_t i = 0; i < mods.size(); ++i) {
    if (!n.selected[i]) continue;
    sumi_tensor d = nullptr;
    n.net->check(n.vt().weight_delta(n.net->self(), static_cast<int64_t>(i), &d), "weight_delta");
    at::Tensor w = host::unwrap(mods[i].weight);
    const at::Tensor delta = host::unwrap(d);
    if (!delta.sizes().equals(w.sizes())) throw std::runtime_error(std::string("delta shape differs for ") + mods[i].name);
    w.copy_(w.to(at::kFloat).add_(delta.to(at::kFloat)));
    host::host_api()->tensor_release(d);
  }
}

at::Tensor unet_out(ModelUnderTest& m, const std::string& kase, int t) {
  const bool sdxl = kase.rfind("tiny-sdxl", 0) == 0;
  const at::Tensor ts = at::full({2}, t, at::kLong);
  if (sdxl)
    return m.denoise(net_golden(kase, "unet.in.sample"), ts, net_golden(kase, "unet.in.encoder_hidden_states"),
                     net_golden(kase, "unet.in.text_embeds"), net_golden(kase, "unet.in.time_ids"));
  return m.denoise(net_golden(kase, "unet.in.sample"), ts, net_golden(kase, "unet.in.encoder_hidden_states"));
}

}  // namespace sumi::test
