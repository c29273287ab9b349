// An out-of-tree network plugin for sumi: (IA)^3-style output scaling (arXiv 2205.05638) over the
// modules kohya's LoRA wraps (LierLa: the U-Net transformer blocks' Linear and 1x1 Conv2d layers,
// the text encoders' attention and MLP Linears), built against the installed SDK only.
//
// The form implemented, exactly: each wrapped layer y = W x + b gets a learned vector l with one
// entry per output feature / output channel, created as ones. At multiplier m the layer becomes
//
//     y' = y * s,   s = 1 + m * (l - 1)            (s broadcast over the output channel)
//
// so m = 0 is the base model, m = 1 the trained scaling, and l = 1 changes nothing. Merged into the
// weights this is W' = s * W (row-wise) and b' = s * b: scaling an output scales the bias too, so
// the network returns a bias delta as well as a weight delta.
//
// File format: one tensor per wrapped module, "<module>.ia3_scale", float32 of shape [out] (the
// registry name is the file key). No rank, no alpha: the metadata says which form this is.
//
// This is an example of the SDK, not a reimplementation of LyCORIS's ia3 (whose keys and
// parametrisation differ); its files are read by this plugin only.
#include <sumi/plugin.hpp>
#include <sumi/targets.hpp>

#include <map>
#include <string>
#include <vector>

namespace ia3_example {

namespace {

namespace ops = sumi::ops;
using sumi::Tensor;

constexpr const char* kSuffix = ".ia3_scale";

[[noreturn]] void fail(sumi_status code, const std::string& msg) { throw sumi::Error(code, "ia3_example: " + msg); }

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() > tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Ones of [n] in float32 on the device of `like` (CPU when it is undefined).
Tensor ones_on(const Tensor& like, int64_t n) {
  static const sumi::Op new_ones("aten::new_ones", "");
  if (!like.defined()) return ops::ones_like(ops::zeros({n}));
  return new_ones({like, std::vector<int64_t>{n}, sumi::dtype::f32});
}

struct Module {
  std::string name;
  int64_t out = 0;
  bool conv = false;
  Tensor weight, bias;  // the base layer's, borrowed (never written)
  Tensor scale;         // l, [out]
};

class Ia3Network : public sumi::Network {
 public:
  explicit Ia3Network(sumi::Context& ctx) : ctx_(ctx) {
    const bool unet_only = ctx.get_bool("train_unet_only");
    const bool te_only = ctx.get_bool("train_text_encoder_only");
    if (unet_only && te_only) fail(SUMI_ERR_INVALID_ARGUMENT, "train_unet_only and train_text_encoder_only are both set; that would train nothing");
    s_.network = "ia3_example";
    s_.unet = !te_only;
    s_.text_encoder = !unet_only;
    s_.dim = 1;  // the targeting rules want a rank; (IA)^3 has none and ignores it
  }

  // Call order: create, [probe], [configure_from_weights], attach, [load], set_multiplier /
  // set_training, forward or weight_delta + bias_delta, [metadata], destroy. `index` in every
  // later call is the position in the array given here.
  std::vector<bool> attach(const std::vector<const sumi_module_info*>& infos) override {
    if (!modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "attach called twice; a network wraps one model");
    std::vector<bool> selected(infos.size(), false);
    slot_.assign(infos.size(), -1);
    for (const sumi::targets::Target& t : sumi::targets::choose_targets(infos, s_)) {
      const sumi_module_info& info = *infos[t.index];
      Module m;
      m.name = info.name;
      m.out = info.out_features;
      m.conv = info.kind == SUMI_MODULE_CONV2D;
      m.weight = Tensor::borrow(info.weight);
      m.bias = Tensor::borrow(info.bias);
      const char* group = info.role == SUMI_ROLE_UNET ? "unet" : "text_encoder";
      // The registry name is the file key.
      m.scale = ctx_.param(m.name + kSuffix, ones_on(m.weight, m.out), group);
      slot_[t.index] = static_cast<int64_t>(modules_.size());
      by_name_[m.name] = modules_.size();
      modules_.push_back(std::move(m));
      selected[t.index] = true;
    }
    if (modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "the model has none of the modules (IA)^3 wraps");
    return selected;
  }

  Tensor forward(int64_t index, const Tensor&, const Tensor& base) override {
    const Module& m = module(index);
    Tensor s = factor(m);  // [out], float32
    if (m.conv) s = ops::reshape(s, {m.out, 1, 1});  // base is [N, out, H, W]
    if (s.dtype() != base.dtype()) s = ops::to(s, base.dtype());
    return base * s;  // Linear: base is [..., out]
  }

  // W' = s * W, so the delta is (s - 1) * W, row by row; float32 on the weight's device.
  Tensor weight_delta(int64_t index) override {
    const Module& m = module(index);
    if (!m.weight.defined()) fail(SUMI_ERR_INVALID_ARGUMENT, "module '" + m.name + "': the model gives no base weight to merge into");
    Tensor d = ops::sub(factor(m), 1.0);
    std::vector<int64_t> shape(static_cast<size_t>(m.weight.dim()), 1);
    shape[0] = m.out;
    return ops::reshape(d, shape) * ops::to(m.weight, sumi::dtype::f32);
  }

