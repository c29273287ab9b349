// The `lycoris.kohya` network: LyCORIS's LoHa and LoKr (KohakuBlueleaf/LyCORIS,
// lycoris/modules/loha.py and lokr.py, as sd-scripts loads them with
// `--network_module lycoris.kohya --network_args algo=loha|lokr`). `loha` and `lokr` are the
// same network with the algorithm preset.
//
// Every wrapped layer gets a weight update dW of the layer's weight shape, built from small
// factors, and the layer computes base(x) + multiplier * op(x, dW) (op = linear or conv2d with
// the layer's stride / padding), which is what LyCORIS's forward computes by adding
// multiplier * dW to the weight. Merging adds multiplier * dW to the weight.
//
// LoHa (Hadamard product of two low-rank products), rank r, scale = alpha / r:
//   dW = (hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b) * scale        [out, in * k * k]
//   with use_tucker on a k x k (k > 1) conv, each factor is a Tucker product instead:
//   W_i[p, q, :, :] = sum_ab hada_t_i[a, b, :, :] hada_w_i_a[a, p] hada_w_i_b[b, q].
//   Init: w1_a ~ N(0, 0.1), w1_b ~ N(0, 1), w2_b ~ N(0, 1), w2_a = 0, t ~ N(0, 0.1); dW starts 0.
// LoKr (Kronecker product), out = out_l * out_k, in = in_m * in_n from LyCORIS's
// factorization(n, factor):
//   dW = kron(W1 [out_l, in_m], W2 [out_k, in_n(, k, k)]) * scale
//   W1 = lokr_w1, or lokr_w1_a @ lokr_w1_b when decompose_both and r < max(out_l, in_m) / 2;
//   W2 = lokr_w2 when r >= max(out_k, in_n) / 2, else lokr_w2_a @ lokr_w2_b (conv: w2_b is
//   [r, in_n * k * k]) or, with use_tucker on a k x k conv, the Tucker product of lokr_t2,
//   lokr_w2_a [r, out_k], lokr_w2_b [r, in_n]. scale = alpha / r, but 1 (alpha stored as r)
//   when both W1 and W2 are full matrices. Init: the full / _a factors kaiming-uniform(sqrt 5),
//   lokr_w2 or lokr_w2_b zero; dW starts 0.
// Training: rank_dropout zeroes output rows of dW (each kept with probability 1 - p; divided by
// the kept fraction with rank_dropout_scale); module_dropout skips the whole update of a layer
// for a forward with probability p. Both draw from the host's seeded generator.
#include "presets.h"

#include <sumi/targets.hpp>

#include <sumi/plugin.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <utility>

