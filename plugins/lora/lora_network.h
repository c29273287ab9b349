// The LoRA network class shared by the `lora` and `lora_fa` plugins (kohya-ss sd-scripts'
// networks/lora.py and networks/lora_fa.py): the same layers, tensors, file keys, forward, file
// reading and block-wise learning rates. The including file defines SUMI_LORA_NAME (the
// component name, also the prefix of every message) and SUMI_LORA_FROZEN_DOWN: 0 for LoRA
// (lora_down drawn with kaiming_uniform(a = sqrt(5)) and trained), 1 for LoRA-FA (lora_down drawn
// once from normal(0, sqrt(2 / (in + r))) and frozen there: registered as persistent state, so it
// is saved in the file as kohya keeps it in the state dict, but never given to an optimizer).
// Each plugin includes this once, in its own library.
//
// The `lora` network: kohya-ss sd-scripts' networks/lora.py LoRAModule / LoRANetwork.
//
// Each wrapped layer gets lora_down (Linear in->r, or Conv2d with the layer's kernel, stride
// and padding) and lora_up (Linear r->out, or 1x1 Conv2d), registered under kohya's file keys
// ("<module>.lora_down.weight", "<module>.lora_up.weight", state "<module>.alpha"), so saving
// the registry writes kohya's file. The output is base + up(down(x)) * multiplier * alpha / r.
#pragma once

#ifndef SUMI_LORA_NAME
#error "define SUMI_LORA_NAME and SUMI_LORA_FROZEN_DOWN before including lora_network.h"
#endif

#include <sumi/plugin.hpp>
#include <sumi/targets.hpp>

#include "lora_module.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>

