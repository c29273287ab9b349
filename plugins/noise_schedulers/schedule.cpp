// Training schedule, timestep spacing and sigma helpers shared by every sampler.
#include "schedule.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace sumi::sched {

namespace {

constexpr double kPi = 3.14159265358979323846;
// Smallest alphas_cumprod the sigma/lambda samplers see: zero-terminal-SNR schedules end in 0,
// where sigma and lambda are infinite (later diffusers releases use the same floor).
constexpr double kMinAcp = 1.0 / 16777216.0;

std::string join(const std::vector<int64_t>& v) {
  std::ostringstream s;
  for (size_t i = 0; i < v.size(); ++i) s << (i ? "," : "") << v[i];
  return s.str();
}

// numpy.linspace(start, stop, num) in float64.
std::vector<double> linspace(double start, double stop, int64_t num) {
  std::vector<double> v(static_cast<size_t>(num));
  if (num == 1) {
    v[0] = start;
    return v;
  }
  const double step = (stop - start) / static_cast<double>(num - 1);
  for (int64_t i = 0; i < num; ++i) v[static_cast<size_t>(i)] = start + static_cast<double>(i) * step;
  v.back() = stop;
  return v;
}

// numpy.arange(start, 0, -step) in float64 (its length rule included).
std::vector<double> arange_down(double start, double step) {
  const auto len = static_cast<int64_t>(std::ceil((0.0 - start) / -step));
  std::vector<double> v;
  for (int64_t k = 0; k < len; ++k) v.push_back(start + static_cast<double>(k) * -step);
  return v;
}

// torch.linspace(start, end, n, dtype=float32) bit for bit as its x86 CPU kernel (AVX2 + FMA)
// computes it: blocks of 2 x 8 lanes, each lane `base + j * step` with base taken at the
// lane group's first index from whichever end is nearer, both fused multiply-adds; the
// remainder element by element.
std::vector<float> linspace_f32(float start, float end, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  if (n == 1) {
    v[0] = start;
    return v;
  }
  const float step = (end - start) / static_cast<float>(n - 1);
  const int64_t half = n / 2;
  auto scalar = [&](int64_t i) {
    return i < half ? std::fma(step, static_cast<float>(i), start) : std::fma(-step, static_cast<float>(n - i - 1), end);
  };
  constexpr int64_t kLanes = 8;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes)
    for (int64_t g = i; g < i + 2 * kLanes; g += kLanes) {
      const float base = scalar(g);
      for (int64_t j = 0; j < kLanes; ++j) v[static_cast<size_t>(g + j)] = std::fma(static_cast<float>(j), step, base);
    }
  for (; i < n; ++i) v[static_cast<size_t>(i)] = scalar(i);
  return v;
}

// torch.cumprod on CPU: double accumulator, each output rounded to float32.
std::vector<float> cumprod_f32(const std::vector<float>& a) {
  std::vector<float> out(a.size());
  double acc = 1.0;
  for (size_t i = 0; i < a.size(); ++i) {
    acc *= static_cast<double>(a[i]);
    out[i] = static_cast<float>(acc);
  }
  return out;
}

}  // namespace

void fail(const Config& c, const std::string& message) {
  throw Error(SUMI_ERR_INVALID_ARGUMENT, "noise scheduler '" + c.name + "': " + message);
}

