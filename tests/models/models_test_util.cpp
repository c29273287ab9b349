#include "models_test_util.h"

#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace sumi::test {

namespace {

at::Tensor take(sumi_tensor h) {
  if (!h) return at::Tensor();
  at::Tensor t = host::unwrap(h);
  host::host_api()->tensor_release(h);
  return t;
}

struct Handle {
  sumi_tensor h = nullptr;
  explicit Handle(const at::Tensor& t) : h(t.defined() ? host::make_handle(t) : nullptr) {}
  ~Handle() { host::host_api()->tensor_release(h); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
};

}  // namespace

std::string fixture(const std::string& rel) { return std::string(SUMI_TEST_DATA) + "/fixtures/" + rel; }

std::string scratch(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(SUMI_BUILD_DIR) / "test_models_scratch";
  std::filesystem::create_directories(dir);
  const auto p = dir / name;
  std::filesystem::remove_all(p);
  return p.string();
}

const std::map<std::string, at::Tensor>& golden(const std::string& model) {
  static std::map<std::string, std::map<std::string, at::Tensor>> cache;
  auto& m = cache[model];
  if (m.empty())
    for (auto& [k, t] : io::load_all(fixture(model + ".golden.safetensors"), at::kFloat)) m.emplace(k, t);
  return m;
}

const at::Tensor& golden(const std::string& model, const std::string& key) {
  const auto& m = golden(model);
  auto it = m.find(key);
  if (it == m.end()) throw std::runtime_error("no golden " + key + " for " + model);
  return it->second;
}

std::vector<std::string> golden_prompts() {
  std::ifstream in(fixture("tiny-sd1.golden.json"));
  auto j = nlohmann::json::parse(in);
  return j["meta"]["prompts"].get<std::vector<std::string>>();
}

double rel_err(const at::Tensor& got, const at::Tensor& want) {
  return (got.to(at::kFloat) - want).norm().item<double>() / want.norm().item<double>();
}

std::string family_of(const std::string& model) {
  if (model == "tiny-sd1") return "sd1";
  if (model == "tiny-sd2v") return "sd2";
  return "sdxl";
}

std::pair<at::Tensor, at::Tensor> ModelUnderTest::encode_text(const std::vector<std::string>& prompts) {
  std::vector<const char*> ps;
  for (auto& p : prompts) ps.push_back(p.c_str());
  sumi_tensor cond = nullptr, pooled = nullptr;
  c->check(vt().encode_text(self(), ps.data(), static_cast<int64_t>(ps.size()), &cond, &pooled), "encode_text");
  return {take(cond), take(pooled)};
}

at::Tensor ModelUnderTest::denoise(const at::Tensor& latents, const at::Tensor& t, const at::Tensor& cond,
                                   const at::Tensor& pooled, const at::Tensor& added) {
  Handle l(latents), ts(t), cd(cond), pl(pooled), ad(added);
  sumi_tensor out = nullptr;
  c->check(vt().denoise(self(), l.h, ts.h, cd.h, pl.h, ad.h, &out), "denoise");
  return take(out);
}

at::Tensor ModelUnderTest::vae_encode(const at::Tensor& images) {
  Handle i(images);
  sumi_tensor out = nullptr;
  c->check(vt().vae_encode(self(), i.h, 0, &out), "vae_encode");
  return take(out);
}

at::Tensor ModelUnderTest::vae_decode(const at::Tensor& latents) {
  Handle l(latents);
  sumi_tensor out = nullptr;
  c->check(vt().vae_decode(self(), l.h, &out), "vae_decode");
  return take(out);
}

std::vector<sumi_module_info> ModelUnderTest::modules() {
  const sumi_module_info* m = nullptr;
  int64_t n = 0;
  c->check(vt().modules(self(), &m, &n), "modules");
  return std::vector<sumi_module_info>(m, m + n);
}

std::unique_ptr<ModelUnderTest> load_model(const std::string& family, const std::string& path,
                                           std::map<std::string, std::string> config) {
  auto m = std::make_unique<ModelUnderTest>();
  if (!config.count("dtype")) config["dtype"] = "fp32";
  m->c = make(SUMI_KIND_MODEL, family, m->registry, config, "model");
  m->c->check(m->vt().load(m->self(), path.c_str()), "load");
  return m;
}

std::string load_error(const std::string& family, const std::string& path, std::map<std::string, std::string> config) {
  try {
    load_model(family, path, std::move(config));
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

std::unique_ptr<TestNetwork> attach_network(const std::string& network, const std::vector<sumi_module_info>& modules,
                                            const std::map<std::string, std::string>& config) {
  auto n = std::make_unique<TestNetwork>();
  n->net = make(SUMI_KIND_NETWORK, network, n->registry, config, "network");
  n->selected.assign(modules.size(), 0);
  n->net->check(n->vt().attach(n->net->self(), modules.data(), static_cast<int64_t>(modules.size()), n->selected.data()),
                "attach");
  return n;
}

void load_network_file(TestNetwork& n, const std::string& path) {
  std::vector<std::string> names;
  std::vector<const char*> cnames;
  std::vector<sumi_tensor> hs;
  for (auto& [k, t] : sumi::io::load_all(path)) {
    names.push_back(k);
    hs.push_back(sumi::host::make_handle(t));
  }
  for (auto& s : names) cnames.push_back(s.c_str());
  const sumi_status st = n.vt().load(n.net->self(), cnames.data(), hs.data(), static_cast<int64_t>(hs.size()));
  for (auto h : hs) sumi::host::host_api()->tensor_release(h);
  n.net->check(st, "load");
}

}  // namespace sumi::test