namespace sumi::lora {

namespace {

using sumi::shape_str;
using sumi::ops::zeros;
using sumi::ops::fill_;
using sumi::ops::uniform_;

using targets::Settings;
using targets::Target;
using targets::choose_targets;
using sumi::FileTensor;

using sumi::Tensor;
namespace ops = sumi::ops;

[[noreturn]] void fail(sumi_status code, const std::string& msg) { throw Error(code, SUMI_LORA_NAME ": " + msg); }


// One draw from U[0, 1) on the CPU generator, as torch.rand(1).
double rand_scalar() {
  static const Op rand("aten::rand", "");
  return rand({std::vector<int64_t>{1}}).item();
}

#if !SUMI_LORA_FROZEN_DOWN
// kaiming_uniform_(a = sqrt(5)) as torch.nn.init does it: gain sqrt(2 / (1 + a^2)) = sqrt(1/3),
// bound sqrt(3) * gain / sqrt(fan_in) = 1 / sqrt(fan_in), fan_in = size(1) * receptive field.
void kaiming_uniform_sqrt5(const Tensor& w) {
  auto s = w.sizes();
  int64_t fan_in = s.at(1);
  for (size_t i = 2; i < s.size(); ++i) fan_in *= s[i];
  const double gain = std::sqrt(2.0 / (1.0 + 5.0));
  const double bound = std::sqrt(3.0) * gain / std::sqrt(static_cast<double>(fan_in));
  uniform_(w, -bound, bound);
}
#endif

using sumi::py_float;

#if SUMI_LORA_FROZEN_DOWN
// lora_fa.py's initialisation of lora_down: normal(0, sqrt(2 / (in_dim + rank))), in_dim the
// layer's input features or in_channels (not multiplied by the kernel size).
void normal_down(const Tensor& w, int64_t in_dim, int64_t rank) {
  static const Op op("aten::normal_", "");
  op({w, 0.0, std::sqrt(2.0 / static_cast<double>(in_dim + rank))});
}
#endif

using lora_layout::Module;

class LoraNetwork : public sumi::Network {
 public:
  explicit LoraNetwork(sumi::Context& ctx) : ctx_(ctx) {
    s_.network = SUMI_LORA_NAME;
    s_.dim = ctx.get_int("dim");
    s_.alpha = ctx.get_double("alpha");
    s_.conv_dim = ctx.get_int("conv_dim");
    s_.conv_alpha = ctx.get_double("conv_alpha");
    s_.block_dims = ctx.get_int_list("block_dims");
    s_.block_alphas = ctx.get_double_list("block_alphas");
    s_.conv_block_dims = ctx.get_int_list("conv_block_dims");
    s_.conv_block_alphas = ctx.get_double_list("conv_block_alphas");
    const bool unet_only = ctx.get_bool("train_unet_only");
    const bool te_only = ctx.get_bool("train_text_encoder_only");
    dropout_ = ctx.get_double("dropout");
    rank_dropout_ = ctx.get_double("rank_dropout");
    module_dropout_ = ctx.get_double("module_dropout");

    if (s_.dim < 1) fail(SUMI_ERR_INVALID_ARGUMENT, "dim is " + std::to_string(s_.dim) + "; the rank must be at least 1");
    if (s_.conv_dim < -1)
      fail(SUMI_ERR_INVALID_ARGUMENT, "conv_dim is " + std::to_string(s_.conv_dim) + "; give a rank >= 0, or -1 to leave 3x3 convolutions alone");
    if (unet_only && te_only)
      fail(SUMI_ERR_INVALID_ARGUMENT, "train_unet_only and train_text_encoder_only are both set; that would train nothing");
    s_.unet = !te_only;
    s_.text_encoder = !unet_only;
    // Without block_dims kohya reads none of the per-block lists; a list given alone would be
    // silently dropped, so refuse it.
    if (s_.block_dims.empty()) {
      const char* alone = !s_.block_alphas.empty() ? "block_alphas"
                          : !s_.conv_block_dims.empty() ? "conv_block_dims"
                          : !s_.conv_block_alphas.empty() ? "conv_block_alphas"
                                                          : nullptr;
      if (alone)
        fail(SUMI_ERR_INVALID_ARGUMENT, std::string(alone) + " is given without block_dims; kohya only reads the per-block lists together with block_dims");
    }
    if (!s_.conv_block_alphas.empty() && s_.conv_block_dims.empty())
      fail(SUMI_ERR_INVALID_ARGUMENT, "conv_block_alphas is given without conv_block_dims");
    auto check_p = [](double p, const char* key, bool one_ok) {
      if (!(p >= 0.0) || p > 1.0 || (!one_ok && p == 1.0))
        fail(SUMI_ERR_INVALID_ARGUMENT, std::string(key) + " is " + std::to_string(p) + "; expected a probability in [0, 1" +
                                            (one_ok ? "]" : ")") + " (0 = off)");
    };
    check_p(dropout_, "dropout", true);
    check_p(rank_dropout_, "rank_dropout", false);  // its rescale divides by 1 - p
    check_p(module_dropout_, "module_dropout", true);
    const double threshold = ctx.get_double("block_lr_zero_threshold");
    lr_weights_ = targets::block_lr_weights(ctx.get_string("down_lr_weight"), ctx.get_string("mid_lr_weight"),
                                            ctx.get_string("up_lr_weight"), threshold, s_.network);
    if (!lr_weights_.set && threshold != 0)
      fail(SUMI_ERR_INVALID_ARGUMENT, "block_lr_zero_threshold is given without down_lr_weight, mid_lr_weight or up_lr_weight; "
                                      "it only applies to those weights");
    if (lr_weights_.set && !s_.unet)
      fail(SUMI_ERR_INVALID_ARGUMENT, "down/mid/up_lr_weight weight the U-Net's blocks, but train_text_encoder_only trains no U-Net module");
  }