Config read_config(Context& ctx, const char* name, unsigned features) {
  Config c;
  c.name = name;
  c.num_train_timesteps = ctx.get_int("num_train_timesteps");
  c.beta_start = ctx.get_double("beta_start");
  c.beta_end = ctx.get_double("beta_end");
  c.beta_schedule = ctx.get_string("beta_schedule");
  const std::string pred = ctx.get_string("prediction_type");
  c.rescale_zero_snr = ctx.get_bool("rescale_betas_zero_snr");
  c.steps_offset = ctx.get_int("steps_offset");
  c.spacing = ctx.get_string("timestep_spacing");
  if (features & kKarras) c.karras = ctx.get_bool("use_karras_sigmas");
  if (features & kEta) c.eta = ctx.get_double("eta");
  if (features & kAlphaOne) c.set_alpha_to_one = ctx.get_bool("set_alpha_to_one");
  if (features & kClip) {
    c.clip_sample = ctx.get_bool("clip_sample");
    c.clip_sample_range = ctx.get_double("clip_sample_range");
  }
  if (features & kSolver) {
    c.solver_order = ctx.get_int("solver_order");
    c.lower_order_final = ctx.get_bool("lower_order_final");
    const std::string algo = ctx.get_string("algorithm_type");
    if (algo != "dpmsolver++" && algo != "dpmsolver")
      fail(c, "algorithm_type must be \"dpmsolver++\" or \"dpmsolver\", got \"" + algo + "\"");
    c.dpmsolver_pp = algo == "dpmsolver++";
    if (c.solver_order < 1 || c.solver_order > 3)
      fail(c, "solver_order must be 1, 2 or 3, got " + std::to_string(c.solver_order));
  }

  if (pred == "epsilon") c.v_prediction = false;
  else if (pred == "v_prediction") c.v_prediction = true;
  else
    fail(c, "prediction_type must be \"epsilon\" or \"v_prediction\", got \"" + pred +
                "\" (SD2 768-v models use v_prediction)");
  if (c.num_train_timesteps < 2)
    fail(c, "num_train_timesteps must be at least 2, got " + std::to_string(c.num_train_timesteps));
  if (c.beta_schedule != "scaled_linear" && c.beta_schedule != "linear" && c.beta_schedule != "squaredcos_cap_v2")
    fail(c, "beta_schedule must be scaled_linear, linear or squaredcos_cap_v2, got \"" + c.beta_schedule + "\"");
  if (!(c.beta_start > 0 && c.beta_end < 1 && c.beta_start <= c.beta_end))
    fail(c, "need 0 < beta_start <= beta_end < 1, got beta_start " + std::to_string(c.beta_start) + ", beta_end " +
                std::to_string(c.beta_end));
  if (c.spacing != "leading" && c.spacing != "linspace" && c.spacing != "trailing")
    fail(c, "timestep_spacing must be leading, linspace or trailing, got \"" + c.spacing + "\"");
  if (c.steps_offset < 0) fail(c, "steps_offset must be >= 0, got " + std::to_string(c.steps_offset));
  // above 1 the deterministic part of the DDIM update would need the root of a negative number
  if (c.eta < 0 || c.eta > 1) fail(c, "eta must be in [0, 1], got " + std::to_string(c.eta));
  if (c.clip_sample_range <= 0) fail(c, "clip_sample_range must be > 0");
  return c;
}

void make_train_tables(const Config& c, std::vector<double>& betas, std::vector<double>& alphas_cumprod) {
  const int64_t n = c.num_train_timesteps;
  std::vector<float> b(static_cast<size_t>(n));
  if (c.beta_schedule == "scaled_linear") {
    const auto r = linspace_f32(static_cast<float>(std::sqrt(c.beta_start)), static_cast<float>(std::sqrt(c.beta_end)), n);
    for (size_t i = 0; i < b.size(); ++i) b[i] = r[i] * r[i];
  } else if (c.beta_schedule == "linear") {
    b = linspace_f32(static_cast<float>(c.beta_start), static_cast<float>(c.beta_end), n);
  } else {  // squaredcos_cap_v2: the cosine alpha-bar of improved DDPM, betas capped at 0.999
    auto abar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * kPi / 2), 2); };
    for (int64_t i = 0; i < n; ++i) {
      const double t1 = static_cast<double>(i) / static_cast<double>(n), t2 = static_cast<double>(i + 1) / static_cast<double>(n);
      b[static_cast<size_t>(i)] = static_cast<float>(std::min(1 - abar(t2) / abar(t1), 0.999));
    }
  }
  std::vector<float> alphas(b.size());
  for (size_t i = 0; i < b.size(); ++i) alphas[i] = 1.0f - b[i];
  if (c.rescale_zero_snr) {
    // Shift sqrt(alphas_cumprod) so its last value is 0 and rescale so its first is unchanged
    // (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed").
    const auto acp = cumprod_f32(alphas);
    std::vector<float> s(acp.size());
    for (size_t i = 0; i < s.size(); ++i) s[i] = std::sqrt(acp[i]);
    const float a0 = s.front(), aT = s.back();
    for (auto& v : s) {
      v -= aT;
      v *= a0 / (a0 - aT);
    }
    std::vector<float> bar(s.size());
    for (size_t i = 0; i < s.size(); ++i) bar[i] = s[i] * s[i];
    alphas[0] = bar[0];
    for (size_t i = 1; i < s.size(); ++i) alphas[i] = bar[i] / bar[i - 1];
    for (size_t i = 0; i < b.size(); ++i) b[i] = 1.0f - alphas[i];
    for (size_t i = 0; i < b.size(); ++i) alphas[i] = 1.0f - b[i];
  }
  const auto acp = cumprod_f32(alphas);
  betas.assign(b.begin(), b.end());
  alphas_cumprod.assign(acp.begin(), acp.end());
}

