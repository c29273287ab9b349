// The `dylora` network: kohya-ss sd-scripts v0.7.0 networks/dylora.py (DyLoRAModule /
// DyLoRANetwork), LoRA trained at every rank at once.
//
// The modules, shapes and file keys are networks/lora.py's ("<module>.lora_down.weight",
// "<module>.lora_up.weight", state "<module>.alpha"); a DyLoRA file is a LoRA file. What differs
// is training: on every forward of a wrapped layer a rank b (a multiple of `unit` below the rank)
// is drawn, all ranks compute, the delta is scaled by alpha / rank * sqrt(rank / (b + unit)) and
// only the rank rows [b, b + unit) of lora_down / lora_up get gradient. kohya draws b with
// Python's `random` and ignores the multiplier while training; here b comes from the host's
// seeded torch generator. Outside training the full rank applies as a LoRA:
// y = base + multiplier * alpha / rank * up(down(x)), which is also what merging adds.
#include "dylora_file.h"
#include <sumi/targets.hpp>

#include "lora_module.h"

#include <sumi/plugin.hpp>

#include <cmath>
#include <map>
#include <tuple>

namespace sumi::dylora {

namespace {

using sumi::shape_str;
using sumi::ops::zeros;
using sumi::ops::fill_;

using sumi::Tensor;
namespace ops = sumi::ops;

[[noreturn]] void fail(sumi_status code, const std::string& msg) { throw Error(code, "dylora: " + msg); }

// kaiming_uniform_(a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in * k * k. kohya
// initialises each rank row separately, with the same fan_in, so one call on the whole tensor
// draws from the same distribution.
void kaiming_uniform_sqrt5(const Tensor& w) {
  static const Op uniform("aten::uniform_", "");
  auto s = w.sizes();
  int64_t fan_in = s.at(1);
  for (size_t i = 2; i < s.size(); ++i) fan_in *= s[i];
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  uniform({w, -bound, bound});
}

// Rows [from, to) of `t` along `dim` keep their gradient; every other row is detached.
Tensor train_only(const Tensor& t, int64_t dim, int64_t from, int64_t to) {
  static const Op slice("aten::slice", "Tensor");
  const int64_t n = t.size(dim);
  std::vector<Tensor> parts;
  if (from > 0) parts.push_back(ops::detach(slice({t, dim, int64_t{0}, from, int64_t{1}})));
  parts.push_back(slice({t, dim, from, to, int64_t{1}}));
  if (to < n) parts.push_back(ops::detach(slice({t, dim, to, n, int64_t{1}})));
  return parts.size() == 1 ? parts[0] : ops::cat(parts, dim);
}

using lora_layout::Module;

class DyloraNetwork : public sumi::Network {
 public:
  explicit DyloraNetwork(sumi::Context& ctx) : ctx_(ctx) {
    s_.network = "dylora";
    s_.dim = ctx.get_int("dim");
    s_.alpha = ctx.get_double("alpha");
    unit_ = ctx.get_int("unit");
    const int64_t conv_dim = ctx.get_int("conv_dim");
    const double conv_alpha = ctx.get_double("conv_alpha");
    const bool unet_only = ctx.get_bool("train_unet_only");
    const bool te_only = ctx.get_bool("train_text_encoder_only");
    if (s_.dim < 1) fail(SUMI_ERR_INVALID_ARGUMENT, "dim is " + std::to_string(s_.dim) + "; the rank must be at least 1");
    if (unit_ < 1) fail(SUMI_ERR_INVALID_ARGUMENT, "unit is " + std::to_string(unit_) + "; it must be at least 1");
    if (s_.dim % unit_ != 0)
      fail(SUMI_ERR_INVALID_ARGUMENT, "dim " + std::to_string(s_.dim) + " is not a multiple of unit " + std::to_string(unit_) +
                                          " (kohya: 'rank must be a multiple of unit')");
    if (conv_dim != -1 && conv_dim != s_.dim)
      fail(SUMI_ERR_INVALID_ARGUMENT, "conv_dim " + std::to_string(conv_dim) + " differs from dim " + std::to_string(s_.dim) +
                                          "; DyLoRA trains the 3x3 convolutions at the network's rank (kohya: 'conv_dim must be same as network_dim')");
    // kohya parses conv_alpha and then gives every module network_alpha; a different value would
    // be silently ignored there, so it is refused here.
    if (conv_alpha != -1 && conv_alpha != s_.alpha)
      fail(SUMI_ERR_INVALID_ARGUMENT, "conv_alpha " + std::to_string(conv_alpha) + " differs from alpha " + std::to_string(s_.alpha) +
                                          "; kohya's DyLoRA gives every module network_alpha (it ignores conv_alpha), drop conv_alpha");
    if (unet_only && te_only)
      fail(SUMI_ERR_INVALID_ARGUMENT, "train_unet_only and train_text_encoder_only are both set; that would train nothing");
    if (s_.alpha == 0) s_.alpha = static_cast<double>(s_.dim);  // kohya: alpha 0 or None means alpha = rank
    s_.conv_dim = conv_dim == -1 ? -1 : s_.dim;
    s_.conv_alpha = s_.alpha;
    s_.unet = !te_only;
    s_.text_encoder = !unet_only;
  }

