// Helpers for the network-plugin tests: any network plugin attached to a model under test,
// kohya files loaded into it, applied at run time or merged into the model's weights, and the
// registry's tensors as a fixture key list spells them.
#pragma once

#include "models_test_util.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sumi::test {

// fixtures/networks/<name>
std::string net_fixture(const std::string& name);
// A golden of fixtures/networks/<case>.golden.safetensors (float32).
const at::Tensor& net_golden(const std::string& kase, const std::string& key);

// attach_network (a plugin by name, attached to modules) and load_network_file (a file through
// the load slot) are models_test_util.h's.
// "key<TAB>[shape]<TAB>dtype" of the network's registry entries, sorted.
std::vector<std::string> registry_keys(const TestNetwork& n);
// The rows of a fixture key list, sorted (the '#' header skipped).
std::vector<std::string> key_list(const std::string& path);
// Routes the model's wrapped modules through the network (nullptr: detach).
void apply(ModelUnderTest& m, TestNetwork* n);
// W += weight_delta for every wrapped module, as the host's --network_merge does.
void merge(ModelUnderTest& m, TestNetwork& n);
// The U-Net's output for a golden case's inputs at timestep t (SDXL: with text_embeds, time_ids).
at::Tensor unet_out(ModelUnderTest& m, const std::string& kase, int t);
// The error message of `f`, or "" when it does not throw.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace sumi::test