namespace {
void check_range(const Config& c, const std::vector<double>& ts, int64_t n) {
  for (double t : ts)
    if (t < 0 || t > static_cast<double>(c.num_train_timesteps - 1)) {
      std::ostringstream s;
      s << n << " steps with timestep_spacing " << c.spacing << " and steps_offset " << c.steps_offset
        << " give timestep " << t << ", outside [0, " << c.num_train_timesteps - 1
        << "]; use fewer steps, steps_offset 0 or another spacing";
      fail(c, s.str());
    }
}
}  // namespace

std::vector<int64_t> discrete_timesteps(const Config& c, int64_t n) {
  const int64_t N = c.num_train_timesteps;
  std::vector<double> ts;
  if (c.spacing == "linspace") {
    for (double v : linspace(0, static_cast<double>(N - 1), n)) ts.push_back(std::nearbyint(v));
    std::reverse(ts.begin(), ts.end());
  } else if (c.spacing == "leading") {
    const int64_t ratio = N / n;
    for (int64_t i = n - 1; i >= 0; --i) ts.push_back(static_cast<double>(i * ratio + c.steps_offset));
  } else {
    for (double v : arange_down(static_cast<double>(N), static_cast<double>(N) / static_cast<double>(n)))
      ts.push_back(std::nearbyint(v) - 1);
  }
  check_range(c, ts, n);
  return std::vector<int64_t>(ts.begin(), ts.end());
}

std::vector<double> sigma_timesteps(const Config& c, int64_t n) {
  const int64_t N = c.num_train_timesteps;
  std::vector<double> ts;
  if (c.spacing == "linspace") {
    ts = linspace(0, static_cast<double>(N - 1), n);
    std::reverse(ts.begin(), ts.end());
  } else if (c.spacing == "leading") {
    const int64_t ratio = N / n;
    for (int64_t i = n - 1; i >= 0; --i) ts.push_back(static_cast<double>(i * ratio + c.steps_offset));
  } else {
    for (double v : arange_down(static_cast<double>(N), static_cast<double>(N) / static_cast<double>(n)))
      ts.push_back(std::nearbyint(v) - 1);
  }
  check_range(c, ts, n);
  return ts;
}

std::vector<double> sigma_table(const std::vector<double>& alphas_cumprod) {
  std::vector<double> s(alphas_cumprod.size());
  for (size_t i = 0; i < s.size(); ++i) {
    // float32 like diffusers' ((1 - acp) / acp) ** 0.5 on its float32 tensor
    const float a = static_cast<float>(std::max(alphas_cumprod[i], kMinAcp));
    const float r = (1.0f - a) / a;
    s[i] = static_cast<double>(std::sqrt(r));
  }
  return s;
}

double interp(double t, const std::vector<double>& table) {
  const auto last = static_cast<double>(table.size() - 1);
  if (t <= 0) return table.front();
  if (t >= last) return table.back();
  const auto j = static_cast<size_t>(std::floor(t));
  const double slope = table[j + 1] - table[j];
  return slope * (t - static_cast<double>(j)) + table[j];
}

