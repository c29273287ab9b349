// A do-nothing component of every kind, named "null": the smallest working example of each
// vtable, and a stand-in for tests that exercise the host without real models.
#include <sumi/plugin.hpp>

namespace {

using sumi::Tensor;

class NullModel : public sumi::Model {
 public:
  explicit NullModel(sumi::Context&) {}
  void load(const std::string&) override {}
  const std::vector<sumi_module_info>& modules() override { return modules_; }
  std::pair<Tensor, Tensor> encode_text(const std::vector<std::string>& prompts) override {
    return {sumi::ops::zeros({static_cast<int64_t>(prompts.size()), 77, 8}), Tensor()};
  }
  Tensor denoise(const Tensor& latents, const Tensor&, const Tensor&, const Tensor&, const Tensor&) override {
    return sumi::ops::zeros_like(latents);
  }
  Tensor vae_encode(const Tensor& images, bool) override {
    auto s = images.sizes();
    return sumi::ops::zeros({s.at(0), 4, s.at(2) / 8, s.at(3) / 8});
  }
  Tensor vae_decode(const Tensor& latents) override {
    auto s = latents.sizes();
    return sumi::ops::zeros({s.at(0), 3, s.at(2) * 8, s.at(3) * 8});
  }
  void set_network(void*, const sumi_network_vtable*, const int32_t*) override {}

 private:
  std::vector<sumi_module_info> modules_;
};

class NullNetwork : public sumi::Network {
 public:
  explicit NullNetwork(sumi::Context&) {}
  std::vector<bool> attach(const std::vector<const sumi_module_info*>& modules) override {
    return std::vector<bool>(modules.size(), false);
  }
  Tensor forward(int64_t, const Tensor&, const Tensor& base) override { return base; }
  Tensor weight_delta(int64_t) override {
    throw sumi::Error(SUMI_ERR_NOT_FOUND, "the null network wraps no modules");
  }
  void set_multiplier(double) override {}
  void load(const std::vector<std::string>& names, const std::vector<Tensor>&) override {
    if (!names.empty()) throw sumi::Error(SUMI_ERR_INVALID_ARGUMENT, "the null network has no weights to load");
  }
  void set_training(bool) override {}
};

class NullOptimizer : public sumi::Optimizer {
 public:
  explicit NullOptimizer(sumi::Context&) {}
  void add_param_group(const std::string&, std::vector<Tensor>) override {}
  void step(const std::vector<double>&) override {}
};

class NullLr : public sumi::LrScheduler {
 public:
  explicit NullLr(sumi::Context&) {}
  double factor(const sumi_lr_query&) override { return 1.0; }
};

class NullNoise : public sumi::NoiseScheduler {
 public:
  explicit NullNoise(sumi::Context&) {}
  void set_timesteps(int64_t n) override { n_ = n; }
  Tensor timesteps() override { return sumi::ops::zeros({n_}, sumi::dtype::f64); }
  Tensor sigmas() override { return sumi::ops::zeros({0}, sumi::dtype::f64); }
  double init_noise_sigma() override { return 1.0; }
  Tensor scale_model_input(const Tensor& sample, int64_t) override { return sample; }
  Tensor step(const Tensor&, int64_t, const Tensor& sample, const Tensor&) override { return sample; }
  Tensor add_noise(const Tensor& original, const Tensor&, const Tensor&) override { return original; }
  Tensor velocity(const Tensor& sample, const Tensor&, const Tensor&) override { return sumi::ops::zeros_like(sample); }
  Tensor alphas_cumprod() override { return sumi::ops::zeros({0}, sumi::dtype::f64); }

 private:
  int64_t n_ = 0;
};

class NullTagger : public sumi::Tagger {
 public:
  explicit NullTagger(sumi::Context&) {}
  std::vector<std::pair<std::string, double>> tag(const Tensor&) override { return {}; }
};

}  // namespace

SUMI_PLUGIN("sumi_null", "0.1.0",
            sumi::component<NullModel>("null", "A model with no weights (tests)."),
            sumi::component<NullNetwork>("null", "A network that adapts nothing (tests)."),
            sumi::component<NullOptimizer>("null", "An optimizer that never changes anything (tests)."),
            sumi::component<NullLr>("null", "A constant factor of 1 (tests)."),
            sumi::component<NullNoise>("null", "An identity noise scheduler (tests)."),
            sumi::component<NullTagger>("null", "A tagger that finds no tags (tests)."))