  std::vector<bool> attach(const std::vector<const sumi_module_info*>& infos) override {
    if (!modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "attach called twice; a network wraps one model");
    std::vector<bool> selected(infos.size(), false);
    slot_.assign(infos.size(), -1);
    const bool sgm = targets::uses_sgm_names(infos);
    if (lr_weights_.set && sgm)
      fail(SUMI_ERR_UNSUPPORTED, "down_lr_weight / mid_lr_weight / up_lr_weight follow kohya's SD1/SD2 block numbering (12 down, mid, 12 up); "
                                 "this model's U-Net (SDXL names) has no such blocks in kohya's LoRA");
    std::map<std::string, double> group_scale;
    for (const Target& t : choose_targets(infos, s_)) {
      const sumi_module_info& info = *infos[t.index];
      std::vector<int64_t> down_shape, up_shape;
      Module m = lora_layout::make_module(info, t.dim, t.alpha, down_shape, up_shape, SUMI_LORA_NAME);
      const Tensor weight = Tensor::borrow(info.weight);
      std::string group = info.role == SUMI_ROLE_UNET ? "unet" : "text_encoder";
      // kohya's prepare_optimizer_params with block lr weights: one group per U-Net block, its
      // rate the U-Net's times the block's weight (modules outside every block stay in "unet").
      if (lr_weights_.set && info.role == SUMI_ROLE_UNET) {
        const int block = targets::block_index(m.name, false);
        if (block >= 0) {
          char buf[32];
          std::snprintf(buf, sizeof buf, "unet_block%02d", block);
          group = buf;
          group_scale[group] = lr_weights_.weight(block);
        }
      }
      // Drawn on the CPU, as kohya creates its networks there; the host places what is registered
      // on the run's device.
      Tensor down0 = zeros(down_shape);
#if SUMI_LORA_FROZEN_DOWN
      normal_down(down0, info.in_features, t.dim);
      m.down = ctx_.state(m.name + ".lora_down.weight", down0);  // frozen: saved, never trained
#else
      kaiming_uniform_sqrt5(down0);
      m.down = ctx_.param(m.name + ".lora_down.weight", down0, group.c_str());
#endif
      m.up = ctx_.param(m.name + ".lora_up.weight", zeros(up_shape), group.c_str());
      Tensor a0 = zeros({});
      fill_(a0, t.alpha);
      m.alpha = ctx_.state(m.name + ".alpha", a0);
      slot_[t.index] = static_cast<int64_t>(modules_.size());
      by_name_[m.name] = modules_.size();
      modules_.push_back(std::move(m));
      selected[t.index] = true;
    }
    for (const auto& [group, scale] : group_scale) ctx_.param_group_lr_scale(group, scale);
    return selected;
  }

  Tensor forward(int64_t index, const Tensor& input, const Tensor& base) override {
    const Module& m = module(index);
    if (training_ && module_dropout_ > 0 && rand_scalar() < module_dropout_) return base;

    Tensor x = input.dtype() == m.down.dtype() ? input : ops::to(input, m.down.dtype());
    Tensor lx = m.conv ? ops::conv2d(x, m.down, Tensor(), m.stride, m.padding) : ops::linear(x, m.down);
    if (training_ && dropout_ > 0) lx = ops::dropout(lx, dropout_, true);
    double scale = m.scale;
    if (training_ && rank_dropout_ > 0) {
      // One keep/drop decision per (sample, rank), shared over tokens and pixels; the kept ranks
      // are scaled up as if the rank were smaller.
      static const Op new_empty("aten::new_empty", "");
      Tensor mask = new_empty({lx, std::vector<int64_t>{lx.size(0), m.dim}, dtype::f32});
      uniform_(mask, 0.0, 1.0);
      mask = ops::gt(mask, rank_dropout_);
      const int64_t nd = lx.dim();
      if (nd == 3) mask = ops::reshape(mask, {lx.size(0), 1, m.dim});
      else if (nd == 4) mask = ops::reshape(mask, {lx.size(0), m.dim, 1, 1});
      lx = lx * mask;
      scale = m.scale * (1.0 / (1.0 - rank_dropout_));
    }
    lx = m.conv ? ops::conv2d(lx, m.up) : ops::linear(lx, m.up);
    lx = lx * multiplier_ * scale;
    if (lx.dtype() != base.dtype()) lx = ops::to(lx, base.dtype());
    return base + lx;
  }

  Tensor weight_delta(int64_t index) override {
    const Module& m = module(index);
    return multiplier_ * up_down(m) * m.scale;
  }

