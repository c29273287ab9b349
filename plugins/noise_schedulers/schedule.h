// Shared machinery of the noise schedulers: the training schedule (betas, alphas_cumprod) built the
// way diffusers 0.21 builds it, timestep spacing, the k-diffusion sigma helpers (interpolation,
// Karras ramp, sigma -> t) and a base class that gives every sampler the training calls
// (add_noise, velocity, alphas_cumprod). Tables are float64; the base tables reproduce diffusers'
// float32 arithmetic so that they equal its values exactly.
#pragma once

#include <sumi/plugin.hpp>

#include <string>
#include <vector>

namespace sumi::sched {

// Which optional keys a component's schema declares.
enum Feature : unsigned {
  kKarras = 1u << 0,     // use_karras_sigmas
  kEta = 1u << 1,        // eta (DDIM)
  kAlphaOne = 1u << 2,   // set_alpha_to_one (DDIM, PNDM)
  kClip = 1u << 3,       // clip_sample, clip_sample_range (DDIM, DDPM)
  kSolver = 1u << 4,     // solver_order, algorithm_type, lower_order_final (DPM-Solver)
};

struct Config {
  std::string name;  // component name, for messages
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.00085, beta_end = 0.012;
  std::string beta_schedule = "scaled_linear";
  bool v_prediction = false;
  bool rescale_zero_snr = false;
  int64_t steps_offset = 1;
  std::string spacing = "linspace";
  bool karras = false;
  double eta = 0.0;
  bool set_alpha_to_one = false;
  bool clip_sample = false;
  double clip_sample_range = 1.0;
  int64_t solver_order = 2;
  bool dpmsolver_pp = true;
  bool lower_order_final = true;
};

// Reads and validates the keys `features` declares (plus the common ones).
Config read_config(Context& ctx, const char* name, unsigned features);

[[noreturn]] void fail(const Config& c, const std::string& message);

// float32-exact betas and alphas_cumprod (with the zero-terminal-SNR rescale when asked).
void make_train_tables(const Config& c, std::vector<double>& betas, std::vector<double>& alphas_cumprod);

// Integer timesteps of DDIM/DDPM for `spacing` (descending), range-checked.
std::vector<int64_t> discrete_timesteps(const Config& c, int64_t n);
// Float timesteps of the sigma samplers (descending), range-checked.
std::vector<double> sigma_timesteps(const Config& c, int64_t n);

// k-diffusion helpers over a float32 sigma table sqrt((1 - acp) / acp).
std::vector<double> sigma_table(const std::vector<double>& alphas_cumprod);
double interp(double t, const std::vector<double>& table);
double sigma_to_t(double sigma, const std::vector<double>& log_sigmas);
// Karras et al. ramp from `first` to `last` (either order), rho 7.
std::vector<double> karras(double first, double last, int64_t n);

Tensor vec_tensor(const std::vector<double>& v);
// a * x + b * y (y may be undefined when b is 0).
Tensor lin(const Tensor& x, double a, const Tensor& y, double b);

class Base : public NoiseScheduler {
 public:
  Base(Context& ctx, const char* name, unsigned features);

  Tensor add_noise(const Tensor& original, const Tensor& noise, const Tensor& timesteps) override;
  Tensor velocity(const Tensor& sample, const Tensor& noise, const Tensor& timesteps) override;
  Tensor alphas_cumprod() override { return vec_tensor(acp_); }
  // ABI 1.4: {"a1111_name": label (+ " Karras" with use_karras_sigmas), "noises_per_step"}.
  std::string describe() override;

 protected:
  // The sampler's label in A1111's `parameters` text, and the noises gen_img draws per step
  // and image before sampling (its scheduler_num_noises_per_step).
  virtual const char* a1111_label() const = 0;
  virtual int64_t noises_per_step() const { return 1; }
  // Per-item coefficients shaped [B, 1, ...] like `like`, on its device and dtype.
  Tensor per_item(const std::vector<double>& v, const Tensor& like) const;
  std::vector<int64_t> train_indices(const Tensor& timesteps, const Tensor& like) const;
  void require_steps() const;
  void require_index(int64_t i, int64_t n) const;
  void require_same_shape(const Tensor& a, const char* what_a, const Tensor& b, const char* what_b) const;
  const Tensor& require_noise(const Tensor& noise, const Tensor& like, int64_t step_index) const;
  // Samplers with history are driven in order. The first step after set_timesteps (any index,
  // so img2img can start mid-schedule) or index 0 starts afresh: returns true then. `pairs`:
  // two model calls per step, so a start must be on a step's first call (an even index).
  bool enter(int64_t step_index, bool pairs = false);
  // sqrt(acp) clamped away from 0 so sigma/lambda samplers stay finite under zero-SNR betas.
  double acp_at(int64_t t) const;

  Config cfg_;
  std::vector<double> betas_, acp_;
  int64_t num_steps_ = 0;
  int64_t next_ = -1;  // expected next step_index of a stateful sampler; -1 = fresh
};

// The sigma-space samplers (k-diffusion family): sigmas, timesteps, init_noise_sigma and input scaling.
class SigmaBase : public Base {
 public:
  SigmaBase(Context& ctx, const char* name, unsigned features);
  Tensor timesteps() override;
  Tensor sigmas() override;
  double init_noise_sigma() override;
  Tensor scale_model_input(const Tensor& sample, int64_t step_index) override;

 protected:
  // One sigma per timestep plus a trailing 0, with their timesteps (Karras applied).
  void base_schedule(int64_t n, std::vector<double>& sigmas, std::vector<double>& timesteps) const;
  Tensor predict_x0(const Tensor& model_output, const Tensor& sample, double sigma) const;
  // sigma used to scale the model input at a step (Heun/KDPM2 override).
  virtual double input_sigma(int64_t step_index) const { return sig_[static_cast<size_t>(step_index)]; }

  std::vector<double> table_;      // training sigma table
  std::vector<double> log_table_;  // its logs
  std::vector<double> sig_;        // sigmas as exposed (last entry 0)
  std::vector<double> ts_;         // timesteps as exposed
};

}  // namespace sumi::sched
