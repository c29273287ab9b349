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
// With block_wise=False an 8-bit tensor keeps one max per state instead (max1 / new_max1, swapped
// after every step as update_step does) and steps as the non-blockwise kernels: a precondition pass
// takes the new max of the updated state, the update pass requantizes against it — with their
// quirks kept: the precondition reads only the first 1024 * (ceil(n/4096) - 1) + 4096 elements,
// momentum's state follows the raw gradient (no clipping, no decay), and Lion's precondition runs
// after its update (see step_static).
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
constexpr int64_t kStaticChunk = kChunkBlocks * kBlock;
// block_wise=False: a registry entry before the first 8-bit tensor's state (a resume from a
// block-wise state is refused naming it).
constexpr const char* kStaticMarker = "block_wise=False";

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
    block_wise_ = ctx.get_bool("block_wise");
    if (!block_wise_ && algo == Algo::momentum && (wd_ > 0 || percentile_ < 100))
      log_warn(std::string(name) + ": with block_wise=False, weight_decay and percentile_clipping have no effect on tensors "
               "with 8-bit state: bitsandbytes' non-blockwise momentum kernels update the momentum from the raw gradient "
               "(they still apply to tensors under min_8bit_size, which keep float32 state)");
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
      if (e.q8 && !block_wise_) check_static(s.prefix, s.param);
      e.step = ctx_.state(s.prefix + "step", ops::zeros({}, dtype::f64));
      if (e.q8 && !block_wise_) {
        add_static(e, s.prefix, s.param);
      } else if (e.q8) {
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
        if (e.q8 && !block_wise_)
          step_static(e, grad, lr, scale, step);
        else if (e.q8)
          step_8bit(e, grad, lr, scale, step);
        else
          step_32bit(e, grad, lr, scale, step);
      }
    }
  }

 private:
  struct Entry {
    Tensor param, step, state1, state2, absmax1, absmax2, gnorm_vec;
    Tensor max1, new_max1, max2, new_max2;  // block_wise=False: one max per tensor and state
    bool q8 = false;
  };

  // block_wise=False on a tensor with 8-bit state: what bitsandbytes' non-blockwise kernels cannot
  // run is refused; the marker entry, created before the first such tensor's state, makes a resume
  // from a block-wise state fail on its name.
  void check_static(const std::string& prefix, const Tensor& param) {
    if (param.dtype() == dtype::bf16)
      bad_arg(name_, "bfloat16 parameters (full_bf16) are not supported with block_wise=False: bitsandbytes' non-blockwise "
                     "8-bit kernels take float32 and float16 only (it raises \"Gradient+optimizer bit data type combination not "
                     "supported\"); use block_wise=True, or train without full_bf16");
    if (param.numel() % 4 != 0)
      bad_arg(name_, "block_wise=False: tensor '" + prefix.substr(0, prefix.size() - 1) + "' has " + std::to_string(param.numel()) +
                         " elements, not a multiple of 4; bitsandbytes' non-blockwise kernels skip the last " +
                         std::to_string(param.numel() % 4) + " (their update is undefined there); use block_wise=True");
    if (!marker_.defined()) marker_ = ctx_.state(kStaticMarker, ops::zeros({}, dtype::u8));
  }

  // Optimizer{1,2}State.init_state with block_wise=False: uint8 codes shaped like the parameter and
  // max1 / new_max1 (max2 / new_max2), float32 [1], zero.
  void add_static(Entry& e, const std::string& prefix, const Tensor& param) {
    if (!qmap1_.defined()) {
      qmap1_ = ctx_.state("qmap1", Tensor::from_data(q8::dynamic_map(true), {256}));
      if (algo_ == Algo::adam) qmap2_ = ctx_.state("qmap2", Tensor::from_data(q8::dynamic_map(false), {256}));
    }
    const auto shape = param.sizes();
    e.state1 = ctx_.state(prefix + "state1", ops::zeros(shape, dtype::u8));
    e.max1 = ctx_.state(prefix + "max1", ops::zeros({1}, dtype::f32));
    e.new_max1 = ctx_.state(prefix + "new_max1", ops::zeros({1}, dtype::f32));
    if (algo_ == Algo::adam) {
      e.state2 = ctx_.state(prefix + "state2", ops::zeros(shape, dtype::u8));
      e.max2 = ctx_.state(prefix + "max2", ops::zeros({1}, dtype::f32));
      e.new_max2 = ctx_.state(prefix + "new_max2", ops::zeros({1}, dtype::f32));
    }
  }

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

  // ---- block_wise=False: bitsandbytes' kPreconditionOptimizerStatic8bit{2,1}State and
  // kOptimizerStatic8bit{2,1}State (csrc/kernels.cu, driven by ops.cu optimizerStatic8bit and
  // Optimizer{1,2}State.update_step), a chunk of kStaticChunk elements at a time.

  // The end of what the precondition kernels read: ceil(n / 4096) thread blocks start 1024
  // elements apart (blockIdx * 256 threads * NUM_PER_THREAD 4) and each loads 4096 elements, so
  // only [0, min(n, end)) enters the new max; when end > n the last load pads (gradient 0, code 128).
  static int64_t precondition_end(int64_t n) { return 1024 * ((n + 4095) / 4096 - 1) + 4096; }

  // max(|s|) with NaN ignored, as the kernels' fmaxf.
  static float max_abs(const Tensor& s) {
    static const Op amax("aten::amax");
    static const Op isnan("aten::isnan");
    static const Op masked_fill_("aten::masked_fill_", "Scalar");
    Tensor a = ops::abs(s);
    auto m = static_cast<float>(amax({a, std::vector<int64_t>{}, false}).item());
    if (std::isnan(m)) {
      masked_fill_({a, isnan({a}), 0.0});
      m = static_cast<float>(amax({a, std::vector<int64_t>{}, false}).item());
    }
    return m;
  }

  static Tensor decode_static(const q8::Map& m, const Tensor& codes, float max) {
    static const Op index_select("aten::index_select");
    Tensor s = index_select({m.code, int64_t{0}, ops::to(codes, dtype::i32)});
    ops::mul_(s, max);
    return s;
  }

  // Adam's and momentum's new state for elements [lo, lo + len), as both of their kernels compute
  // it from the stored codes: s1 = code * max1 * b1 + (1 - b1) * g, s2 = code * max2 * b2 + (1 - b2) * g * g;
  // momentum s1 = g at step 1, else code * max1 * b1 + g.
  std::pair<Tensor, Tensor> static_state(const Entry& e, const Tensor& g, int64_t lo, int64_t len, float max1, float max2,
                                         int64_t step) const {
    Tensor s1, s2;
    if (algo_ == Algo::momentum && step == 1) return {ops::clone(g), s2};
    s1 = decode_static(map1_, q8::narrow(q8::view(e.state1, {-1}), 0, lo, len), max1);
    ops::mul_(s1, beta1_);
    if (algo_ == Algo::momentum) {
      ops::add_(s1, g);
      return {s1, s2};
    }
    ops::add_(s1, g, 1.0f - beta1_);
    s2 = decode_static(map2_, q8::narrow(q8::view(e.state2, {-1}), 0, lo, len), max2);
    ops::mul_(s2, beta2_);
    ops::addcmul_(s2, g, g, 1.0f - beta2_);
    return {s1, s2};
  }

  void step_static(Entry& e, const Tensor& grad, float lr, float scale, int64_t step) {
    if (!map1_.code.defined()) {
      map1_ = q8::make_map(qmap1_, true);
      if (algo_ == Algo::adam) map2_ = q8::make_map(qmap2_, false);
    }
    const int64_t n = e.param.numel(), end = precondition_end(n), seen = std::min(n, end);
    bool param_copied = false;
    const Tensor P = flat(e.param, &param_copied);
    const Tensor G = ops::reshape(grad, {-1});
    const Tensor C1 = q8::view(e.state1, {-1});
    const Tensor C2 = algo_ == Algo::adam ? q8::view(e.state2, {-1}) : Tensor();
    const auto max1 = static_cast<float>(e.max1.item());
    const float max2 = algo_ == Algo::adam ? static_cast<float>(e.max2.item()) : 0.0f;
    // The momentum kernels scale and decay g_val but update the momentum from the raw gradient.
    const float gscale = algo_ == Algo::momentum ? 1.0f : scale;
    auto grad_at = [&](int64_t lo, int64_t len) {
      Tensor g = q8::narrow(G, 0, lo, len);
      if (g.dtype() != dtype::f32) g = ops::to(g, dtype::f32);
      return gscale != 1.0f ? ops::mul(g, gscale) : g;
    };
    const float pad1 = map1_.code.to_float_vector()[128];  // the code a padded element reads
    // Adam, momentum: new_max <- 0, the precondition pass, then the update quantizing with it.
    float new1 = 0.0f, new2 = 0.0f;
    if (algo_ != Algo::lion) {
      for (int64_t lo = 0; lo < seen; lo += kStaticChunk) {
        const int64_t len = std::min(kStaticChunk, seen - lo);
        const auto [s1, s2] = static_state(e, grad_at(lo, len), lo, len, max1, max2, step);
        new1 = std::fmax(new1, max_abs(s1));
        if (algo_ == Algo::adam) new2 = std::fmax(new2, max_abs(s2));
      }
      if (end > n && !(algo_ == Algo::momentum && step == 1)) new1 = std::fmax(new1, std::abs(pad1 * max1 * beta1_));
      if (end > n && algo_ == Algo::adam) new2 = std::fmax(new2, std::abs(map2_.code.to_float_vector()[128] * max2 * beta2_));
    } else {
      new1 = static_cast<float>(e.new_max1.item());  // Lion quantizes against the stored new_max1 (see below)
    }
    const float inv1 = 1.0f / new1, inv2 = 1.0f / new2;  // new_max_val1 = 1.0f/new_max1[0]
    const float c1 = 1.0f - std::pow(beta1_, static_cast<float>(step));
    const float c2 = std::sqrt(1.0f - std::pow(beta2_, static_cast<float>(step)));
    const float step_size = -lr * c2 / c1, decay = 1.0f - lr * wd_;
    float lion_max = 0.0f;
    for (int64_t lo = 0; lo < n; lo += kStaticChunk) {
      const int64_t len = std::min(kStaticChunk, n - lo);
      const Tensor g = grad_at(lo, len);
      const Work w(q8::narrow(P, 0, lo, len));
      const Tensor c1s = q8::narrow(C1, 0, lo, len);
      switch (algo_) {
        case Algo::adam: {
          const auto [s1, s2] = static_state(e, g, lo, len, max1, max2, step);
          Tensor upd = ops::sqrt(s2);
          add_scalar_(upd, c2 * eps_);
          ops::add_(w.p(), ops::div(s1, upd), step_size);
          if (wd_ > 0) {
            w.round();
            ops::mul_(w.p(), decay);
          }
          ops::copy_(c1s, q8::encode_scaled(map1_, s1, inv1));
          ops::copy_(q8::narrow(C2, 0, lo, len), q8::encode_scaled(map2_, s2, inv2));
          break;
        }
        case Algo::momentum: {
          const Tensor s1 = static_state(e, g, lo, len, max1, max2, step).first;
          ops::add_(w.p(), s1, -lr);
          ops::copy_(c1s, q8::encode_scaled(map1_, s1, inv1));
          break;
        }
        case Algo::lion: {
          // kOptimizerStatic8bit1State runs first (ops.cu: "the momentum update happens after the
          // parameter update"), quantizing against new_max1 as it stands; then new_max1 <- 0 and
          // the precondition kernel takes the max over the *new* codes dequantized with max1,
          // advanced once more with the same gradient. The swap below makes that max1.
          if (wd_ > 0) {
            ops::mul_(w.p(), decay);
            w.round();
          }
          Tensor s1 = decode_static(map1_, c1s, max1);
          Tensor u = ops::mul(s1, beta1_);
          ops::add_(u, g, 1.0f - beta1_);
          ops::add_(w.p(), sign(u), -lr);
          ops::mul_(s1, beta2_);
          ops::add_(s1, g, 1.0f - beta2_);
          ops::copy_(c1s, q8::encode_scaled(map1_, s1, inv1));
          if (lo < seen) {
            const int64_t m = std::min(len, seen - lo);
            Tensor next = decode_static(map1_, q8::narrow(c1s, 0, 0, m), max1);
            ops::mul_(next, beta2_);
            ops::add_(next, q8::narrow(g, 0, 0, m), 1.0f - beta2_);
            lion_max = std::fmax(lion_max, max_abs(next));
          }
          break;
        }
      }
      w.store();
    }
    if (algo_ == Algo::lion) new1 = end > n ? std::fmax(lion_max, std::abs(pad1 * max1 * beta2_)) : lion_max;
    // Optimizer{1,2}State.update_step swaps max and new_max after the call.
    ops::fill_(e.new_max1, static_cast<double>(max1));
    ops::fill_(e.max1, static_cast<double>(new1));
    if (algo_ == Algo::adam) {
      ops::fill_(e.new_max2, static_cast<double>(max2));
      ops::fill_(e.max2, static_cast<double>(new2));
    }
    if (param_copied) ops::copy_(e.param, q8::view(P, e.param.sizes()));
  }

  Context ctx_;
  Algo algo_;
  const char* name_;
  float beta1_ = 0, beta2_ = 0, eps_ = 0, wd_ = 0;
  int64_t min_8bit_size_ = 4096, percentile_ = 100;
  bool block_wise_ = true;
  Tensor qmap1_, qmap2_, marker_;
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
      sumi::param("block_wise", SUMI_PARAM_BOOL, "true",                                                                \
                  "True: one absmax per 2048 elements. False: bitsandbytes' older non-blockwise kernels, one max per "   \
                  "tensor and state (max1/new_max1); float32/float16 parameters, tensors of a multiple of 4 elements.")

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
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0",
                "Added to the gradient (coupled). With block_wise=False, no effect on 8-bit tensors (bitsandbytes' kernel)."),
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
