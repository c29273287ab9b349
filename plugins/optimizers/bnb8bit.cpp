// bitsandbytes' 8-bit optimizers (bitsandbytes 0.41.1), kohya's --optimizer_type AdamW8bit
// (--use_8bit_adam), PagedAdamW8bit, Lion8bit, PagedLion8bit and SGDNesterov8bit (which kohya
// builds as bnb.optim.SGD8bit(momentum=0.9): heavy-ball momentum, no Nesterov).
//
// Per parameter, as Optimizer{1,2}State.init_state: a tensor of at least max(min_8bit_size, 4096)
// elements keeps block-wise 8-bit state — uint8 codes shaped like the parameter and one float32
// absmax per 2048 elements; state1 (Adam's first moment, Lion's and SGD's momentum) on the signed
// dynamic map, Adam's second moment on the unsigned one — and steps as the block-wise kernels do:
// dequantize, update in float32, update the parameter from the unquantized new state, requantize
// against each block's new absmax. A smaller tensor keeps float32 state and steps as bnb's 32-bit
// kernels, whose formulas differ from torch's where noted:
//   Adam:     p <- p - lr*c2/c1 * m / (sqrt(v) + eps*c2), c1 = 1-b1^t, c2 = sqrt(1-b2^t); then the
//             weight decay p <- p * (1 - lr*wd) (torch decays first);
//   Lion:     32-bit: coupled decay g <- g + wd*p before the sign; 8-bit: p <- p * (1 - lr*wd) first;
//   momentum: buf = g at step 1, then buf <- momentum*buf + g (dampening and nesterov ignored);
//             coupled weight decay g <- g + wd*p.
// The hyper-parameters and lr are float32 (the kernels take C floats) and all arithmetic is
// float32, low-precision parameters rounded where the kernels store them. The 8-bit path walks a
// tensor in chunks of blocks, so its temporaries stay a few MB whatever the tensor's size.
#include "blockwise8bit.h"
#include "optimizers.h"

#include <algorithm>
#include <cmath>

namespace sumi::optim {
namespace {

using q8::kBlock;

enum class Algo { adam, lion, momentum };

constexpr int64_t kChunkBlocks = 64;  // 131072 elements per pass of the 8-bit path

// The parameter as the kernels compute with it: float32, a low-precision (bf16 / fp16) parameter
// through a float32 copy that round() rounds to its dtype where the kernel stores to it.
class Work {
 public:
  explicit Work(const Tensor& param) : dst_(param), low_(param.dtype() != dtype::f32) {
    p_ = low_ ? ops::to(param, dtype::f32) : param;
  }
  const Tensor& p() const { return p_; }
  bool low() const { return low_; }
  sumi_dtype dtype() const { return dst_.dtype(); }
  void round() const {
    if (low_) ops::copy_(p_, ops::to(p_, dst_.dtype()));
  }
  void store() const {
    if (low_) ops::copy_(dst_, p_);
  }