double sigma_to_t(double sigma, const std::vector<double>& log_sigmas) {
  const double ls = std::log(sigma);
  const auto n = static_cast<int64_t>(log_sigmas.size());
  int64_t low = 0;
  for (int64_t i = 0; i < n; ++i)
    if (ls - log_sigmas[static_cast<size_t>(i)] >= 0) low = i;
  low = std::min(low, n - 2);
  const double lo = log_sigmas[static_cast<size_t>(low)], hi = log_sigmas[static_cast<size_t>(low + 1)];
  const double w = std::clamp((lo - ls) / (lo - hi), 0.0, 1.0);
  return (1 - w) * static_cast<double>(low) + w * static_cast<double>(low + 1);
}

std::vector<double> karras(double first, double last, int64_t n) {
  const double rho = 7.0;
  const double a = std::pow(first, 1 / rho), b = std::pow(last, 1 / rho);
  std::vector<double> out;
  for (double r : linspace(0, 1, n)) out.push_back(std::pow(a + r * (b - a), rho));
  return out;
}

Tensor vec_tensor(const std::vector<double>& v) { return Tensor::from_data(v, {static_cast<int64_t>(v.size())}); }

Tensor lin(const Tensor& x, double a, const Tensor& y, double b) {
  if (b == 0 || !y.defined()) return x * a;
  return ops::add(x * a, y, b);
}

// ------------------------------------------------------------------------------------ Base
Base::Base(Context& ctx, const char* name, unsigned features) : cfg_(read_config(ctx, name, features)) {
  make_train_tables(cfg_, betas_, acp_);
}

std::string Base::describe() {
  return std::string("{\"a1111_name\": \"") + a1111_label() + (cfg_.karras ? " Karras" : "") +
         "\", \"noises_per_step\": " + std::to_string(noises_per_step()) + "}";
}

double Base::acp_at(int64_t t) const { return std::max(acp_[static_cast<size_t>(t)], kMinAcp); }

void Base::require_steps() const {
  if (num_steps_ == 0) fail(cfg_, "set_timesteps must be called before sampling");
}

void Base::require_index(int64_t i, int64_t n) const {
  require_steps();
  if (i < 0 || i >= n)
    fail(cfg_, "step_index " + std::to_string(i) + " is outside the schedule's " + std::to_string(n) + " timesteps");
}

bool Base::enter(int64_t step_index, bool pairs) {
  const bool start = next_ < 0 || step_index == 0;
  if (!start && step_index != next_)
    fail(cfg_, "this sampler keeps state between steps and must be stepped in order: expected step_index " +
                   std::to_string(next_) + " (or 0 to restart), got " + std::to_string(step_index));
  if (start && pairs && step_index % 2 != 0)
    fail(cfg_, "each step takes two model calls; start at a step's first call (an even step_index), got " +
                   std::to_string(step_index));
  next_ = step_index + 1;
  return start;
}

void Base::require_same_shape(const Tensor& a, const char* what_a, const Tensor& b, const char* what_b) const {
  if (!a.defined()) fail(cfg_, std::string(what_a) + " is missing");
  if (!b.defined()) fail(cfg_, std::string(what_b) + " is missing");
  if (a.sizes() != b.sizes()) {
    auto show = [](const std::vector<int64_t>& s) { return "[" + join(s) + "]"; };
    fail(cfg_, std::string(what_a) + " has shape " + show(a.sizes()) + " but " + what_b + " has shape " + show(b.sizes()));
  }
}

const Tensor& Base::require_noise(const Tensor& noise, const Tensor& like, int64_t step_index) const {
  if (!noise.defined())
    fail(cfg_, "step " + std::to_string(step_index) +
                   " adds fresh noise (ancestral sampling) but `noise` is NULL; the host must pass a standard normal "
                   "tensor shaped like the sample");
  require_same_shape(noise, "noise", like, "sample");
  return noise;
}