  // kohya's apply_max_norm_regularization: each module's delta up @ down * alpha / dim has its
  // norm clamped to max_norm by scaling up and down by sqrt(ratio) each; a norm below max / 2
  // counts as max / 2 (ratio 1). The reported norms are the deltas' after scaling.
  MaxNorm apply_max_norm(double max_norm) override {
    if (!(max_norm > 0)) fail(SUMI_ERR_INVALID_ARGUMENT, "scale_weight_norms must be > 0, got " + std::to_string(max_norm));
    NoGradGuard no_grad;
    MaxNorm r;
    if (modules_.empty()) return r;
    double sum = 0;
    for (Module& m : modules_) {
      const double norm = ops::norm(up_down(m) * m.scale).item();
      const double clamped = std::max(norm, max_norm / 2);
      const double ratio = std::min(clamped, max_norm) / clamped;
      if (ratio != 1.0) {
        ++r.keys_scaled;
        ops::mul_(m.up, std::sqrt(ratio));
        ops::mul_(m.down, std::sqrt(ratio));
      }
      const double scaled = norm * ratio;
      sum += scaled;
      r.max_norm = std::max(r.max_norm, scaled);
    }
    r.mean_norm = sum / static_cast<double>(modules_.size());
    return r;
  }

  // up @ down in the base weight's shape (no multiplier, no alpha / dim).
  static Tensor up_down(const Module& m) {
    Tensor w;
    if (!m.conv) {
      w = ops::matmul(m.up, m.down);
    } else if (m.base_shape[2] == 1 && m.base_shape[3] == 1) {
      w = ops::matmul(ops::reshape(m.up, {m.base_shape[0], m.dim}), ops::reshape(m.down, {m.dim, m.base_shape[1]}));
      w = ops::reshape(w, m.base_shape);
    } else {
      // A k x k conv followed by a 1x1 conv is one k x k conv; its kernel is the down kernel
      // (in channels as a batch) run through the up projection.
      w = ops::conv2d(ops::permute(m.down, {1, 0, 2, 3}), m.up);
      w = ops::contiguous(ops::permute(w, {1, 0, 2, 3}));
    }
    return w;
  }

  void set_multiplier(double mult) override { multiplier_ = mult; }

