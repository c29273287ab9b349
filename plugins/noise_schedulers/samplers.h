// The sampler classes of sumi_noise_schedulers, one per diffusers scheduler (registered in
// plugin.cpp under sd-scripts' sampler names). Each follows diffusers 0.21's update rule for
// epsilon and v-prediction; step_index counts over timesteps() (Heun and the KDPM2 pair
// interleave two model evaluations per step, so their schedules are 2n-1 long).
#pragma once

#include "schedule.h"

#include <deque>

namespace sumi::sched {

// DDIM (Song et al.), eta > 0 adds eta-scaled ancestral noise.
class Ddim : public Base {
 public:
  explicit Ddim(Context& ctx);
  void set_timesteps(int64_t n) override;
  Tensor timesteps() override;
  Tensor sigmas() override;
  double init_noise_sigma() override { return 1.0; }
  Tensor scale_model_input(const Tensor& sample, int64_t step_index) override;
  Tensor step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) override;

 protected:
  const char* a1111_label() const override { return "DDIM"; }
  Ddim(Context& ctx, const char* name, unsigned features);
  Tensor predict_x0(const Tensor& model_output, const Tensor& sample, double acp) const;
  std::vector<int64_t> ts_;
};

// DDPM ancestral sampling (fixed_small variance); also the training scheduler.
class Ddpm : public Ddim {
 public:
  explicit Ddpm(Context& ctx);
  Tensor step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) override;

 protected:
  const char* a1111_label() const override { return "DDPM"; }
};

// PNDM with skip_prk_steps: the pseudo linear multistep (PLMS) method SD uses.
class Pndm : public Base {
 public:
  explicit Pndm(Context& ctx);
  void set_timesteps(int64_t n) override;
  Tensor timesteps() override;
  Tensor sigmas() override;
  double init_noise_sigma() override { return 1.0; }
  Tensor scale_model_input(const Tensor& sample, int64_t step_index) override;
  Tensor step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) override;

 protected:
  const char* a1111_label() const override { return "PLMS"; }

 private:
  std::vector<int64_t> ts_;
  std::deque<Tensor> ets_;
  Tensor cur_sample_;
  int64_t counter_ = 0;  // calls since the start, as diffusers counts them
};

class Lms : public SigmaBase {
 public:
  explicit Lms(Context& ctx);
  void set_timesteps(int64_t n) override;
  Tensor step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) override;
  const char* a1111_label() const override { return "LMS"; }

 private:
  double coefficient(int64_t order, int64_t i, int64_t current) const;
  std::deque<Tensor> derivatives_;
};

class Euler : public SigmaBase {
 public:
  explicit Euler(Context& ctx);
  void set_timesteps(int64_t n) override;
  Tensor step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) override;

 protected:
  const char* a1111_label() const override { return "Euler"; }
};

class EulerAncestral : public SigmaBase {
 public:
  explicit EulerAncestral(Context& ctx);
  void set_timesteps(int64_t n) override;
  Tensor step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) override;

 protected:
  const char* a1111_label() const override { return "Euler a"; }
};

// Heun's second-order method (Karras et al. algorithm 2 without churn).
class Heun : public SigmaBase {
 public:
  explicit Heun(Context& ctx);
  void set_timesteps(int64_t n) override;
  Tensor step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) override;
  const char* a1111_label() const override { return "Heun"; }

 private:
  Tensor prev_derivative_, prev_sample_;
  double dt_ = 0;
};

// DPM-Solver-2 in k-diffusion's form (KDPM2), optionally ancestral.
class KDpm2 : public SigmaBase {
 public:
  KDpm2(Context& ctx, const char* name, bool ancestral);
  explicit KDpm2(Context& ctx) : KDpm2(ctx, "dpm_2", false) {}
  void set_timesteps(int64_t n) override;
  Tensor step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) override;

 protected:
  double input_sigma(int64_t step_index) const override;
  const char* a1111_label() const override { return ancestral_ ? "DPM2 a" : "DPM2"; }
  // gen_img draws two noises per step for KDPM2AncestralDiscreteScheduler.
  int64_t noises_per_step() const override { return ancestral_ ? 2 : 1; }

 private:
  bool ancestral_;
  std::vector<double> interpol_, up_, down_;  // interleaved like sig_
  Tensor prev_sample_;
};

class KDpm2Ancestral : public KDpm2 {
 public:
  explicit KDpm2Ancestral(Context& ctx) : KDpm2(ctx, "dpm_2_a", true) {}
};

// DPM-Solver / DPM-Solver++ (Lu et al.), multistep or singlestep, on the discrete schedule.
class DpmSolver : public Base {
 public:
  DpmSolver(Context& ctx, const char* name, bool singlestep);
  void set_timesteps(int64_t n) override;
  Tensor timesteps() override;
  Tensor sigmas() override;
  double init_noise_sigma() override { return 1.0; }
  Tensor scale_model_input(const Tensor& sample, int64_t step_index) override;
  Tensor step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) override;

 protected:
  // gen_img's A1111 labels: the multistep solver (either algorithm) "DPM++ 2M", singlestep "DPM++ SDE".
  const char* a1111_label() const override { return singlestep_ ? "DPM++ SDE" : "DPM++ 2M"; }

 private:
  double alpha(int64_t t) const;
  double sigma(int64_t t) const;
  double lambda(int64_t t) const;
  Tensor convert(const Tensor& model_output, int64_t t, const Tensor& sample) const;
  Tensor update(int order, const std::vector<int64_t>& ts, int64_t prev_t, const Tensor& sample) const;

  bool singlestep_;
  std::vector<int64_t> ts_;
  std::vector<int> order_list_;  // singlestep
  std::deque<Tensor> outputs_;   // newest last, `solver_order` long (undefined = not yet)
  Tensor single_sample_;
  int64_t lower_order_nums_ = 0;
};

class DpmSolverMultistep : public DpmSolver {
 public:
  explicit DpmSolverMultistep(Context& ctx) : DpmSolver(ctx, "dpmsolver (multistep)", false) {}
};
class DpmSolverSinglestep : public DpmSolver {
 public:
  explicit DpmSolverSinglestep(Context& ctx) : DpmSolver(ctx, "dpmsingle", true) {}
};

}  // namespace sumi::sched