  // b' = s * b: the delta is (s - 1) * b; none when the layer has no bias.
  Tensor bias_delta(int64_t index) override {
    const Module& m = module(index);
    if (!m.bias.defined()) return Tensor();
    return ops::sub(factor(m), 1.0) * ops::to(m.bias, sumi::dtype::f32);
  }

  void set_multiplier(double mult) override { multiplier_ = mult; }
  void set_training(bool) override {}

  void load(const std::vector<std::string>& names, const std::vector<Tensor>& tensors) override {
    std::vector<bool> seen(modules_.size(), false);
    for (size_t i = 0; i < names.size(); ++i) {
      const std::string& key = names[i];
      if (!ends_with(key, kSuffix)) fail(SUMI_ERR_INVALID_ARGUMENT, "the file's tensor '" + key + "' is not an (IA)^3 key (<module>" + kSuffix + ")");
      const std::string mod = key.substr(0, key.size() - std::string(kSuffix).size());
      auto it = by_name_.find(mod);
      if (it == by_name_.end()) fail(SUMI_ERR_NOT_FOUND, "the file's tensor '" + key + "' is for module '" + mod + "', which this network does not wrap");
      const Module& m = modules_[it->second];
      if (tensors.at(i).sizes() != std::vector<int64_t>{m.out})
        fail(SUMI_ERR_INVALID_ARGUMENT, "the file's '" + key + "' has " + std::to_string(tensors[i].numel()) + " values in " +
                                            std::to_string(tensors[i].dim()) + " dimensions; module '" + mod + "' has " +
                                            std::to_string(m.out) + " outputs");
      seen[it->second] = true;
      sumi::NoGradGuard no_grad;
      ops::copy_(m.scale, tensors[i]);
    }
    for (size_t i = 0; i < seen.size(); ++i)
      if (!seen[i]) fail(SUMI_ERR_NOT_FOUND, "the file has no '" + modules_[i].name + kSuffix + "' for a wrapped module");
  }

  // ABI 1.3: a file is ours when its tensors are "<module>.ia3_scale" vectors.
  std::vector<bool> probe(const std::vector<sumi::FileTensor>& tensors, const std::string&) override {
    std::vector<bool> out;
    for (const auto& t : tensors) out.push_back(ends_with(t.name, kSuffix) && t.shape.size() == 1 && t.shape[0] > 0);
    return out;
  }

  // Wrap exactly the file's modules (kohya's create_network_from_weights): its names become
  // targets::Settings::module_dims (the "rank" is unused by (IA)^3).
  void configure_from_weights(const std::vector<sumi::FileTensor>& tensors, const std::string&) override {
    if (!modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "configure_from_weights after attach; it must come first");
    std::map<std::string, int64_t> dims;
    for (const auto& t : tensors) {
      if (!ends_with(t.name, kSuffix)) fail(SUMI_ERR_INVALID_ARGUMENT, "the file's tensor '" + t.name + "' is not an (IA)^3 key (<module>" + kSuffix + ")");
      dims[t.name.substr(0, t.name.size() - std::string(kSuffix).size())] = 1;
    }
    s_.module_dims = std::move(dims);
    s_.unet = s_.text_encoder = true;
  }

  // The network's own ss_network_* keys: no dim or alpha, which it has not.
  std::map<std::string, std::string> metadata() override {
    return {{"ss_network_ia3_form", "y*(1+m*(l-1))"}, {"ss_network_ia3_modules", std::to_string(modules_.size())}};
  }

 private:
  // s = 1 + m * (l - 1), float32 [out].
  Tensor factor(const Module& m) const { return ops::add(ops::sub(m.scale, 1.0) * multiplier_, 1.0); }

  const Module& module(int64_t index) const {
    if (index < 0 || index >= static_cast<int64_t>(slot_.size()) || slot_[static_cast<size_t>(index)] < 0)
      fail(SUMI_ERR_NOT_FOUND, "module index " + std::to_string(index) + " is not wrapped by this network");
    return modules_[static_cast<size_t>(slot_[static_cast<size_t>(index)])];
  }

  sumi::Context ctx_;
  sumi::targets::Settings s_;
  double multiplier_ = 1.0;
  std::vector<Module> modules_;
  std::vector<int64_t> slot_;  // model module index -> modules_ index, -1 when not wrapped
  std::map<std::string, size_t> by_name_;
};

const sumi_param_spec kParams[] = {
    sumi::param("train_unet_only", SUMI_PARAM_BOOL, "false", "Wrap only U-Net modules (kohya network_train_unet_only)."),
    sumi::param("train_text_encoder_only", SUMI_PARAM_BOOL, "false", "Wrap only text-encoder modules (kohya network_train_text_encoder_only)."),
};

}  // namespace

}  // namespace ia3_example

SUMI_PLUGIN("sumi_ia3_example", "0.1.0",
            sumi::component<ia3_example::Ia3Network>(
                "ia3_example", "(IA)^3 output scaling over kohya's LierLa modules: y * (1 + m * (l - 1)), l per output channel, ones at creation.",
                ia3_example::kParams))