  void load(const std::vector<std::string>& names, const std::vector<Tensor>& tensors) override {
    if (modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "load before attach: the network does not know its modules yet");
    struct Found {
      Tensor down, up, alpha;
    };
    std::map<size_t, Found> found;
    for (size_t i = 0; i < names.size(); ++i) {
      const std::string& key = names[i];
      std::string part;
      size_t cut = std::string::npos;
      for (const char* suffix : {".lora_down.weight", ".lora_up.weight", ".alpha"}) {
        const std::string sfx = suffix;
        if (key.size() > sfx.size() && key.compare(key.size() - sfx.size(), sfx.size(), sfx) == 0) {
          part = sfx;
          cut = key.size() - sfx.size();
          break;
        }
      }
      if (cut == std::string::npos)
        fail(SUMI_ERR_INVALID_ARGUMENT, "the file's tensor '" + key +
                                            "' is not a kohya LoRA key (expected <module>.lora_down.weight, "
                                            "<module>.lora_up.weight or <module>.alpha); is this a LoRA of another kind?");
      const std::string mod = key.substr(0, cut);
      auto it = by_name_.find(mod);
      if (it == by_name_.end())
        fail(SUMI_ERR_NOT_FOUND, "the file's tensor '" + key + "' is for module '" + mod + "', which this network does not wrap (" +
                                     std::to_string(modules_.size()) +
                                     " wrapped modules); hint: conv_dim adds the U-Net's ResNet and up/down-sampling layers, "
                                     "train_unet_only / train_text_encoder_only drop a side, and the model must be the one the "
                                     "file was trained for");
      const Module& m = modules_[it->second];
      Found& f = found[it->second];
      const Tensor& t = tensors.at(i);
      Tensor* dst = part == ".alpha" ? &f.alpha : part == ".lora_down.weight" ? &f.down : &f.up;
      if (dst->defined()) fail(SUMI_ERR_INVALID_ARGUMENT, "the file's tensor '" + key + "' is given twice");
      if (part == ".alpha") {
        if (t.numel() != 1)
          fail(SUMI_ERR_INVALID_ARGUMENT, "the file's '" + key + "' has shape " + shape_str(t.sizes()) + "; an alpha is one number");
      } else {
        const auto want = (part == ".lora_down.weight" ? m.down : m.up).sizes();
        if (t.sizes() != want)
          fail(SUMI_ERR_INVALID_ARGUMENT, "the file's '" + key + "' has shape " + shape_str(t.sizes()) + " but this network's is " +
                                              shape_str(want) + "; hint: the file's rank is its lora_down's first dimension (" +
                                              (t.dim() > 0 ? std::to_string(t.size(0)) : std::string("?")) +
                                              "), set dim / conv_dim (or block_dims) to match it");
      }
      *dst = t;
    }
    std::vector<std::string> missing;
    for (size_t i = 0; i < modules_.size(); ++i) {
      auto it = found.find(i);
      if (it == found.end()) {
        missing.push_back(modules_[i].name);
        continue;
      }
      if (!it->second.down.defined() || !it->second.up.defined())
        fail(SUMI_ERR_INVALID_ARGUMENT, "the file has " + std::string(it->second.down.defined() ? "lora_down" : "lora_up") +
                                            " but no " + (it->second.down.defined() ? "lora_up" : "lora_down") + " for module '" +
                                            modules_[i].name + "'");
    }
    if (!missing.empty())
      fail(SUMI_ERR_NOT_FOUND, "the file has no weights for " + std::to_string(missing.size()) + " of the " +
                                   std::to_string(modules_.size()) + " wrapped modules (first: '" + missing.front() +
                                   "'); hint: a file trained for one side only needs train_unet_only or "
                                   "train_text_encoder_only, and one without ResNet convolutions needs conv_dim unset");

    NoGradGuard no_grad;
    for (auto& [i, f] : found) {
      Module& m = modules_[i];
      ops::copy_(m.down, f.down);
      ops::copy_(m.up, f.up);
      // Files from before kohya stored alpha mean alpha = rank (scale 1); so does alpha 0.
      double alpha = f.alpha.defined() ? f.alpha.item() : 0.0;
      if (alpha == 0) alpha = static_cast<double>(m.dim);
      fill_(m.alpha, alpha);
      m.scale = alpha / static_cast<double>(m.dim);
    }
  }

  void set_training(bool training) override { training_ = training; }

  // ABI 1.3. A kohya LoRA file: every tensor is <module>.lora_down.weight / .lora_up.weight /
  // .alpha of a plausible shape.
  std::vector<bool> probe(const std::vector<FileTensor>& tensors, const std::string&) override {
    std::vector<bool> out;
    for (const auto& t : tensors) out.push_back(targets::is_lora_tensor(t.name, t.shape));
    return out;
  }

  // kohya's create_network_from_weights: the file's modules, each at its own rank (resize_lora's
  // per-module ranks, files covering only the U-Net or some modules); alphas come with load.
  void configure_from_weights(const std::vector<FileTensor>& tensors, const std::string&) override {
    if (!modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "configure_from_weights after attach; it must come first");
    const auto [names, shapes] = sumi::names_and_shapes(tensors);
    s_.module_dims = targets::lora_file_ranks(names, shapes, s_.network);
    s_.unet = s_.text_encoder = true;
  }

  // kohya's ss_network_dim / ss_network_alpha: the configured rank and alpha (alpha as Python's
  // str of a float, "2.0").
  std::map<std::string, std::string> metadata() override {
    return {{"ss_network_dim", std::to_string(s_.dim)}, {"ss_network_alpha", py_float(s_.alpha)}};
  }