 private:
  Tensor dst_, p_;
  bool low_;
};

// A float32 tensor rounded through `dt` (a value the kernel keeps in a T-typed register array).
Tensor rounded(const Tensor& t, sumi_dtype dt) { return dt == dtype::f32 ? t : ops::to(ops::to(t, dt), dtype::f32); }

float rounded(float v, sumi_dtype dt) {
  if (dt == dtype::f32) return v;
  return static_cast<float>(ops::to(Tensor::from_data(std::vector<float>{v}, {}), dt).item());
}

void add_scalar_(const Tensor& t, double v) {
  static const Op op("aten::add_", "Scalar");
  op({t, v, 1.0});
}

class Bnb8bit : public Optimizer {
 public:
  Bnb8bit(Context& ctx, Algo algo, const char* name) : ctx_(ctx), algo_(algo), name_(name) {
    const double wd = ctx.get_double("weight_decay");
    if (!(wd >= 0)) bad_arg(name, "weight_decay must be >= 0, got " + std::to_string(wd));
    wd_ = static_cast<float>(wd);
    if (algo == Algo::momentum) {
      const double momentum = ctx.get_double("momentum"), dampening = ctx.get_double("dampening");
      if (momentum == 0)
        bad_arg(name, "momentum=0 is not supported: bitsandbytes' SGD8bit raises \"SGD without momentum is not supported!\"; "
                      "give momentum > 0 (kohya's SGDNesterov8bit adds momentum=0.9), or use --optimizer_type SGD");
      if (!(momentum > 0 && momentum < 1)) bad_arg(name, "momentum must be in (0, 1), got " + std::to_string(momentum));
      if (!(dampening >= 0 && dampening < 1)) bad_arg(name, "dampening must be in [0, 1), got " + std::to_string(dampening));
      if (dampening != 0)
        log_warn(std::string(name) + ": dampening=" + std::to_string(dampening) + " is ignored, as bitsandbytes' SGD8bit ignores it");
      if (ctx.get_bool("nesterov")) log_warn(std::string(name) + ": nesterov=True is ignored, as bitsandbytes' SGD8bit ignores it");
      beta1_ = static_cast<float>(momentum);
      log_info(std::string(name) + ": bitsandbytes' SGD8bit, heavy-ball momentum " + std::to_string(momentum) +
               " without Nesterov (kohya builds it so; the numbers are those of SGD with momentum, not SGDNesterov)");
    } else {
      const auto b = betas(ctx, name, 2);
      beta1_ = static_cast<float>(b[0]);
      beta2_ = static_cast<float>(b[1]);
    }
    if (algo == Algo::adam) {
      const double eps = ctx.get_double("eps");
      if (!(eps >= 0)) bad_arg(name, "eps must be >= 0, got " + std::to_string(eps));
      eps_ = static_cast<float>(eps);
      if (ctx.get_bool("amsgrad")) log_warn(std::string(name) + ": amsgrad=True is ignored, as bitsandbytes' AdamW8bit ignores it");
    }
    min_8bit_size_ = ctx.get_int("min_8bit_size");
    if (min_8bit_size_ < 0) bad_arg(name, "min_8bit_size must be >= 0, got " + std::to_string(min_8bit_size_));
    percentile_ = ctx.get_int("percentile_clipping");
    if (percentile_ < 0 || percentile_ > 100)
      bad_arg(name, "percentile_clipping must be in 0..100 (100 = off; p clips each tensor's gradient norm to the p-th "
                    "percentile of its last 100), got " + std::to_string(percentile_));
    if (!ctx.get_bool("block_wise"))
      bad_arg(name, "block_wise=False is not supported: sumi keeps bitsandbytes' default block-wise state (one absmax per "
                    "2048 elements); leave block_wise=True");
  }

  void add_param_group(const std::string& group, std::vector<Tensor> params) override {
    std::vector<Entry> entries;
    for (const auto& s : make_slots(group, params)) {
      Entry e;
      e.param = s.param;
      if (algo_ == Algo::momentum && s.param.dtype() == dtype::bf16)
        bad_arg(name_, "bfloat16 parameters (full_bf16) are not supported: bitsandbytes' SGD8bit has no bfloat16 kernel "
                       "(kohya stops at the first step with \"Gradient+optimizer bit data type combination not supported\"); "
                       "train without full_bf16, or use AdamW8bit or Lion8bit");
      const auto shape = s.param.sizes();
      const int64_t n = s.param.numel();
      e.q8 = n >= min_8bit_size_ && n >= q8::kMin8bitFloor;
      e.step = ctx_.state(s.prefix + "step", ops::zeros({}, dtype::f64));
      if (e.q8) {
        if (!qmap1_.defined()) {
          qmap1_ = ctx_.state("qmap1", Tensor::from_data(q8::dynamic_map(true), {256}));
          if (algo_ == Algo::adam) qmap2_ = ctx_.state("qmap2", Tensor::from_data(q8::dynamic_map(false), {256}));
        }
        const int64_t blocks = (n + kBlock - 1) / kBlock;
        e.state1 = ctx_.state(s.prefix + "state1", ops::zeros(shape, dtype::u8));
        e.absmax1 = ctx_.state(s.prefix + "absmax1", ops::zeros({blocks}, dtype::f32));
        if (algo_ == Algo::adam) {
          e.state2 = ctx_.state(s.prefix + "state2", ops::zeros(shape, dtype::u8));
          e.absmax2 = ctx_.state(s.prefix + "absmax2", ops::zeros({blocks}, dtype::f32));
        }
      } else {
        e.state1 = ctx_.state(s.prefix + "state1", ops::zeros(shape, dtype::f32));
        if (algo_ == Algo::adam) e.state2 = ctx_.state(s.prefix + "state2", ops::zeros(shape, dtype::f32));
      }
      if (percentile_ < 100) e.gnorm_vec = ctx_.state(s.prefix + "gnorm_vec", ops::zeros({100}, dtype::f32));
      entries.push_back(std::move(e));
    }
    groups_.push_back(std::move(entries));
  }