  std::vector<bool> attach(const std::vector<const sumi_module_info*>& infos) override {
    if (!modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "attach called twice; a network wraps one model");
    std::vector<bool> selected(infos.size(), false);
    slot_.assign(infos.size(), -1);
    for (const targets::Target& t : targets::choose_targets(infos, s_)) {
      const sumi_module_info& info = *infos[t.index];
      std::vector<int64_t> down_shape, up_shape;
      Module m = lora_layout::make_module(info, t.dim, t.alpha, down_shape, up_shape, "dylora");
      const Tensor weight = Tensor::borrow(info.weight);
      const char* group = info.role == SUMI_ROLE_UNET ? "unet" : "text_encoder";
      Tensor down0 = zeros(down_shape);
      kaiming_uniform_sqrt5(down0);
      m.down = ctx_.param(m.name + ".lora_down.weight", down0, group);
      m.up = ctx_.param(m.name + ".lora_up.weight", zeros(up_shape), group);
      Tensor a0 = zeros({});
      fill_(a0, t.alpha);
      m.alpha = ctx_.state(m.name + ".alpha", a0);
      slot_[t.index] = static_cast<int64_t>(modules_.size());
      by_name_[m.name] = modules_.size();
      modules_.push_back(std::move(m));
      selected[t.index] = true;
    }
    return selected;
  }

  Tensor forward(int64_t index, const Tensor& input, const Tensor& base) override {
    const Module& m = module(index);
    Tensor down = m.down, up = m.up;
    double scale = m.scale * multiplier_;
    if (training_) {
      // kohya: b = randint(0, rank - 1) rounded down to the unit; all ranks compute, only the
      // unit block learns, and the multiplier is not applied.
      static const Op randint("aten::randint", "");
      int64_t b = static_cast<int64_t>(randint({m.dim, std::vector<int64_t>{1}}).item());
      b -= b % unit_;
      down = train_only(m.down, 0, b, b + unit_);
      up = train_only(m.up, 1, b, b + unit_);
      scale = m.scale * std::sqrt(static_cast<double>(m.dim) / static_cast<double>(b + unit_));
    }
    Tensor x = input.dtype() == down.dtype() ? input : ops::to(input, down.dtype());
    Tensor lx = m.conv ? ops::conv2d(x, down, Tensor(), m.stride, m.padding) : ops::linear(x, down);
    lx = m.conv ? ops::conv2d(lx, up) : ops::linear(lx, up);
    lx = lx * scale;
    if (lx.dtype() != base.dtype()) lx = ops::to(lx, base.dtype());
    return base + lx;
  }