 private:
  const Module& module(int64_t index) const {
    if (index < 0 || index >= static_cast<int64_t>(slot_.size()) || slot_[static_cast<size_t>(index)] < 0)
      fail(SUMI_ERR_NOT_FOUND, "module index " + std::to_string(index) + " is not wrapped by this network (attach selected " +
                                   std::to_string(modules_.size()) + " of " + std::to_string(slot_.size()) + " modules)");
    return modules_[static_cast<size_t>(slot_[static_cast<size_t>(index)])];
  }

  sumi::Context ctx_;
  Settings s_;
  double dropout_ = 0, rank_dropout_ = 0, module_dropout_ = 0;
  targets::BlockLrWeights lr_weights_;
  double multiplier_ = 1.0;
  bool training_ = false;
  std::vector<Module> modules_;
  std::vector<int64_t> slot_;  // model module index -> modules_ index, -1 when not wrapped
  std::map<std::string, size_t> by_name_;
};

const sumi_param_spec kParams[] = {
    sumi::param("dim", SUMI_PARAM_INT, "4", "Rank of Linear and 1x1-conv LoRA layers (kohya network_dim)."),
    sumi::param("alpha", SUMI_PARAM_DOUBLE, "1", "Scale numerator: the update is multiplied by alpha / dim; 0 means alpha = dim (kohya network_alpha)."),
    sumi::param("dropout", SUMI_PARAM_DOUBLE, "0", "Neuron dropout on the rank-space activations while training; 0 = off (kohya network_dropout)."),
    sumi::param("rank_dropout", SUMI_PARAM_DOUBLE, "0", "Probability of dropping each rank per sample while training, kept ranks rescaled; 0 = off."),
    sumi::param("module_dropout", SUMI_PARAM_DOUBLE, "0", "Probability of skipping a module's LoRA on a training forward; 0 = off."),
    sumi::param("conv_dim", SUMI_PARAM_INT, "-1", "Rank of LoRA on the U-Net's 3x3 convolutions (C3Lier); -1 = not set, as kohya's None."),
    sumi::param("conv_alpha", SUMI_PARAM_DOUBLE, "1", "Alpha of the 3x3-convolution LoRA layers."),
    sumi::param("block_dims", SUMI_PARAM_INT_LIST, "", "Per-block rank of the U-Net's Linear/1x1 layers: 25 values (SD1/SD2) or 23 (SDXL), kohya's block numbering."),
    sumi::param("block_alphas", SUMI_PARAM_DOUBLE_LIST, "", "Per-block alpha matching block_dims (default: alpha for every block)."),
    sumi::param("conv_block_dims", SUMI_PARAM_INT_LIST, "", "Per-block rank of the 3x3 convolutions (needs block_dims; default: conv_dim for every block)."),
    sumi::param("conv_block_alphas", SUMI_PARAM_DOUBLE_LIST, "", "Per-block alpha of the 3x3 convolutions (default: conv_alpha)."),
    sumi::param("down_lr_weight", SUMI_PARAM_STRING, "", "Learning-rate weights of the U-Net's 12 down blocks (shallow to deep): comma-separated, or cosine / sine / linear / reverse_linear / zeros with an optional +offset (kohya)."),
    sumi::param("mid_lr_weight", SUMI_PARAM_STRING, "", "Learning-rate weight of the U-Net's mid block (kohya)."),
    sumi::param("up_lr_weight", SUMI_PARAM_STRING, "", "Learning-rate weights of the U-Net's 12 up blocks, as down_lr_weight (kohya)."),
    sumi::param("block_lr_zero_threshold", SUMI_PARAM_DOUBLE, "0", "Block weights not above this are 0: those blocks are not trained (kohya)."),
    sumi::param("train_unet_only", SUMI_PARAM_BOOL, "false", "Wrap only U-Net modules (kohya network_train_unet_only)."),
    sumi::param("train_text_encoder_only", SUMI_PARAM_BOOL, "false", "Wrap only text-encoder modules (kohya network_train_text_encoder_only)."),
};

}  // namespace

}  // namespace sumi::lora