  void step(const std::vector<double>& lrs) override {
    check_lrs(name_, lrs, groups_.size());
    NoGradGuard no_grad;
    for (size_t g = 0; g < groups_.size(); ++g) {
      const float lr = static_cast<float>(lrs[g]);
      for (auto& e : groups_[g]) {
        const Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        ops::add_(e.step, ops::ones_like(e.step));
        const auto step = static_cast<int64_t>(e.step.item());
        const float scale = percentile_ < 100 ? clip_scale(e, grad, step) : 1.0f;
        if (e.q8)
          step_8bit(e, grad, lr, scale, step);
        else
          step_32bit(e, grad, lr, scale, step);
      }
    }
  }

 private:
  struct Entry {
    Tensor param, step, state1, state2, absmax1, absmax2, gnorm_vec;
    bool q8 = false;
  };

  // percentile_clipping: the squared gradient norm goes into gnorm_vec[step % 100] (every slot at
  // step 1); the gradient is scaled down to the percentile-th smallest of the 100 norms.
  float clip_scale(Entry& e, const Tensor& grad, int64_t step) const {
    const Tensor g = grad.dtype() == dtype::f32 ? grad : ops::to(grad, dtype::f32);
    const auto sq = static_cast<float>(ops::sum(ops::mul(g, g)).item());
    auto v = e.gnorm_vec.to_float_vector();
    const size_t at = static_cast<size_t>(step % 100);
    v[at] = 0;
    if (step == 1)
      for (auto& x : v) x += sq;
    else
      v[at] += sq;
    ops::copy_(e.gnorm_vec, Tensor::from_data(v, {100}));
    const float current = std::sqrt(v[at]);
    std::sort(v.begin(), v.end());
    const float clip = std::sqrt(v[static_cast<size_t>(percentile_)]);
    return current > clip ? clip / current : 1.0f;
  }

  // bnb's kOptimizer32bit2State / kOptimizer32bit1State.
  void step_32bit(Entry& e, const Tensor& grad, float lr, float scale, int64_t step) const {
    const Work w(e.param);
    Tensor g = grad.dtype() == dtype::f32 ? grad : ops::to(grad, dtype::f32);
    if (scale != 1.0f) g = rounded(ops::mul(g, scale), w.dtype());
    const Tensor& s1 = e.state1;
    switch (algo_) {
      case Algo::adam: {
        const float c1 = 1.0f - std::pow(beta1_, static_cast<float>(step));
        const float c2 = std::sqrt(1.0f - std::pow(beta2_, static_cast<float>(step)));
        const float step_size = -lr * c2 / c1;
        ops::mul_(s1, beta1_);
        ops::add_(s1, g, 1.0f - beta1_);
        ops::mul_(e.state2, beta2_);
        ops::add_(e.state2, ops::mul(g, g), 1.0f - beta2_);
        Tensor denom = ops::sqrt(e.state2);
        add_scalar_(denom, eps_ * c2);
        ops::add_(w.p(), ops::div(s1, denom), step_size);
        if (wd_ > 0) {
          w.round();
          ops::mul_(w.p(), 1.0f - lr * wd_);
        }
        break;
      }
      case Algo::lion: {
        if (wd_ > 0) g = rounded(ops::add(g, w.p(), wd_), w.dtype());
        Tensor u = ops::mul(s1, beta1_);
        ops::add_(u, g, 1.0f - beta1_);
        ops::add_(w.p(), sign(u), -lr);
        ops::mul_(s1, beta2_);
        ops::add_(s1, g, 1.0f - beta2_);
        break;
      }
      case Algo::momentum: {
        if (wd_ > 0) g = rounded(ops::add(g, w.p(), wd_), w.dtype());
        if (step == 1) {
          ops::copy_(s1, g);
        } else {
          ops::mul_(s1, beta1_);
          ops::add_(s1, g);
        }
        ops::add_(w.p(), s1, -lr);
        break;
      }
    }
    w.store();
  }

