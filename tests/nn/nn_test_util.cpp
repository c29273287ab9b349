#include "nn_test_util.h"

#include <ATen/Parallel.h>

#include <map>
#include <mutex>
#include <stdexcept>

#include "sumi/io/safetensors_torch.h"

namespace sumi::nn::test {

namespace {
// The tests keep to two intra-op threads (the machine is shared); set before any test runs.
const bool kThreadsSet = [] {
  at::set_num_threads(2);
  return true;
}();
}  // namespace

std::string fixture(const std::string& rel) { return std::string(SUMI_TEST_DATA) + "/fixtures/" + rel; }

TensorMap load_f32(const std::string& path) {
  (void)kThreadsSet;
  TensorMap out;
  for (auto& [name, t] : sumi::io::load_all(path, at::kFloat)) out.emplace(name, t.clone());
  return out;
}

const TensorMap& golden(const std::string& model) {
  static std::map<std::string, TensorMap> cache;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(model);
  if (it == cache.end()) it = cache.emplace(model, load_f32(fixture(model + ".golden.safetensors"))).first;
  return it->second;
}

const at::Tensor& golden(const std::string& model, const std::string& key) {
  const auto& g = golden(model);
  auto it = g.find(key);
  if (it == g.end()) throw std::runtime_error("golden '" + key + "' missing for " + model);
  return it->second;
}

double rel_err(const at::Tensor& got, const at::Tensor& want) {
  if (got.sizes() != want.sizes()) return 1e9;
  return ((got.to(at::kFloat) - want).norm() / want.norm()).item<double>();
}

}  // namespace sumi::nn::test