std::vector<int64_t> Base::train_indices(const Tensor& timesteps, const Tensor& like) const {
  if (!timesteps.defined() || timesteps.dim() != 1)
    fail(cfg_, "timesteps must be a 1-D tensor with one integer timestep per batch item");
  const auto v = timesteps.to_vector();
  const int64_t batch = like.dim() > 0 ? like.size(0) : 0;
  if (static_cast<int64_t>(v.size()) != batch)
    fail(cfg_, "got " + std::to_string(v.size()) + " timesteps for a batch of " + std::to_string(batch));
  std::vector<int64_t> idx;
  for (double t : v) {
    if (t != std::floor(t) || t < 0 || t >= static_cast<double>(cfg_.num_train_timesteps))
      fail(cfg_, "training timestep " + std::to_string(t) + " is not an integer in [0, " +
                     std::to_string(cfg_.num_train_timesteps - 1) + "]");
    idx.push_back(static_cast<int64_t>(t));
  }
  return idx;
}

Tensor Base::per_item(const std::vector<double>& v, const Tensor& like) const {
  std::vector<int64_t> shape(static_cast<size_t>(like.dim()), 1);
  shape[0] = static_cast<int64_t>(v.size());
  static const Op to_other("aten::to", "other");
  return to_other({Tensor::from_data(v, shape), like, false, false, none});
}

Tensor Base::add_noise(const Tensor& original, const Tensor& noise, const Tensor& timesteps) {
  require_same_shape(original, "original", noise, "noise");
  std::vector<double> a, b;
  for (int64_t t : train_indices(timesteps, original)) {
    const double acp = acp_[static_cast<size_t>(t)];
    a.push_back(std::sqrt(acp));
    b.push_back(std::sqrt(1 - acp));
  }
  return original * per_item(a, original) + noise * per_item(b, original);
}

Tensor Base::velocity(const Tensor& sample, const Tensor& noise, const Tensor& timesteps) {
  require_same_shape(sample, "sample", noise, "noise");
  std::vector<double> a, b;
  for (int64_t t : train_indices(timesteps, sample)) {
    const double acp = acp_[static_cast<size_t>(t)];
    a.push_back(std::sqrt(acp));
    b.push_back(std::sqrt(1 - acp));
  }
  return noise * per_item(a, sample) - sample * per_item(b, sample);
}

// ------------------------------------------------------------------------------- SigmaBase
SigmaBase::SigmaBase(Context& ctx, const char* name, unsigned features) : Base(ctx, name, features) {
  table_ = sigma_table(acp_);
  for (double s : table_) log_table_.push_back(static_cast<double>(static_cast<float>(std::log(s))));
}

void SigmaBase::base_schedule(int64_t n, std::vector<double>& sigmas, std::vector<double>& timesteps) const {
  if (n < 1) fail(cfg_, "num_inference_steps must be >= 1, got " + std::to_string(n));
  timesteps = sigma_timesteps(cfg_, n);
  sigmas.clear();
  for (double t : timesteps) sigmas.push_back(interp(t, table_));
  if (cfg_.karras) {
    sigmas = karras(sigmas.front(), sigmas.back(), n);
    for (size_t i = 0; i < sigmas.size(); ++i) timesteps[i] = sigma_to_t(sigmas[i], log_table_);
  }
  sigmas.push_back(0.0);
}

Tensor SigmaBase::timesteps() {
  require_steps();
  return vec_tensor(ts_);
}

Tensor SigmaBase::sigmas() {
  require_steps();
  return vec_tensor(sig_);
}

double SigmaBase::init_noise_sigma() {
  require_steps();
  const double m = *std::max_element(sig_.begin(), sig_.end());
  // diffusers 0.21: for leading spacing the first sigma is not the training maximum
  return cfg_.spacing == "leading" ? std::sqrt(m * m + 1) : m;
}

Tensor SigmaBase::scale_model_input(const Tensor& sample, int64_t step_index) {
  require_index(step_index, static_cast<int64_t>(ts_.size()));
  const double s = input_sigma(step_index);
  return sample / std::sqrt(s * s + 1);
}

Tensor SigmaBase::predict_x0(const Tensor& model_output, const Tensor& sample, double sigma) const {
  if (cfg_.v_prediction) return lin(model_output, -sigma / std::sqrt(sigma * sigma + 1), sample, 1 / (sigma * sigma + 1));
  return sample - model_output * sigma;
}

}  // namespace sumi::sched