  // A flat view of `t` to update in place, or (`t` not contiguous) a flat copy, *copied = true.
  static Tensor flat(const Tensor& t, bool* copied) {
    try {
      *copied = false;
      return q8::view(t, {-1});
    } catch (const Error&) {
      *copied = true;
      return ops::reshape(ops::contiguous(t), {-1});
    }
  }

  // bnb's kOptimizerStatic8bit2StateBlockwise / kOptimizerStatic8bit1StateBlockwise, a chunk of
  // blocks at a time. Past the end of the tensor the last block reads gradient 0, parameter 0 and
  // the padding code, as the kernel's loads do (this enters the block's absmax).
  void step_8bit(Entry& e, const Tensor& grad, float lr, float scale, int64_t step) {
    if (!map1_.code.defined()) {
      map1_ = q8::make_map(qmap1_, true);
      if (algo_ == Algo::adam) map2_ = q8::make_map(qmap2_, false);
    }
    const int64_t n = e.param.numel(), blocks = e.absmax1.numel();
    bool param_copied = false;
    const Tensor P = flat(e.param, &param_copied);  // written back at the end if a copy
    const Tensor G = ops::reshape(grad, {-1});
    const Tensor C1 = q8::view(e.state1, {-1});  // the state is ours: contiguous
    const Tensor C2 = algo_ == Algo::adam ? q8::view(e.state2, {-1}) : Tensor();
    const sumi_dtype pdt = e.param.dtype();
    const float decay = 1.0f - lr * wd_;
    const float c1 = 1.0f - std::pow(beta1_, static_cast<float>(step));
    const float c2 = std::sqrt(1.0f - std::pow(beta2_, static_cast<float>(step)));
    const float step_size = -lr * c2 / c1;
    static const Op isfinite("aten::isfinite");
    static const Op logical_not("aten::logical_not");
    static const Op masked_fill_("aten::masked_fill_", "Scalar");
    static const Op amax("aten::amax");
    for (int64_t b0 = 0; b0 < blocks; b0 += kChunkBlocks) {
      const int64_t nbc = std::min(kChunkBlocks, blocks - b0), lo = b0 * kBlock;
      const int64_t len = std::min(n - lo, nbc * kBlock), pad = nbc * kBlock - len;
      auto padded = [&](const Tensor& t, double value) { return pad ? q8::pad_end(t, pad, value) : t; };
      auto valid = [&](const Tensor& t) { return q8::narrow(q8::view(t, {-1}), 0, 0, len); };
      Tensor g = q8::narrow(G, 0, lo, len);
      if (g.dtype() != dtype::f32) g = ops::to(g, dtype::f32);
      if (scale != 1.0f) g = ops::mul(g, scale);
      g = q8::view(padded(g, 0.0), {nbc, kBlock});
      const Tensor pc = q8::narrow(P, 0, lo, len);
      const Work w(pc);
      const Tensor a1 = q8::narrow(e.absmax1, 0, b0, nbc);
      const Tensor c1s = q8::narrow(C1, 0, lo, len);
      Tensor s1 = q8::decode(map1_, padded(c1s, static_cast<double>(q8::pad_code(map1_))), a1);
      switch (algo_) {
        case Algo::adam: {
          const Tensor a2 = q8::narrow(e.absmax2, 0, b0, nbc);
          const Tensor c2s = q8::narrow(C2, 0, lo, len);
          Tensor s2 = q8::decode(map2_, padded(c2s, static_cast<double>(q8::pad_code(map2_))), a2);
          ops::mul_(s2, beta2_);
          ops::addcmul_(s2, g, g, 1.0f - beta2_);
          ops::mul_(s1, beta1_);
          ops::add_(s1, g, 1.0f - beta1_);
          // A NaN / inf gradient element: its state becomes 0 and its parameter stays (g * 0 sums
          // to NaN exactly when there is one).
          const bool any_bad = std::isnan(ops::sum(ops::mul(g, 0.0)).item());
          Tensor bad;
          if (any_bad) {
            bad = logical_not({isfinite({g})});
            masked_fill_({s1, bad, 0.0});
            masked_fill_({s2, bad, 0.0});
          }
          const Tensor new2 = amax({s2, std::vector<int64_t>{1}, false});
          const Tensor new1 = q8::block_absmax(s1);
          ops::copy_(a1, new1);
          ops::copy_(a2, new2);
          Tensor upd = ops::sqrt(s2);
          add_scalar_(upd, c2 * eps_);
          upd = ops::div(s1, upd);
          const Tensor before = any_bad ? ops::clone(w.p()) : Tensor();
          ops::add_(w.p(), valid(upd), step_size);
          if (wd_ > 0) {
            w.round();
            ops::mul_(w.p(), decay);
          }
          if (any_bad) ops::copy_(w.p(), ops::where(valid(bad), before, w.p()));
          ops::copy_(c2s, valid(q8::encode(map2_, s2, new2)));
          ops::copy_(c1s, valid(q8::encode(map1_, s1, new1)));
          break;
        }
        case Algo::lion: {
          if (wd_ > 0) {
            ops::mul_(w.p(), decay);
            w.round();
          }
          Tensor u = ops::mul(s1, beta1_);
          ops::add_(u, g, 1.0f - beta1_);
          u = sign(u);
          ops::mul_(s1, beta2_);
          ops::add_(s1, g, 1.0f - beta2_);
          const Tensor new1 = q8::block_absmax(s1);
          ops::copy_(a1, new1);
          // The kernel keeps lr * sign in the gradient's register array (the parameter's dtype).
          ops::add_(w.p(), valid(u), -rounded(lr, pdt));
          ops::copy_(c1s, valid(q8::encode(map1_, s1, new1)));
          break;
        }
        case Algo::momentum: {
          if (wd_ > 0) g = ops::add(g, q8::view(padded(w.p(), 0.0), {nbc, kBlock}), wd_);  // not in place: g may be the gradient
          if (step == 1) {
            s1 = g;
          } else {
            ops::mul_(s1, beta1_);
            ops::add_(s1, g);
          }
          const Tensor new1 = q8::block_absmax(s1);
          ops::copy_(a1, new1);
          ops::add_(w.p(), valid(s1), -lr);
          ops::copy_(c1s, valid(q8::encode(map1_, s1, new1)));
          break;
        }
      }
      w.store();
    }
    if (param_copied) ops::copy_(e.param, q8::view(P, e.param.sizes()));
  }