namespace sumi::lycoris {

namespace {

using sumi::shape_str;
using sumi::ops::zeros;
using sumi::ops::fill_;

using sumi::Tensor;
namespace ops = sumi::ops;

[[noreturn]] void fail(sumi_status code, const std::string& msg) { throw Error(code, "lycoris: " + msg); }

std::string num(double v) {
  std::string s = std::to_string(v);
  s.erase(s.find_last_not_of('0') + 1);
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

void normal_(const Tensor& t, double std) {
  static const Op op("aten::normal_", "");
  op({t, 0.0, std});
}

// torch.nn.init.kaiming_uniform_(w, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
// fan_in = size(1) * prod(size(2:)).
void kaiming_uniform_sqrt5(const Tensor& w) {
  static const Op uniform("aten::uniform_", "");
  auto s = w.sizes();
  int64_t fan_in = s.at(1);
  for (size_t i = 2; i < s.size(); ++i) fan_in *= s[i];
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  uniform({w, -bound, bound});
}

Tensor kron(const Tensor& a, const Tensor& b) {
  static const Op op("aten::kron", "");
  return op({a, b});
}

// LyCORIS's factorization(dimension, factor): dimension = m * n with m <= n. A positive factor
// dividing the dimension is taken as is; otherwise m grows through the divisors while m + n
// shrinks and m stays <= factor (factor -1: no bound), which ends at the most balanced split.
std::pair<int64_t, int64_t> factorization(int64_t dimension, int64_t factor) {
  if (factor > 0 && dimension % factor == 0) {
    int64_t m = factor, n = dimension / factor;
    if (m > n) std::swap(m, n);
    return {m, n};
  }
  if (factor < 0) factor = dimension;
  int64_t m = 1, n = dimension;
  const int64_t length = m + n;
  while (m < n) {
    int64_t new_m = m + 1;
    while (dimension % new_m != 0) ++new_m;
    const int64_t new_n = dimension / new_m;
    if (new_m + new_n > length || new_m > factor) break;
    m = new_m;
    n = new_n;
  }
  if (m > n) std::swap(m, n);
  return {m, n};
}

enum class Algo { none, loha, lokr };

// The tensors of one LyCORIS module as a file names them ("hada_w1_a", ..., "alpha") and their shapes.
using FileParts = std::map<std::string, std::vector<int64_t>>;

const char* const kLohaParts[] = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"};
const char* const kLokrParts[] = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"};

// The algorithm a factor's name belongs to (none for "alpha" and unknown names).
Algo part_algo(const std::string& part) {
  for (const char* p : kLohaParts)
    if (part == p) return Algo::loha;
  for (const char* p : kLokrParts)
    if (part == p) return Algo::lokr;
  return Algo::none;
}

// "<module>.<part>" of a LyCORIS key with kohya's module prefixes; false for anything else.
bool split_key(const std::string& key, std::string& module, std::string& part) {
  const size_t dot = key.rfind('.');
  if (dot == std::string::npos || dot == 0) return false;
  module = key.substr(0, dot);
  part = key.substr(dot + 1);
  if (module.rfind("lora_unet_", 0) != 0 && module.rfind("lora_te", 0) != 0) return false;
  return part == "alpha" || part_algo(part) != Algo::none;
}

// Where a module's factors put its rank (LyCORIS's lora_dim), from their shapes; 0 when every
// factor is a full matrix (LoKr with lokr_w1 and lokr_w2: the rank is not in the file).
int64_t file_rank(const FileParts& p) {
  auto dim0 = [&](const char* k) { return p.count(k) ? p.at(k).at(0) : 0; };
  if (p.count("hada_t1")) return dim0("hada_t1");
  if (p.count("hada_w1_b")) return dim0("hada_w1_b");
  if (p.count("lokr_w1_a")) return p.at("lokr_w1_a").at(1);
  if (p.count("lokr_t2")) return dim0("lokr_t2");
  if (p.count("lokr_w2_b")) return dim0("lokr_w2_b");
  return 0;
}

struct Module {
  std::string name;
  bool conv = false;
  std::vector<int64_t> stride{1, 1}, padding{0, 0};
  std::vector<int64_t> base_shape;  // [out, in] or [out, in, kh, kw]
  int64_t dim = 0;
  double scale = 1.0;
  bool tucker = false;
  // LoKr layout
  int64_t out_l = 0, out_k = 0, in_m = 0, in_n = 0;
  bool full_w1 = false, full_w2 = false;
  // parameters by file suffix ("hada_w1_a", "lokr_w2", ...), and the alpha buffer
  std::map<std::string, Tensor> p;
  Tensor alpha;
  mutable Tensor cached;  // m * dW for inference (no grad, set_training(false)), until something changes
};

// W[p, q, ...] = sum_ab t[a, b, ...] wa[a, p] wb[b, q]  (LyCORIS's rebuild_tucker)
Tensor tucker(const Tensor& t, const Tensor& wa, const Tensor& wb) {
  const Tensor tp = ops::permute(t, {2, 3, 0, 1});                             // [kh, kw, r, r]
  const Tensor w = ops::matmul(ops::matmul(ops::transpose(wa, 0, 1), tp), wb);  // [kh, kw, out, in]
  return ops::contiguous(ops::permute(w, {2, 3, 0, 1}));
}

class LycorisNetwork : public sumi::Network {
 public:
  LycorisNetwork(sumi::Context& ctx, const std::string& preset) : ctx_(ctx) {
    std::string algo = ctx.get_string("algo");
    std::transform(algo.begin(), algo.end(), algo.begin(), [](unsigned char c) { return std::tolower(c); });
    if (!preset.empty() && !algo.empty() && algo != preset)
      fail(SUMI_ERR_INVALID_ARGUMENT, "algo=" + algo + " given to the '" + preset + "' network; drop algo or use --network_module lycoris.kohya");
    if (algo.empty()) algo = preset;
    preset_ = preset;
    // No algo yet is allowed until attach: a weights file may still decide it (configure_from_weights).
    if (algo == "loha") algo_ = Algo::loha;
    else if (algo == "lokr") algo_ = Algo::lokr;
    else if (algo.empty()) algo_ = Algo::none;
    else
      fail(SUMI_ERR_INVALID_ARGUMENT, "algo '" + algo + "' is not supported; sumi's lycoris.kohya supports algo=loha and algo=lokr" +
                                          (algo == "lora" || algo == "locon" ? " (for LoCon use --network_module networks.lora with conv_dim)" : ""));
    s_.network = "lycoris";
    s_.dim = ctx.get_int("dim");
    s_.alpha = ctx.get_double("alpha");
    const int64_t conv_dim = ctx.get_int("conv_dim");
    double conv_alpha = ctx.get_double("conv_alpha");
    factor_ = ctx.get_int("factor");
    decompose_both_ = ctx.get_bool("decompose_both");
    use_tucker_ = ctx.get_bool("use_tucker");
    const double dropout = ctx.get_double("dropout");
    rank_dropout_ = ctx.get_double("rank_dropout");
    rank_dropout_scale_ = ctx.get_bool("rank_dropout_scale");
    module_dropout_ = ctx.get_double("module_dropout");
    const bool unet_only = ctx.get_bool("train_unet_only");
    const bool te_only = ctx.get_bool("train_text_encoder_only");
    if (s_.dim < 1) fail(SUMI_ERR_INVALID_ARGUMENT, "dim is " + std::to_string(s_.dim) + "; the rank must be at least 1");
    if (conv_dim == 0 || conv_dim < -1)
      fail(SUMI_ERR_INVALID_ARGUMENT, "conv_dim is " + std::to_string(conv_dim) + "; give a rank >= 1 for the k x k convolutions, or leave it "
                                      "out (-1: dim, as LyCORIS); a preset without convolutions (attn-mlp, full-lin, ...) leaves them out");
    if (factor_ == 0 || factor_ < -1)
      fail(SUMI_ERR_INVALID_ARGUMENT, "factor is " + std::to_string(factor_) + "; it is -1 (most balanced split) or a positive split size");
    check_algo_settings();
    if (dropout != 0)
      fail(SUMI_ERR_INVALID_ARGUMENT, "dropout is " + num(dropout) + "; LyCORIS's LoHa / LoKr do not implement it (they only warn), so sumi "
                                      "refuses it; use rank_dropout or module_dropout");
    for (const auto& [key, v] : {std::pair{"rank_dropout", rank_dropout_}, std::pair{"module_dropout", module_dropout_}})
      if (v < 0 || v >= 1) fail(SUMI_ERR_INVALID_ARGUMENT, std::string(key) + " is " + num(v) + "; a probability in [0, 1)");
    if (rank_dropout_scale_ && rank_dropout_ == 0)
      fail(SUMI_ERR_INVALID_ARGUMENT, "rank_dropout_scale is set without rank_dropout; it would do nothing");
    preset_set_ = &find_preset(ctx.get_string("preset"));
    if (use_tucker_ && !preset_set_->enable_conv)
      fail(SUMI_ERR_INVALID_ARGUMENT, std::string("use_tucker applies to k x k convolutions, which preset ") + preset_set_->name +
                                          " does not wrap; use preset full, unet-only or unet-convblock-only");
    if (unet_only && te_only)
      fail(SUMI_ERR_INVALID_ARGUMENT, "train_unet_only and train_text_encoder_only are both set; that would train nothing");
    if (conv_alpha == -1) conv_alpha = s_.alpha;  // LyCORIS: conv_alpha defaults to network_alpha
    s_.conv_dim = conv_dim == -1 ? s_.dim : conv_dim;  // LyCORIS's kohya wrapper: conv_dim defaults to network_dim
    s_.conv_alpha = conv_alpha;
    s_.unet = !te_only;
    s_.text_encoder = !unet_only;
  }

  std::vector<bool> attach(const std::vector<const sumi_module_info*>& infos) override {
    if (!modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "attach called twice; a network wraps one model");
    if (algo_ == Algo::none)
      fail(SUMI_ERR_INVALID_ARGUMENT, "no algo given; sumi's lycoris.kohya supports algo=loha and algo=lokr (LyCORIS's default, "
                                      "algo=lora / LoCon, is not supported: use --network_module networks.lora with conv_dim)");
    std::vector<bool> selected(infos.size(), false);
    slot_.assign(infos.size(), -1);
    for (const Target& t : targets_of(infos)) {
      const sumi_module_info& info = *infos[t.index];
      Module m;
      m.name = info.name;
      m.conv = info.kind == SUMI_MODULE_CONV2D;
      if (m.conv) {
        m.stride = {info.stride[0], info.stride[1]};
        m.padding = {info.padding[0], info.padding[1]};
        m.base_shape = {info.out_features, info.in_features, info.kernel[0], info.kernel[1]};
      } else {
        m.base_shape = {info.out_features, info.in_features};
      }
      const Tensor weight = Tensor::borrow(info.weight);
      if (weight.defined() && weight.sizes() != m.base_shape)
        fail(SUMI_ERR_INVALID_ARGUMENT, "module '" + m.name + "': its weight is " + shape_str(weight.sizes()) +
                                            " but its description says " + shape_str(m.base_shape));
      create(m, t.dim, t.alpha, weight, info.role == SUMI_ROLE_UNET ? "unet" : "text_encoder");
      slot_[t.index] = static_cast<int64_t>(modules_.size());
      by_name_[m.name] = modules_.size();
      modules_.push_back(std::move(m));
      selected[t.index] = true;
    }
    return selected;
  }

  Tensor forward(int64_t index, const Tensor& input, const Tensor& base) override {
    const Module& m = module(index);
    if (training_ && module_dropout_ > 0 && uniform01() < module_dropout_) return base;
    // Generation calls every layer once per step with the same dW; LyCORIS rebuilds it each time.
    const bool cache = cache_ok_ && !sumi::api().grad_mode_enabled();
    if (cache && m.cached.defined()) return apply(m, m.cached, input, base);
    Tensor dw = delta(m);
    if (training_ && rank_dropout_ > 0) {
      static const Op rand("aten::rand", "");
      Tensor keep = ops::to(ops::gt(rand({std::vector<int64_t>{m.base_shape[0]}}), rank_dropout_), dw.dtype());
      if (rank_dropout_scale_) keep = keep / ops::mean(keep);
      std::vector<int64_t> view(m.base_shape.size(), 1);
      view[0] = m.base_shape[0];
      dw = dw * ops::reshape(keep, view);
    }
    dw = dw * multiplier_;
    if (cache) m.cached = dw;
    return apply(m, dw, input, base);
  }

  Tensor weight_delta(int64_t index) override { return delta(module(index)) * multiplier_; }

  void set_multiplier(double mult) override {
    multiplier_ = mult;
    drop_cache();
  }

  // Also decides whether dW may be cached: only after the host said "not training" (the
  // parameters do not change until it says otherwise or loads a file).
  void set_training(bool training) override {
    training_ = training;
    cache_ok_ = !training;
    drop_cache();
  }

  void load(const std::vector<std::string>& names, const std::vector<Tensor>& tensors) override {
    if (modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "load before attach: the network does not know its modules yet");
    if (names.size() != tensors.size())
      fail(SUMI_ERR_INVALID_ARGUMENT, "load got " + std::to_string(names.size()) + " names for " + std::to_string(tensors.size()) + " tensors");
    const char* prefix = algo_ == Algo::loha ? "hada_" : "lokr_";
    const char* other = algo_ == Algo::loha ? "lokr_" : "hada_";
    // Sort the file into modules: <module>.<part>.
    std::map<std::string, std::map<std::string, Tensor>> file;
    for (size_t i = 0; i < names.size(); ++i) {
      const std::string& key = names[i];
      const size_t dot = key.rfind('.');
      const std::string part = dot == std::string::npos ? "" : key.substr(dot + 1);
      if (part.rfind(other, 0) == 0)
        fail(SUMI_ERR_INVALID_ARGUMENT, "the file's tensor '" + key + "' is " + (algo_ == Algo::loha ? "LoKr" : "LoHa") + "; this network is " +
                                            algo_name() + ": use algo=" + (algo_ == Algo::loha ? "lokr" : "loha"));
      if (part != "alpha" && part.rfind(prefix, 0) != 0)
        fail(SUMI_ERR_INVALID_ARGUMENT, "the file's tensor '" + key + "' is not a LyCORIS " + algo_name() + " key (expected <module>." + prefix +
                                            "... or <module>.alpha); is this a network of another kind?");
      file[key.substr(0, dot)][part] = tensors[i];
    }
    // Check everything before copying anything.
    for (const auto& [mod, parts] : file) {
      auto it = by_name_.find(mod);
      if (it == by_name_.end())
        fail(SUMI_ERR_NOT_FOUND, "the file's module '" + mod + "' is not wrapped by this network (" + std::to_string(modules_.size()) +
                                     " wrapped modules); " + coverage_hint(file));
      const Module& m = modules_[it->second];
      for (const auto& [part, t] : parts) {
        if (part == "alpha") {
          if (t.numel() != 1) fail(SUMI_ERR_INVALID_ARGUMENT, "the file's '" + mod + ".alpha' has shape " + shape_str(t.sizes()) + "; an alpha is one number");
          continue;
        }
        auto pit = m.p.find(part);
        if (pit == m.p.end())
          fail(SUMI_ERR_INVALID_ARGUMENT, "the file's '" + mod + "." + part + "' does not fit this network's layout of the module (it has " +
                                              parts_str(m) + "); " + layout_hint());
        if (t.sizes() != pit->second.sizes())
          fail(SUMI_ERR_INVALID_ARGUMENT, "the file's '" + mod + "." + part + "' has shape " + shape_str(t.sizes()) + " but this network's is " +
                                              shape_str(pit->second.sizes()) + "; " + layout_hint());
      }
      for (const auto& [part, t] : m.p)
        if (!parts.count(part))
          fail(SUMI_ERR_INVALID_ARGUMENT, "the file has no '" + mod + "." + part + "' (it has " + [&] {
            std::string s;
            for (const auto& [k, v] : parts) s += (s.empty() ? "" : ", ") + k;
            return s;
          }() + "); " + layout_hint());
    }
    std::vector<std::string> missing;
    for (const Module& m : modules_)
      if (!file.count(m.name)) missing.push_back(m.name);
    if (!missing.empty())
      fail(SUMI_ERR_NOT_FOUND, "the file has no weights for " + std::to_string(missing.size()) + " of the " + std::to_string(modules_.size()) +
                                   " wrapped modules (first: '" + missing.front() + "'); " + coverage_hint(file));

    drop_cache();
    NoGradGuard no_grad;
    for (const auto& [mod, parts] : file) {
      Module& m = modules_[by_name_.at(mod)];
      for (const auto& [part, t] : parts)
        if (part != "alpha") ops::copy_(m.p.at(part), t);
      auto a = parts.find("alpha");
      double alpha = a == parts.end() ? 0.0 : a->second.item();
      if (alpha == 0) alpha = static_cast<double>(m.dim);
      if (algo_ == Algo::lokr && m.full_w1 && m.full_w2) alpha = static_cast<double>(m.dim);
      fill_(m.alpha, alpha);
      m.scale = alpha / static_cast<double>(m.dim);
    }
  }

  // ABI 1.3. A LyCORIS file of this network's algorithm(s): <module>.<factor> with kohya's module
  // prefixes, and each such module's alpha. A file mixing LoHa and LoKr modules is read by none
  // (its LoKr tensors are left unread, so the host names them).
  std::vector<bool> probe(const std::vector<sumi::FileTensor>& tensors, const std::string&) override {
    std::map<std::string, Algo> module_algo;
    bool loha = false, lokr = false;
    std::string mod, part;
    for (const auto& t : tensors)
      if (split_key(t.name, mod, part) && part != "alpha") {
        module_algo[mod] = part_algo(part);
        (part_algo(part) == Algo::loha ? loha : lokr) = true;
      }
    const Algo readable = loha ? Algo::loha : Algo::lokr;
    const bool ok_algo = preset_.empty() || (preset_ == "loha") == (readable == Algo::loha);
    std::vector<bool> out;
    for (const auto& t : tensors) {
      bool yes = false;
      if (ok_algo && split_key(t.name, mod, part)) {
        auto it = module_algo.find(mod);
        const int64_t n = [&] {
          int64_t k = 1;
          for (int64_t d : t.shape) k *= d;
          return k;
        }();
        yes = it != module_algo.end() && it->second == readable && (part == "alpha" ? n == 1 : part_algo(part) == readable);
      }
      out.push_back(yes);
    }
    return out;
  }

  // LyCORIS's create_lycoris_from_weights: the algorithm (from the factors' names), which modules
  // (exactly the file's) and each module's layout as the file has it: its rank, LoKr's split
  // and which factors are full or low-rank, Tucker factors; alphas come with load. The
  // configuration's dim / conv_dim / factor / decompose_both / use_tucker give way to the file.
  void configure_from_weights(const std::vector<sumi::FileTensor>& tensors, const std::string&) override {
    if (!modules_.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "configure_from_weights after attach; it must come first");
    std::map<std::string, FileParts> file;
    std::string loha_key, lokr_key;
    for (const auto& t : tensors) {
      std::string mod, part;
      if (!split_key(t.name, mod, part))
        fail(SUMI_ERR_INVALID_ARGUMENT, "the file's tensor '" + t.name + "' is not a LyCORIS LoHa / LoKr key (expected lora_unet_* / lora_te*"
                                        " modules with hada_* / lokr_* factors and alpha); is this a network of another kind?");
      if (!file[mod].emplace(part, t.shape).second) fail(SUMI_ERR_INVALID_ARGUMENT, "the file's tensor '" + t.name + "' is given twice");
      if (part_algo(part) == Algo::loha && loha_key.empty()) loha_key = t.name;
      if (part_algo(part) == Algo::lokr && lokr_key.empty()) lokr_key = t.name;
    }
    if (!loha_key.empty() && !lokr_key.empty())
      fail(SUMI_ERR_UNSUPPORTED, "the file mixes LoHa ('" + loha_key + "') and LoKr ('" + lokr_key + "') modules; sumi's network has one algorithm");
    if (loha_key.empty() && lokr_key.empty()) fail(SUMI_ERR_INVALID_ARGUMENT, "the file has no LoHa / LoKr factors (only alphas, or nothing)");
    const Algo file_algo = loha_key.empty() ? Algo::lokr : Algo::loha;
    if (algo_ != Algo::none && algo_ != file_algo)
      fail(SUMI_ERR_INVALID_ARGUMENT, "the file is " + std::string(file_algo == Algo::loha ? "LoHa ('" + loha_key : "LoKr ('" + lokr_key) +
                                          "') but this network is " + algo_name() + "; use algo=" + (file_algo == Algo::loha ? "loha" : "lokr") +
                                          " or leave algo out");
    algo_ = file_algo;
    check_algo_settings();
    std::map<std::string, int64_t> dims;
    for (const auto& [mod, parts] : file) {
      if (parts.size() == 1 && parts.count("alpha")) fail(SUMI_ERR_INVALID_ARGUMENT, "the file has '" + mod + ".alpha' but no factors of that module");
      int64_t r = file_rank(parts);
      if (r == 0) r = 1;  // LoKr with both factors full: scale 1 whatever the rank (see create)
      dims[mod] = r;
    }
    file_ = std::move(file);
    s_.module_dims = std::move(dims);
    s_.dim = s_.module_dims.begin()->second;
    s_.unet = s_.text_encoder = true;
  }

  // kohya's ss_network_dim / ss_network_alpha (train_network.py writes them for LyCORIS too).
  std::map<std::string, std::string> metadata() override {
    return {{"ss_network_dim", std::to_string(s_.dim)}, {"ss_network_alpha", sumi::py_float(s_.alpha)}};
  }

 private:
  static Tensor apply(const Module& m, const Tensor& dw, const Tensor& input, const Tensor& base) {
    Tensor x = input.dtype() == dw.dtype() ? input : ops::to(input, dw.dtype());
    Tensor y = m.conv ? ops::conv2d(x, dw, Tensor(), m.stride, m.padding) : ops::linear(x, dw);
    if (y.dtype() != base.dtype()) y = ops::to(y, base.dtype());
    return base + y;
  }

  void drop_cache() {
    for (Module& m : modules_) m.cached = Tensor();
  }

  struct Target {
    size_t index;
    int64_t dim;
    double alpha;
  };

  // The modules to wrap: a configured file's modules exactly (any Linear / Conv2d of the model
  // named in it, at the file's rank; alphas come with load), else the preset's, Linear and 1x1
  // convs at dim / alpha and k x k convs at conv_dim / conv_alpha (alpha 0 means the rank).
  std::vector<Target> targets_of(const std::vector<const sumi_module_info*>& infos) const {
    std::vector<Target> out;
    if (!s_.module_dims.empty()) {
      for (size_t i = 0; i < infos.size(); ++i) {
        const sumi_module_info& m = *infos[i];
        if ((m.kind != SUMI_MODULE_LINEAR && m.kind != SUMI_MODULE_CONV2D) || !m.name) continue;
        auto it = s_.module_dims.find(m.name);
        if (it != s_.module_dims.end()) out.push_back({i, it->second, static_cast<double>(it->second)});
      }
      return out;
    }
    for (const Choice& c : choose_modules(infos, *preset_set_, s_.unet, s_.text_encoder)) {
      const int64_t dim = c.conv_rank ? s_.conv_dim : s_.dim;
      const double alpha = c.conv_rank ? s_.conv_alpha : s_.alpha;
      out.push_back({c.index, dim, alpha == 0 ? static_cast<double>(dim) : alpha});
    }
    return out;
  }

  const char* algo_name() const { return algo_ == Algo::loha ? "LoHa" : algo_ == Algo::lokr ? "LoKr" : "LoHa / LoKr (no algo yet)"; }

  void check_algo_settings() const {
    if (algo_ == Algo::loha && (factor_ != -1 || decompose_both_))
      fail(SUMI_ERR_INVALID_ARGUMENT, std::string(factor_ != -1 ? "factor" : "decompose_both") + " is a LoKr setting; algo=loha has none (use algo=lokr)");
  }

  std::string layout_hint() const {
    return std::string("hint: set dim (network_dim) / conv_dim to the file's ranks") +
           (algo_ == Algo::lokr ? ", factor and decompose_both as trained" : "") + (use_tucker_ ? "" : ", use_tucker=true if it has _t tensors");
  }

  std::string coverage_hint(const std::map<std::string, std::map<std::string, Tensor>>& file) const {
    bool unet = false, te = false;
    for (const auto& [mod, parts] : file) {
      if (mod.rfind("lora_unet_", 0) == 0) unet = true;
      if (mod.rfind("lora_te", 0) == 0) te = true;
    }
    return std::string("hint: the file covers ") +
           (unet && te ? "the U-Net and the text encoder(s)" : unet ? "only the U-Net (train_unet_only)" : "only the text encoder(s) (train_text_encoder_only)") +
           "; sumi wraps kohya's LoRA modules (3x3 convolutions only with conv_dim)";
  }

  static std::string parts_str(const Module& m) {
    std::string s;
    for (const auto& [k, v] : m.p) s += (s.empty() ? "" : ", ") + k;
    return s;
  }

  double uniform01() const {
    static const Op rand("aten::rand", "");
    return rand({std::vector<int64_t>{1}}).item();
  }

  Tensor& add(Module& m, const Tensor& /*like*/, const char* group, const std::string& part, std::vector<int64_t> shape) {
    Tensor init = zeros(std::move(shape));
    // Initialisation as LyCORIS: see the header comment.
    if (part == "hada_w1_a" || part == "hada_t1" || part == "hada_t2") normal_(init, 0.1);
    else if (part == "hada_w1_b" || part == "hada_w2_b") normal_(init, 1.0);
    else if (part == "lokr_w1" || part == "lokr_w1_a" || part == "lokr_w1_b" || part == "lokr_w2_a" || part == "lokr_t2") kaiming_uniform_sqrt5(init);
    // hada_w2_a, lokr_w2, lokr_w2_b: zero
    m.p[part] = ctx_.param(m.name + "." + part, init, group);
    return m.p[part];
  }

  void create(Module& m, int64_t dim, double alpha, const Tensor& weight, const char* group) {
    m.dim = dim;
    const int64_t out = m.base_shape[0], in = m.base_shape[1];
    const bool kxk = m.conv && (m.base_shape[2] != 1 || m.base_shape[3] != 1);
    const int64_t kk = m.conv ? m.base_shape[2] * m.base_shape[3] : 1;
    // A module configured from a file takes the file's layout; otherwise the settings decide it.
    const auto fit = file_.find(m.name);
    const FileParts* fp = fit == file_.end() ? nullptr : &fit->second;
    m.tucker = fp ? (fp->count("hada_t1") || fp->count("lokr_t2")) : use_tucker_ && kxk;
    if (algo_ == Algo::loha) {
      if (m.tucker) {
        for (const char* t : {"hada_t1", "hada_t2"}) add(m, weight, group, t, {dim, dim, m.base_shape[2], m.base_shape[3]});
        for (const char* w : {"hada_w1_a", "hada_w2_a"}) add(m, weight, group, w, {dim, out});
        for (const char* w : {"hada_w1_b", "hada_w2_b"}) add(m, weight, group, w, {dim, in});
      } else {
        for (const char* w : {"hada_w1_a", "hada_w2_a"}) add(m, weight, group, w, {out, dim});
        for (const char* w : {"hada_w1_b", "hada_w2_b"}) add(m, weight, group, w, {dim, in * kk});
      }
    } else {
      if (fp) {
        file_split(m, *fp, out, in);
      } else {
        std::tie(m.in_m, m.in_n) = factorization(in, factor_);
        std::tie(m.out_l, m.out_k) = factorization(out, factor_);
        m.full_w1 = !(decompose_both_ && static_cast<double>(dim) < std::max(m.out_l, m.in_m) / 2.0);
      }
      if (m.full_w1) {
        add(m, weight, group, "lokr_w1", {m.out_l, m.in_m});
      } else {
        add(m, weight, group, "lokr_w1_a", {m.out_l, dim});
        add(m, weight, group, "lokr_w1_b", {dim, m.in_m});
      }
      m.full_w2 = fp ? fp->count("lokr_w2") > 0 : static_cast<double>(dim) >= std::max(m.out_k, m.in_n) / 2.0;
      if (m.full_w2) {
        m.tucker = false;
        if (m.conv) add(m, weight, group, "lokr_w2", {m.out_k, m.in_n, m.base_shape[2], m.base_shape[3]});
        else add(m, weight, group, "lokr_w2", {m.out_k, m.in_n});
      } else if (m.tucker) {
        add(m, weight, group, "lokr_t2", {dim, dim, m.base_shape[2], m.base_shape[3]});
        add(m, weight, group, "lokr_w2_a", {dim, m.out_k});
        add(m, weight, group, "lokr_w2_b", {dim, m.in_n});
      } else {
        add(m, weight, group, "lokr_w2_a", {m.out_k, dim});
        add(m, weight, group, "lokr_w2_b", {dim, m.in_n * kk});
      }
      if (m.full_w1 && m.full_w2) alpha = static_cast<double>(dim);  // LyCORIS: both full matrices, scale 1
    }
    m.scale = alpha / static_cast<double>(dim);
    if (fp) check_file_layout(m, *fp);
    Tensor a0 = zeros({});
    fill_(a0, alpha);
    m.alpha = ctx_.state(m.name + ".alpha", a0);
  }

  // LoKr's split of a module configured from a file: (out_l, in_m) from lokr_w1 or
  // lokr_w1_a / lokr_w1_b, whether W1 is full from which of them the file has.
  static void file_split(Module& m, const FileParts& fp, int64_t out, int64_t in) {
    m.full_w1 = fp.count("lokr_w1") > 0;
    const char* key = m.full_w1 ? "lokr_w1" : "lokr_w1_a";
    if (!fp.count(key) || (!m.full_w1 && !fp.count("lokr_w1_b")))
      fail(SUMI_ERR_INVALID_ARGUMENT, "the file's module '" + m.name + "' has neither lokr_w1 nor lokr_w1_a and lokr_w1_b");
    const std::vector<int64_t>& a = fp.at(key);
    const int64_t out_l = a.at(0), in_m = m.full_w1 ? a.at(1) : fp.at("lokr_w1_b").at(1);
    if (out_l < 1 || in_m < 1 || out % out_l != 0 || in % in_m != 0)
      fail(SUMI_ERR_INVALID_ARGUMENT, "the file's '" + m.name + "." + key + "' splits the layer's " + std::to_string(out) + " x " +
                                          std::to_string(in) + " weight as " + std::to_string(out_l) + " x " + std::to_string(in_m) +
                                          ", which do not divide it; is the file made for another model?");
    m.out_l = out_l;
    m.in_m = in_m;
    m.out_k = out / out_l;
    m.in_n = in / in_m;
  }

  // After create from a file: the module has exactly the file's factors at the file's shapes.
  static void check_file_layout(const Module& m, const FileParts& fp) {
    for (const auto& [part, shape] : fp) {
      if (part == "alpha") continue;
      auto it = m.p.find(part);
      if (it == m.p.end())
        fail(SUMI_ERR_INVALID_ARGUMENT, "the file's '" + m.name + "." + part + "' does not fit the module's layout (from the file's factors: " +
                                            parts_str(m) + ")");
      if (it->second.sizes() != shape)
        fail(SUMI_ERR_INVALID_ARGUMENT, "the file's '" + m.name + "." + part + "' has shape " + shape_str(shape) + " but the layer (" +
                                            shape_str(m.base_shape) + ") with the file's rank " + std::to_string(m.dim) + " needs " +
                                            shape_str(it->second.sizes()) + "; is the file made for another model?");
    }
    for (const auto& [part, t] : m.p)
      if (!fp.count(part)) fail(SUMI_ERR_INVALID_ARGUMENT, "the file has no '" + m.name + "." + part + "', which its other factors imply");
  }

  // dW * scale (without the multiplier), in the layer's weight shape.
  Tensor delta(const Module& m) const {
    const auto& p = m.p;
    Tensor w;
    if (algo_ == Algo::loha) {
      if (m.tucker) {
        w = tucker(p.at("hada_t1"), p.at("hada_w1_a"), p.at("hada_w1_b")) * tucker(p.at("hada_t2"), p.at("hada_w2_a"), p.at("hada_w2_b"));
      } else {
        w = ops::matmul(p.at("hada_w1_a"), p.at("hada_w1_b")) * ops::matmul(p.at("hada_w2_a"), p.at("hada_w2_b"));
        if (m.conv) w = ops::reshape(w, m.base_shape);
      }
    } else {
      Tensor w1 = m.full_w1 ? p.at("lokr_w1") : ops::matmul(p.at("lokr_w1_a"), p.at("lokr_w1_b"));
      Tensor w2 = m.full_w2 ? p.at("lokr_w2")
                  : m.tucker ? tucker(p.at("lokr_t2"), p.at("lokr_w2_a"), p.at("lokr_w2_b"))
                             : ops::matmul(p.at("lokr_w2_a"), p.at("lokr_w2_b"));
      if (m.conv) {
        w1 = ops::reshape(w1, {m.out_l, m.in_m, 1, 1});
        w2 = ops::reshape(w2, {m.out_k, m.in_n, m.base_shape[2], m.base_shape[3]});
      }
      w = kron(w1, w2);
    }
    return w * m.scale;
  }

  const Module& module(int64_t index) const {
    if (index < 0 || index >= static_cast<int64_t>(slot_.size()) || slot_[static_cast<size_t>(index)] < 0)
      fail(SUMI_ERR_NOT_FOUND, "module index " + std::to_string(index) + " is not wrapped by this network (attach selected " +
                                   std::to_string(modules_.size()) + " of " + std::to_string(slot_.size()) + " modules)");
    return modules_[static_cast<size_t>(slot_[static_cast<size_t>(index)])];
  }

  sumi::Context ctx_;
  std::string preset_;  // "loha" / "lokr" for the aliases, "" for lycoris.kohya
  const Preset* preset_set_ = nullptr;  // LyCORIS's module preset (network_args preset)
  Algo algo_ = Algo::none;
  std::map<std::string, FileParts> file_;  // configure_from_weights: each module's layout as the file has it
  targets::Settings s_;
  int64_t factor_ = -1;
  bool decompose_both_ = false, use_tucker_ = false, rank_dropout_scale_ = false;
  double rank_dropout_ = 0, module_dropout_ = 0;
  double multiplier_ = 1.0;
  bool training_ = false, cache_ok_ = false;
  std::vector<Module> modules_;
  std::vector<int64_t> slot_;
  std::map<std::string, size_t> by_name_;
};

class KohyaNetwork : public LycorisNetwork {
 public:
  explicit KohyaNetwork(sumi::Context& ctx) : LycorisNetwork(ctx, "") {}
};
class LohaNetwork : public LycorisNetwork {
 public:
  explicit LohaNetwork(sumi::Context& ctx) : LycorisNetwork(ctx, "loha") {}
};
class LokrNetwork : public LycorisNetwork {
 public:
  explicit LokrNetwork(sumi::Context& ctx) : LycorisNetwork(ctx, "lokr") {}
};

#define SUMI_LYCORIS_PARAMS(ALGO_DEFAULT, ALGO_HELP)                                                                                    \
  sumi::param("algo", SUMI_PARAM_STRING, ALGO_DEFAULT, ALGO_HELP),                                                                     \
      sumi::param("dim", SUMI_PARAM_INT, "4", "Rank of the linear and 1x1-conv layers (network_dim)."),                                \
      sumi::param("alpha", SUMI_PARAM_DOUBLE, "1", "Scale numerator: dW is multiplied by alpha / dim; 0 means alpha = dim (network_alpha)."), \
      sumi::param("preset", SUMI_PARAM_STRING, "full", "LyCORIS's module preset: full, full-lin, attn-mlp, attn-only, unet-only, unet-transformer-only, unet-convblock-only."), \
      sumi::param("conv_dim", SUMI_PARAM_INT, "-1", "Rank of the k x k convolutions the preset wraps (-1 = dim, as LyCORIS)."), \
      sumi::param("conv_alpha", SUMI_PARAM_DOUBLE, "-1", "Alpha of the 3x3 convolutions (-1 = alpha)."),                               \
      sumi::param("factor", SUMI_PARAM_INT, "-1", "LoKr: split size of LyCORIS's factorization (-1 = the most balanced split)."),       \
      sumi::param("decompose_both", SUMI_PARAM_BOOL, "false", "LoKr: also make the small Kronecker factor low-rank (w1_a @ w1_b)."),    \
      sumi::param("use_tucker", SUMI_PARAM_BOOL, "false", "3x3 convolutions as a Tucker product (hada_t1/t2, lokr_t2); needs conv_dim."), \
      sumi::param("dropout", SUMI_PARAM_DOUBLE, "0", "Refused unless 0: LyCORIS's LoHa / LoKr do not implement it."),                  \
      sumi::param("rank_dropout", SUMI_PARAM_DOUBLE, "0", "Training: probability of zeroing each output row of dW per forward."),      \
      sumi::param("rank_dropout_scale", SUMI_PARAM_BOOL, "false", "Divide the rank-dropout mask by its mean."),                         \
      sumi::param("module_dropout", SUMI_PARAM_DOUBLE, "0", "Training: probability of skipping a layer's update for a forward."),       \
      sumi::param("train_unet_only", SUMI_PARAM_BOOL, "false", "Wrap only U-Net modules (network_train_unet_only)."),                   \
      sumi::param("train_text_encoder_only", SUMI_PARAM_BOOL, "false", "Wrap only text-encoder modules (network_train_text_encoder_only).")

const sumi_param_spec kKohyaParams[] = {SUMI_LYCORIS_PARAMS("", "loha or lokr (LyCORIS's other algorithms are not supported).")};
const sumi_param_spec kLohaParams[] = {SUMI_LYCORIS_PARAMS("", "Optional; loha if given.")};
const sumi_param_spec kLokrParams[] = {SUMI_LYCORIS_PARAMS("", "Optional; lokr if given.")};

}  // namespace

}  // namespace sumi::lycoris

SUMI_PLUGIN("sumi_lycoris", "0.1.0",
            sumi::component<sumi::lycoris::KohyaNetwork>("lycoris.kohya", "LyCORIS LoHa / LoKr (--network_args algo=loha|lokr) in LyCORIS's file format.",
                                                         sumi::lycoris::kKohyaParams),
            sumi::component<sumi::lycoris::LohaNetwork>("loha", "LyCORIS LoHa (Hadamard product of low-rank factors); lycoris.kohya with algo=loha.",
                                                        sumi::lycoris::kLohaParams),
            sumi::component<sumi::lycoris::LokrNetwork>("lokr", "LyCORIS LoKr (Kronecker product, factor); lycoris.kohya with algo=lokr.",
                                                        sumi::lycoris::kLokrParams))
