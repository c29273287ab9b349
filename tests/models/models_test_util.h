// Helpers for the model-plugin tests: fixtures, goldens, and the sd1/sd2/sdxl components of the
// sumi_sd plugin driven through the host's C vtable, with tensors passed as host handles.
#pragma once

#include <sumi/sumi.h>

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../common/plugin_test.h"

namespace sumi::test {

std::string fixture(const std::string& rel);                 // tests/data/fixtures/<rel>
std::string scratch(const std::string& name);                // a fresh path under the build dir
const std::map<std::string, at::Tensor>& golden(const std::string& model);  // F32
const at::Tensor& golden(const std::string& model, const std::string& key);
std::vector<std::string> golden_prompts();
double rel_err(const at::Tensor& got, const at::Tensor& want);

// A loaded model component.
struct ModelUnderTest {
  host::Registry registry;
  std::unique_ptr<host::Component> c;
  const sumi_model_vtable& vt() const { return c->vtable<sumi_model_vtable>(); }
  void* self() const { return c->self(); }

  std::pair<at::Tensor, at::Tensor> encode_text(const std::vector<std::string>& prompts);
  at::Tensor denoise(const at::Tensor& latents, const at::Tensor& t, const at::Tensor& cond,
                     const at::Tensor& pooled = {}, const at::Tensor& added = {});
  at::Tensor vae_encode(const at::Tensor& images);
  at::Tensor vae_decode(const at::Tensor& latents);
  std::vector<sumi_module_info> modules();
};

// Creates component `family` ("sd1"/"sd2"/"sdxl") with `config` and loads `path`.
std::unique_ptr<ModelUnderTest> load_model(const std::string& family, const std::string& path,
                                           std::map<std::string, std::string> config = {});
// The error message of creating + loading, or "" when it loads.
std::string load_error(const std::string& family, const std::string& path,
                       std::map<std::string, std::string> config = {});

// The family name of a fixture: tiny-sd1 -> sd1, tiny-sd2v -> sd2, tiny-sdxl -> sdxl.
std::string family_of(const std::string& model);

// A network plugin instance with its own registry, attached to a model's module list.
struct TestNetwork {
  sumi::host::Registry registry;
  std::unique_ptr<sumi::host::Component> net;
  std::vector<int32_t> selected;
  const sumi_network_vtable& vt() const { return net->vtable<sumi_network_vtable>(); }
};
// Network component `network` ("lora", "lora_fa", ...) created with `config` and attached.
std::unique_ptr<TestNetwork> attach_network(const std::string& network, const std::vector<sumi_module_info>& modules,
                                            const std::map<std::string, std::string>& config);
inline std::unique_ptr<TestNetwork> attach_lora(const std::vector<sumi_module_info>& modules,
                                                const std::map<std::string, std::string>& config) {
  return attach_network("lora", modules, config);
}
// Fill the network's parameters from a kohya LoRA file.
void load_network_file(TestNetwork& n, const std::string& path);

}  // namespace sumi::test