  Context ctx_;
  Algo algo_;
  const char* name_;
  float beta1_ = 0, beta2_ = 0, eps_ = 0, wd_ = 0;
  int64_t min_8bit_size_ = 4096, percentile_ = 100;
  Tensor qmap1_, qmap2_;
  q8::Map map1_, map2_;
  std::vector<std::vector<Entry>> groups_;
};

struct AdamW8bit : Bnb8bit {
  explicit AdamW8bit(Context& c) : Bnb8bit(c, Algo::adam, "adamw8bit") {}
};
struct PagedAdamW8bit : Bnb8bit {
  explicit PagedAdamW8bit(Context& c) : Bnb8bit(c, Algo::adam, "pagedadamw8bit") {}
};
struct Lion8bit : Bnb8bit {
  explicit Lion8bit(Context& c) : Bnb8bit(c, Algo::lion, "lion8bit") {}
};
struct PagedLion8bit : Bnb8bit {
  explicit PagedLion8bit(Context& c) : Bnb8bit(c, Algo::lion, "pagedlion8bit") {}
};
struct SgdNesterov8bit : Bnb8bit {
  explicit SgdNesterov8bit(Context& c) : Bnb8bit(c, Algo::momentum, "sgdnesterov8bit") {}
};

#define SUMI_BNB_COMMON_PARAMS                                                                                           \
  sumi::param("min_8bit_size", SUMI_PARAM_INT, "4096",                                                                  \
              "Tensors with fewer elements keep float32 state and bnb's 32-bit formulas (bitsandbytes never goes "     \
              "below 4096)."),                                                                                          \
      sumi::param("percentile_clipping", SUMI_PARAM_INT, "100",                                                         \
                  "100 = off; p < 100 scales each tensor's gradient down to the p-th percentile of its last 100 "      \
                  "gradient norms."),                                                                                   \
      sumi::param("block_wise", SUMI_PARAM_BOOL, "true", "Block-wise absmax (2048 elements); False is not supported.")

#define SUMI_BNB_ADAM_PARAMS                                                                                             \
  sumi::param("betas", SUMI_PARAM_DOUBLE_LIST, "0.9,0.999", "Running averages of the gradient and its square."),       \
      sumi::param("eps", SUMI_PARAM_DOUBLE, "1e-8", "Added to sqrt(v) (as eps * sqrt(1 - beta2^t))."),                  \
      sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0.01", "Decoupled weight decay, applied after the update."),      \
      sumi::param("amsgrad", SUMI_PARAM_BOOL, "false", "Ignored, as bitsandbytes ignores it (a warning if True)."),      \
      sumi::param("optim_bits", SUMI_PARAM_INT, "32", "Ignored: AdamW8bit keeps 8-bit state, as in bitsandbytes."),     \
      SUMI_BNB_COMMON_PARAMS

#define SUMI_BNB_LION_PARAMS                                                                                             \
  sumi::param("betas", SUMI_PARAM_DOUBLE_LIST, "0.9,0.99",                                                              \
              "beta1 interpolates momentum and gradient for the update's sign, beta2 the momentum itself."),           \
      sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0",                                                               \
                  "8-bit tensors: p <- p * (1 - lr * weight_decay) first; float32 (small) tensors: added to the "      \
                  "gradient, as bnb's 32-bit kernel."),                                                                 \
      SUMI_BNB_COMMON_PARAMS

const sumi_param_spec kAdamParams[] = {SUMI_BNB_ADAM_PARAMS,
                                       sumi::param("is_paged", SUMI_PARAM_BOOL, "false", "No effect: sumi has no paged memory.")};
const sumi_param_spec kPagedAdamParams[] = {SUMI_BNB_ADAM_PARAMS};
const sumi_param_spec kLionParams[] = {SUMI_BNB_LION_PARAMS,
                                       sumi::param("is_paged", SUMI_PARAM_BOOL, "false", "No effect: sumi has no paged memory.")};
const sumi_param_spec kPagedLionParams[] = {SUMI_BNB_LION_PARAMS};
const sumi_param_spec kSgdParams[] = {
    sumi::param("momentum", SUMI_PARAM_DOUBLE, "0.9", "Heavy-ball momentum (required > 0; kohya adds 0.9)."),
    sumi::param("dampening", SUMI_PARAM_DOUBLE, "0", "Ignored, as bitsandbytes' SGD8bit ignores it (a warning if set)."),
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0", "Added to the gradient (coupled)."),
    sumi::param("nesterov", SUMI_PARAM_BOOL, "false", "Ignored, as bitsandbytes' SGD8bit ignores it (a warning if True)."),
    SUMI_BNB_COMMON_PARAMS};

}  // namespace

sumi_component adamw8bit_component() {
  return sumi::component<AdamW8bit>("adamw8bit", "AdamW with block-wise 8-bit state, as bitsandbytes.optim.AdamW8bit 0.41.1.",
                                    kAdamParams);
}
sumi_component pagedadamw8bit_component() {
  return sumi::component<PagedAdamW8bit>("pagedadamw8bit", "bitsandbytes' PagedAdamW8bit: adamw8bit (sumi has no paged memory).",
                                         kPagedAdamParams);
}
sumi_component lion8bit_component() {
  return sumi::component<Lion8bit>("lion8bit", "Lion with block-wise 8-bit state, as bitsandbytes.optim.Lion8bit 0.41.1.", kLionParams);
}
sumi_component pagedlion8bit_component() {
  return sumi::component<PagedLion8bit>("pagedlion8bit", "bitsandbytes' PagedLion8bit: lion8bit (sumi has no paged memory).",
                                        kPagedLionParams);
}
sumi_component sgdnesterov8bit_component() {
  return sumi::component<SgdNesterov8bit>(
      "sgdnesterov8bit", "kohya's SGDNesterov8bit: bitsandbytes.optim.SGD8bit 0.41.1 with momentum 0.9, no Nesterov.", kSgdParams);
}

}  // namespace sumi::optim
