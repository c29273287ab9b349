// sumi_noise_schedulers: sd-scripts' sampler names (and their k_* aliases) mapped to the
// diffusers 0.21 schedulers they select, with SD's training schedule as defaults.
#include "samplers.h"

using sumi::param;
using namespace sumi::sched;

// Keys every scheduler takes; `spacing` is the scheduler's diffusers 0.21 default.
#define SUMI_SCHED_COMMON(spacing)                                                                                 \
  param("prediction_type", SUMI_PARAM_STRING, "epsilon",                                                           \
        "What the model predicts: \"epsilon\" (noise) or \"v_prediction\" (SD2-v, zero-SNR models)."),              \
      param("num_train_timesteps", SUMI_PARAM_INT, "1000", "Length of the training noise schedule."),              \
      param("beta_start", SUMI_PARAM_DOUBLE, "0.00085", "First beta of the training schedule."),                   \
      param("beta_end", SUMI_PARAM_DOUBLE, "0.012", "Last beta of the training schedule."),                        \
      param("beta_schedule", SUMI_PARAM_STRING, "scaled_linear",                                                   \
            "scaled_linear (SD), linear or squaredcos_cap_v2."),                                                   \
      param("rescale_betas_zero_snr", SUMI_PARAM_BOOL, "false",                                                    \
            "Rescale betas to zero terminal SNR (Lin et al. 2023); pair with v_prediction."),                      \
      param("steps_offset", SUMI_PARAM_INT, "1", "Added to every timestep with leading spacing (SD uses 1)."),     \
      param("timestep_spacing", SUMI_PARAM_STRING, spacing,                                                        \
            "How inference timesteps are spread: leading, linspace or trailing.")

#define SUMI_SCHED_KARRAS                                                                                          \
  param("use_karras_sigmas", SUMI_PARAM_BOOL, "false", "Space the sigmas as Karras et al. (rho 7) instead.")

#define SUMI_SCHED_SOLVER(algorithm)                                                                               \
  param("algorithm_type", SUMI_PARAM_STRING, algorithm,                                                            \
        "dpmsolver++ (data prediction) or dpmsolver (noise prediction)."),                                         \
      param("solver_order", SUMI_PARAM_INT, "2", "Order of the solver: 1, 2 or 3."),                               \
      param("lower_order_final", SUMI_PARAM_BOOL, "true", "Use lower orders for the final steps (below 15 steps)."), \
      SUMI_SCHED_KARRAS

static const sumi_param_spec kDdim[] = {
    SUMI_SCHED_COMMON("leading"),
    param("eta", SUMI_PARAM_DOUBLE, "0", "Scale of the ancestral noise (0 = deterministic DDIM, 1 = DDPM-like)."),
    param("set_alpha_to_one", SUMI_PARAM_BOOL, "false", "Final step lands on alpha 1 instead of alphas_cumprod[0]."),
    param("clip_sample", SUMI_PARAM_BOOL, "false", "Clamp the predicted x0 to +-clip_sample_range."),
    param("clip_sample_range", SUMI_PARAM_DOUBLE, "1.0", "Range of clip_sample.")};
static const sumi_param_spec kDdpm[] = {
    SUMI_SCHED_COMMON("leading"),
    param("clip_sample", SUMI_PARAM_BOOL, "false", "Clamp the predicted x0 to +-clip_sample_range."),
    param("clip_sample_range", SUMI_PARAM_DOUBLE, "1.0", "Range of clip_sample.")};
static const sumi_param_spec kPndm[] = {
    SUMI_SCHED_COMMON("leading"),
    param("set_alpha_to_one", SUMI_PARAM_BOOL, "false", "Final step lands on alpha 1 instead of alphas_cumprod[0].")};
static const sumi_param_spec kSigma[] = {SUMI_SCHED_COMMON("linspace"), SUMI_SCHED_KARRAS};
static const sumi_param_spec kDpmPP[] = {SUMI_SCHED_COMMON("linspace"), SUMI_SCHED_SOLVER("dpmsolver++")};
static const sumi_param_spec kDpm[] = {SUMI_SCHED_COMMON("linspace"), SUMI_SCHED_SOLVER("dpmsolver")};

SUMI_PLUGIN(
    "sumi_noise_schedulers", "1.0.0",
    sumi::component<Ddim>("ddim", "DDIM (diffusers DDIMScheduler); eta adds ancestral noise.", kDdim),
    sumi::component<Ddpm>("ddpm", "DDPM: training noise and ancestral sampling (diffusers DDPMScheduler).", kDdpm),
    sumi::component<Pndm>("pndm", "PLMS as SD uses it (diffusers PNDMScheduler, skip_prk_steps).", kPndm),
    sumi::component<Lms>("lms", "Linear multistep in sigma space (diffusers LMSDiscreteScheduler).", kSigma),
    sumi::component<Lms>("k_lms", "Alias of lms.", kSigma),
    sumi::component<Euler>("euler", "Euler (diffusers EulerDiscreteScheduler).", kSigma),
    sumi::component<Euler>("k_euler", "Alias of euler.", kSigma),
    sumi::component<EulerAncestral>("euler_a", "Euler ancestral (diffusers EulerAncestralDiscreteScheduler).", kSigma),
    sumi::component<EulerAncestral>("k_euler_a", "Alias of euler_a.", kSigma),
    sumi::component<Heun>("heun", "Heun, two model calls per step (diffusers HeunDiscreteScheduler).", kSigma),
    sumi::component<KDpm2>("dpm_2", "DPM-Solver-2, two calls per step (diffusers KDPM2DiscreteScheduler).", kSigma),
    sumi::component<KDpm2>("k_dpm_2", "Alias of dpm_2.", kSigma),
    sumi::component<KDpm2Ancestral>("dpm_2_a", "Ancestral DPM-Solver-2 (diffusers KDPM2AncestralDiscreteScheduler).",
                                    kSigma),
    sumi::component<KDpm2Ancestral>("k_dpm_2_a", "Alias of dpm_2_a.", kSigma),
    sumi::component<DpmSolverMultistep>("dpmsolver", "DPM-Solver multistep, noise prediction (DPMSolverMultistepScheduler).",
                                        kDpm),
    sumi::component<DpmSolverMultistep>("dpmsolver++", "DPM-Solver++ 2M (diffusers DPMSolverMultistepScheduler).", kDpmPP),
    sumi::component<DpmSolverSinglestep>("dpmsingle", "DPM-Solver++ singlestep (diffusers DPMSolverSinglestepScheduler).",
                                         kDpmPP))
