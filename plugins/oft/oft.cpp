// The `oft` network: kohya-ss sd-scripts v0.7.0 networks/oft.py (OFTModule / OFTNetwork),
// Orthogonal Finetuning of the U-Net.
//
// Each wrapped layer gets `oft_blocks` [B, n, n] (B = dim blocks of n = out / B output
// channels, zero at the start) and an `alpha` state, under kohya's file keys
// "oft_unet_<module>.oft_blocks" / ".alpha". The rotation, for multiplier m:
//   Q = blocks - blocks^T; Q *= (min(|Q|, c) + 1e-8) / (|Q| + 1e-8), |Q| the Frobenius norm over
//   all blocks and c = alpha * out (kohya's constraint); R_b = (I + Q_b)(I - Q_b)^-1 (Cayley);
//   R = block_diag(m R_b + (1 - m) I).
// At run time the layer's output is rotated over its channels, y = org(x) @ R (the bias too),
// as kohya's forward hook does; merging gives kohya's merge_to, W'[p] = sum_o W[o] R[o, p]
// with the bias left alone (so merged and run-time outputs differ where a layer has a bias).
#include "oft_file.h"

#include <sumi/plugin.hpp>

#include <cstdlib>
#include <map>

namespace sumi::oft {

namespace {

using sumi::shape_str;
using sumi::ops::zeros;
using sumi::ops::zeros_on;
using sumi::ops::fill_;

using sumi::Tensor;
namespace ops = sumi::ops;

[[noreturn]] void fail(sumi_status code, const std::string& msg) { throw Error(code, "oft: " + msg); }

std::string num(double v) {
  std::string s = std::to_string(v);
  while (s.size() > 1 && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

struct Module {
  std::string name;  // oft_unet_...
  bool conv = false;
  int64_t out = 0, blocks = 0, block_size = 0;
  Tensor weight;           // the frozen base weight (borrowed from the model), for merging
  Tensor oft_blocks, alpha;
  Tensor eye;              // [B, n, n] identities, float32, on the parameters' device
  double constraint = 0;   // alpha * out
  mutable Tensor cached;   // R for inference (no grad, not training), until something changes
};

class OftNetwork : public sumi::Network {
 public:
  explicit OftNetwork(sumi::Context& ctx) : ctx_(ctx) {
    s_.dim = ctx.get_int("dim");
    s_.alpha = ctx.get_double("alpha");
    s_.enable_all_linear = ctx.get_bool("enable_all_linear");
    s_.enable_conv = ctx.get_bool("enable_conv");
    if (s_.dim < 1) fail(SUMI_ERR_INVALID_ARGUMENT, "dim (the number of blocks, kohya network_dim) is " + std::to_string(s_.dim) + "; it must be at least 1");
    if (!(s_.alpha > 0))
      fail(SUMI_ERR_INVALID_ARGUMENT, "alpha (the constraint, kohya network_alpha) is " + num(s_.alpha) +
                                          "; it must be positive (kohya suggests about 1e-3: the rotation's norm is limited to alpha * out_dim)");
    if (ctx.get_bool("train_text_encoder_only"))
      fail(SUMI_ERR_UNSUPPORTED, "OFT adapts only the U-Net, so train_text_encoder_only (network_train_text_encoder_only) would train nothing "
                                 "(kohya: 'apply_unet must be True')");
  }

  std::vector<bool> attach(const std::vector<const sumi_module_info*>& infos) override {
    if (!modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "attach called twice; a network wraps one model");
    std::vector<bool> selected(infos.size(), false);
    slot_.assign(infos.size(), -1);
    for (size_t index : choose_targets(infos, s_)) {
      const sumi_module_info& info = *infos[index];
      Module m;
      m.name = oft_name(info.name);
      m.conv = info.kind == SUMI_MODULE_CONV2D;
      m.out = info.out_features;
      m.blocks = s_.dim;
      if (m.out % s_.dim != 0)
        fail(SUMI_ERR_INVALID_ARGUMENT, "dim (number of blocks) " + std::to_string(s_.dim) + " does not divide the " +
                                            std::to_string(m.out) + " output channels of module '" + info.name +
                                            "'; OFT splits every wrapped layer's outputs into dim equal blocks, choose a divisor");
      m.block_size = m.out / s_.dim;
      m.constraint = s_.alpha * static_cast<double>(m.out);
      m.weight = Tensor::borrow(info.weight);
      std::vector<int64_t> base_shape = {info.out_features, info.in_features};
      if (m.conv) base_shape = {info.out_features, info.in_features, info.kernel[0], info.kernel[1]};
      if (m.weight.defined() && m.weight.sizes() != base_shape)
        fail(SUMI_ERR_INVALID_ARGUMENT, "module '" + std::string(info.name) + "': its weight is " + shape_str(m.weight.sizes()) +
                                            " but its description says " + shape_str(base_shape));
      m.oft_blocks = ctx_.param(m.name + ".oft_blocks", zeros({m.blocks, m.block_size, m.block_size}), "unet");
      Tensor a0 = zeros({});
      fill_(a0, s_.alpha);
      m.alpha = ctx_.state(m.name + ".alpha", a0);
      {
        NoGradGuard no_grad;
        m.eye = zeros_on(m.weight, {m.blocks, m.block_size, m.block_size});
        static const Op diagonal("aten::diagonal", "");
        fill_(diagonal({m.eye, int64_t{0}, int64_t{1}, int64_t{2}}), 1.0);
      }
      slot_[index] = static_cast<int64_t>(modules_.size());
      by_name_[m.name] = modules_.size();
      modules_.push_back(std::move(m));
      selected[index] = true;
    }
    return selected;
  }

  Tensor forward(int64_t index, const Tensor& input, const Tensor& base) override {
    (void)input;
    const Module& m = module(index);
    if (multiplier_ == 0.0) return base;
    // Generation calls every layer once per step with the same R; kohya recomputes it (an
    // inverse per block) each time, which costs more than the layer itself on small latents.
    Tensor r;
    if (!training_ && !sumi::api().grad_mode_enabled()) {
      if (!m.cached.defined()) m.cached = rotation(m);
      r = m.cached;
    } else {
      r = rotation(m);
    }
    if (r.dtype() != base.dtype()) r = ops::to(r, base.dtype());
    if (base.dim() == 4) {
      Tensor y = ops::matmul(ops::permute(base, {0, 2, 3, 1}), r);
      return ops::permute(y, {0, 3, 1, 2});
    }
    return ops::matmul(base, r);
  }

  Tensor weight_delta(int64_t index) override {
    const Module& m = module(index);
    if (!m.weight.defined())
      fail(SUMI_ERR_UNSUPPORTED, "module '" + m.name + "': the model gave no base weight, and OFT's merge rotates it; apply the network at run time instead");
    const Tensor r = rotation(m);
    const std::vector<int64_t> shape = m.weight.sizes();
    Tensor w = ops::to(m.weight, dtype::f32);
    Tensor w2 = ops::reshape(w, {m.out, -1});
    // W'[p, ...] = sum_o W[o, ...] R[o, p]: R^T W over the output axis.
    Tensor merged = ops::matmul(ops::transpose(r, 0, 1), w2);
    return ops::reshape(merged - w2, shape);
  }

  void set_multiplier(double mult) override {
    multiplier_ = mult;
    drop_cache();
  }

  void load(const std::vector<std::string>& names, const std::vector<Tensor>& tensors) override {
    if (modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "load before attach: the network does not know its modules yet");
    const FileLayout file = read_file(names, tensors);
    const std::string hint = std::string("hint: the file ") + (file.enable_conv ? "has" : "has no") + " ResNet/sampler modules (enable_conv) and " +
                             (file.enable_all_linear ? "has" : "has no") + " transformer linears beyond attention (enable_all_linear); its dim is " +
                             std::to_string(file.num_blocks) + "; give the same network_args it was trained with";
    for (const auto& [mod, fm] : file.modules) {
      auto it = by_name_.find(mod);
      if (it == by_name_.end())
        fail(SUMI_ERR_NOT_FOUND, "the file's module '" + mod + "' is not wrapped by this network (" + std::to_string(modules_.size()) +
                                     " wrapped modules, enable_all_linear=" + (s_.enable_all_linear ? "true" : "false") +
                                     ", enable_conv=" + (s_.enable_conv ? "true" : "false") + "); " + hint);
      const Module& m = modules_[it->second];
      if (fm.blocks.sizes() != m.oft_blocks.sizes())
        fail(SUMI_ERR_INVALID_ARGUMENT, "the file's '" + mod + ".oft_blocks' has shape " + shape_str(fm.blocks.sizes()) + " but this network's is " +
                                            shape_str(m.oft_blocks.sizes()) + "; hint: the number of blocks (dim, kohya network_dim) is its first dimension, " +
                                            std::to_string(fm.blocks.size(0)));
    }
    std::vector<std::string> missing;
    for (const Module& m : modules_)
      if (!file.modules.count(m.name)) missing.push_back(m.name);
    if (!missing.empty())
      fail(SUMI_ERR_NOT_FOUND, "the file has no weights for " + std::to_string(missing.size()) + " of the " + std::to_string(modules_.size()) +
                                   " wrapped modules (first: '" + missing.front() + "'); " + hint);

    NoGradGuard no_grad;
    drop_cache();
    for (const auto& [mod, fm] : file.modules) {
      Module& m = modules_[by_name_.at(mod)];
      ops::copy_(m.oft_blocks, fm.blocks);
      // kohya reads the constraint back from the file's alpha (as stored: an F16 file rounds 1e-3).
      const double alpha = fm.alpha.defined() ? fm.alpha.item() : s_.alpha;
      fill_(m.alpha, alpha);
      m.constraint = alpha * static_cast<double>(m.out);
    }
  }

  // ABI 1.3. An OFT file: every tensor is oft_unet_<module>.oft_blocks [B, n, n] or .alpha.
  std::vector<bool> probe(const std::vector<sumi::FileTensor>& tensors, const std::string&) override {
    std::vector<bool> out;
    for (const auto& t : tensors) out.push_back(is_oft_tensor(t.name, t.shape));
    return out;
  }

  // kohya's create_network_from_weights: the number of blocks (the first module's), and
  // enable_conv / enable_all_linear from the modules the file has (kohya looks for in_layers_2 and
  // _ff_ in the names; sumi sorts every module as choose_targets does, so SDXL's names and the
  // samplers count too). Each module's constraint comes with load, from its alpha tensor; the
  // file's ss_network_alpha (when a number) becomes the network's alpha for its metadata.
  void configure_from_weights(const std::vector<sumi::FileTensor>& tensors, const std::string& metadata_json) override {
    if (!modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "configure_from_weights after attach; it must come first");
    const auto [names, shapes] = sumi::names_and_shapes(tensors);
    const FileLayout f = read_layout(names, shapes);
    if (f.modules.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "the weights file has no OFT modules (no oft_unet_*.oft_blocks tensors)");
    s_.dim = f.num_blocks;
    s_.enable_conv = f.enable_conv;
    s_.enable_all_linear = f.enable_all_linear;
    const auto meta = sumi::parse_json_object(metadata_json);
    if (auto it = meta.find("ss_network_alpha"); it != meta.end()) {
      char* end = nullptr;
      const double a = std::strtod(it->second.c_str(), &end);
      if (end && *end == '\0' && end != it->second.c_str() && a > 0) s_.alpha = a;
    }
  }

  // kohya's ss_network_dim / ss_network_alpha: the number of blocks and the constraint.
  std::map<std::string, std::string> metadata() override {
    return {{"ss_network_dim", std::to_string(s_.dim)}, {"ss_network_alpha", sumi::py_float(s_.alpha)}};
  }

  // OFT has no dropout; the flag only decides whether R may be cached (parameters change while training).
  void set_training(bool training) override {
    training_ = training;
    drop_cache();
  }

 private:
  void drop_cache() {
    for (Module& m : modules_) m.cached = Tensor();
  }

  // R = block_diag(m R_b + (1 - m) I), float32, [out, out].
  Tensor rotation(const Module& m) const {
    static const Op clamp_max("aten::clamp_max", "");
    static const Op inverse("aten::inverse", "");
    static const Op unbind("aten::unbind", "int");
    static const Op block_diag("aten::block_diag", "");
    const Tensor& b = m.oft_blocks;
    Tensor q = b - ops::transpose(b, 1, 2);
    const Tensor norm = ops::norm(q);
    const Tensor limited = clamp_max({norm, m.constraint});
    q = q * ((limited + 1e-8) / (norm + 1e-8));
    Tensor r = ops::matmul(m.eye + q, inverse({m.eye - q}));
    if (multiplier_ != 1.0) r = r * multiplier_ + m.eye * (1.0 - multiplier_);
    return block_diag({unbind.call_all({r, int64_t{0}})});
  }

  const Module& module(int64_t index) const {
    if (index < 0 || index >= static_cast<int64_t>(slot_.size()) || slot_[static_cast<size_t>(index)] < 0)
      fail(SUMI_ERR_NOT_FOUND, "module index " + std::to_string(index) + " is not wrapped by this network (attach selected " +
                                   std::to_string(modules_.size()) + " of " + std::to_string(slot_.size()) + " modules)");
    return modules_[static_cast<size_t>(slot_[static_cast<size_t>(index)])];
  }

  sumi::Context ctx_;
  Settings s_;
  double multiplier_ = 1.0;
  bool training_ = true;  // until the host says otherwise, never cache
  std::vector<Module> modules_;
  std::vector<int64_t> slot_;  // model module index -> modules_ index, -1 when not wrapped
  std::map<std::string, size_t> by_name_;
};

const sumi_param_spec kParams[] = {
    sumi::param("dim", SUMI_PARAM_INT, "4", "Number of blocks of the block-diagonal rotation; must divide every wrapped layer's output width (kohya network_dim)."),
    sumi::param("alpha", SUMI_PARAM_DOUBLE, "1", "Constraint: the rotation's generator is limited to norm alpha * out_dim per layer; about 1e-3 is typical (kohya network_alpha)."),
    sumi::param("enable_all_linear", SUMI_PARAM_BOOL, "false", "Wrap every Linear and 1x1 conv of the U-Net's transformer blocks, not only the attention projections."),
    sumi::param("enable_conv", SUMI_PARAM_BOOL, "false", "Also wrap the Linear and Conv2d layers of the U-Net's ResNet blocks and up/down-samplers."),
    sumi::param("train_unet_only", SUMI_PARAM_BOOL, "false", "Accepted for kohya's network_train_unet_only: OFT adapts only the U-Net anyway."),
    sumi::param("train_text_encoder_only", SUMI_PARAM_BOOL, "false", "Refused when true: OFT has no text-encoder modules."),
};

}  // namespace

}  // namespace sumi::oft

SUMI_PLUGIN("sumi_oft", "0.1.0",
            sumi::component<sumi::oft::OftNetwork>("oft", "kohya-ss sd-scripts OFT (orthogonal finetuning of the U-Net) in kohya's file format.",
                                                   sumi::oft::kParams))