  Tensor weight_delta(int64_t index) override {
    const Module& m = module(index);
    Tensor w;
    if (!m.conv) {
      w = ops::matmul(m.up, m.down);
    } else if (m.base_shape[2] == 1 && m.base_shape[3] == 1) {
      w = ops::matmul(ops::reshape(m.up, {m.base_shape[0], m.dim}), ops::reshape(m.down, {m.dim, m.base_shape[1]}));
      w = ops::reshape(w, m.base_shape);
    } else {
      // A k x k conv followed by a 1x1 conv is one k x k conv.
      w = ops::conv2d(ops::permute(m.down, {1, 0, 2, 3}), m.up);
      w = ops::contiguous(ops::permute(w, {1, 0, 2, 3}));
    }
    return multiplier_ * w * m.scale;
  }

  void set_multiplier(double mult) override { multiplier_ = mult; }

  void load(const std::vector<std::string>& names, const std::vector<Tensor>& tensors) override {
    if (modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "load before attach: the network does not know its modules yet");
    const FileLayout file = read_file(names, tensors);
    const std::string hint = "hint: the file's rank is " + std::to_string(file.rank) + (file.mixed_ranks ? " (mixed)" : "") + ", it " +
                             (file.conv3x3 ? "has" : "has no") + " 3x3-convolution modules (conv_dim) and covers " +
                             (file.unet && file.text_encoder ? "the U-Net and the text encoder(s)"
                              : file.unet                    ? "only the U-Net (train_unet_only)"
                                                             : "only the text encoder(s) (train_text_encoder_only)");
    for (const auto& [mod, fm] : file.modules) {
      auto it = by_name_.find(mod);
      if (it == by_name_.end())
        fail(SUMI_ERR_NOT_FOUND, "the file's module '" + mod + "' is not wrapped by this network (" + std::to_string(modules_.size()) +
                                     " wrapped modules); " + hint);
      const Module& m = modules_[it->second];
      for (const auto& [got, want, what] : {std::tuple{fm.down, m.down, "lora_down"}, std::tuple{fm.up, m.up, "lora_up"}})
        if (got.sizes() != want.sizes())
          fail(SUMI_ERR_INVALID_ARGUMENT, "the file's '" + mod + "." + what + ".weight' has shape " + shape_str(got.sizes()) +
                                              " but this network's is " + shape_str(want.sizes()) + "; set dim (network_dim) to the file's rank; " + hint);
    }
    std::vector<std::string> missing;
    for (const Module& m : modules_)
      if (!file.modules.count(m.name)) missing.push_back(m.name);
    if (!missing.empty())
      fail(SUMI_ERR_NOT_FOUND, "the file has no weights for " + std::to_string(missing.size()) + " of the " + std::to_string(modules_.size()) +
                                   " wrapped modules (first: '" + missing.front() + "'); " + hint);

    NoGradGuard no_grad;
    for (const auto& [mod, fm] : file.modules) {
      Module& m = modules_[by_name_.at(mod)];
      ops::copy_(m.down, fm.down);
      ops::copy_(m.up, fm.up);
      double alpha = fm.alpha.defined() ? fm.alpha.item() : 0.0;
      if (alpha == 0) alpha = static_cast<double>(m.dim);
      fill_(m.alpha, alpha);
      m.scale = alpha / static_cast<double>(m.dim);
    }
  }

  void set_training(bool training) override { training_ = training; }

  // ABI 1.3. A DyLoRA file is a kohya LoRA file; what tells it apart is its ss_network_module
  // (networks.dylora), so without that the lora plugin reads it (the same numbers outside training).
  std::vector<bool> probe(const std::vector<sumi::FileTensor>& tensors, const std::string& metadata_json) override {
    const bool dylora = sumi::file_network_module(metadata_json) == "dylora";
    std::vector<bool> out;
    for (const auto& t : tensors) out.push_back(dylora && targets::is_lora_tensor(t.name, t.shape));
    return out;
  }

  // kohya's create_network_from_weights (dylora.py): the file's modules, each at its own rank
  // (lora_down's first dimension); alphas come with load. Every rank must be a multiple of unit.
  void configure_from_weights(const std::vector<sumi::FileTensor>& tensors, const std::string&) override {
    if (!modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "configure_from_weights after attach; it must come first");
    const auto [names, shapes] = sumi::names_and_shapes(tensors);
    auto dims = targets::lora_file_ranks(names, shapes, s_.network);
    if (dims.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "the weights file has no LoRA modules (no *.lora_down.weight tensors)");
    for (const auto& [mod, r] : dims)
      if (r % unit_ != 0)
        fail(SUMI_ERR_INVALID_ARGUMENT, "the file's module '" + mod + "' has rank " + std::to_string(r) + ", not a multiple of unit " +
                                            std::to_string(unit_) + "; give the unit the file was trained with (network_args unit)");
    s_.module_dims = std::move(dims);
    s_.dim = s_.module_dims.begin()->second;
    s_.unet = s_.text_encoder = true;
  }

  // kohya's ss_network_dim / ss_network_alpha (the unit is in ss_network_args, as given).
  std::map<std::string, std::string> metadata() override {
    return {{"ss_network_dim", std::to_string(s_.dim)}, {"ss_network_alpha", sumi::py_float(s_.alpha)}};
  }

 private:
  const Module& module(int64_t index) const {
    if (index < 0 || index >= static_cast<int64_t>(slot_.size()) || slot_[static_cast<size_t>(index)] < 0)
      fail(SUMI_ERR_NOT_FOUND, "module index " + std::to_string(index) + " is not wrapped by this network (attach selected " +
                                   std::to_string(modules_.size()) + " of " + std::to_string(slot_.size()) + " modules)");
    return modules_[static_cast<size_t>(slot_[static_cast<size_t>(index)])];
  }

  sumi::Context ctx_;
  targets::Settings s_;
  int64_t unit_ = 1;
  double multiplier_ = 1.0;
  bool training_ = false;
  std::vector<Module> modules_;
  std::vector<int64_t> slot_;
  std::map<std::string, size_t> by_name_;
};

const sumi_param_spec kParams[] = {
    sumi::param("dim", SUMI_PARAM_INT, "4", "Rank of every wrapped layer (kohya network_dim); a multiple of unit."),
    sumi::param("alpha", SUMI_PARAM_DOUBLE, "1", "Scale numerator: the update is multiplied by alpha / dim; 0 means alpha = dim (kohya network_alpha)."),
    sumi::param("unit", SUMI_PARAM_INT, "1", "Rank step: each training forward draws a block of unit ranks to train (kohya's unit)."),
    sumi::param("conv_dim", SUMI_PARAM_INT, "-1", "Wrap the U-Net's 3x3 convolutions too; must equal dim (-1 = not set, as kohya's None)."),
    sumi::param("conv_alpha", SUMI_PARAM_DOUBLE, "-1", "Accepted only equal to alpha: kohya's DyLoRA gives every module network_alpha (-1 = not set)."),
    sumi::param("train_unet_only", SUMI_PARAM_BOOL, "false", "Wrap only U-Net modules (kohya network_train_unet_only)."),
    sumi::param("train_text_encoder_only", SUMI_PARAM_BOOL, "false", "Wrap only text-encoder modules (kohya network_train_text_encoder_only)."),
};

}  // namespace

}  // namespace sumi::dylora

SUMI_PLUGIN("sumi_dylora", "0.1.0",
            sumi::component<sumi::dylora::DyloraNetwork>("dylora", "kohya-ss sd-scripts DyLoRA (dynamic-rank LoRA, unit) in kohya's LoRA file format.",
                                                         sumi::dylora::kParams))
