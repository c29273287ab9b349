// The optimizer plugins against the golden trajectories of kohya's optimizers
// (tests/data/fixtures/optimizers, see its README): 12 steps on three tensors in two groups, every
// step's parameters, state tensors and scalars compared within the fixture's own tolerances; and
// resume: 6 steps, the optimizer's registry entries copied into a fresh instance, 6 more steps,
// bitwise equal to an uninterrupted run.
#include "optim_golden_util.h"

namespace {

using namespace sumi::test::optim;

void check_golden(const Case& c) {
  CAPTURE(c.file);
  const Golden g = load(c.file);
  const Json& tl = g.j["checks"]["tolerance"];
  auto run = start(c, g);
  const int steps = static_cast<int>(g.j["steps"].size());
  // Displacement scale D: the largest |param.k - init| of each parameter over all steps.
  std::vector<double> disp_scale(3, 0.0);
  for (int k = 1; k <= steps; ++k)
    for (size_t i = 0; i < 3; ++i) {
      const std::string n = kNames[i];
      disp_scale[i] = std::max(disp_scale[i], (g.t.at("param." + std::to_string(k) + "." + n) - g.t.at("init." + n))
                                                  .abs().max().item<double>());
    }
  for (int k = 1; k <= steps; ++k) {
    CAPTURE(k);
    step(*run, g, k);
    const std::string ks = std::to_string(k);
    for (size_t i = 0; i < 3; ++i) {
      const std::string n = kNames[i];
      const at::Tensor ref = g.t.at("param." + ks + "." + n);
      check_tensor(run->params[i].detach(), ref, tol(tl, "param", "maxnorm_rel", 1e-5), tol(tl, "param", "elem_rel", 1e-5),
                   "param." + ks + "." + n);
      if (tl.contains("displacement") && !tl["displacement"]["maxnorm_rel"].is_null()) {
        const at::Tensor init = g.t.at("init." + n).to(at::kDouble);
        const double err = ((run->params[i].detach().to(at::kDouble) - init) - (ref.to(at::kDouble) - init)).abs().max().item<double>();
        CAPTURE(n);
        CHECK(err <= tl["displacement"]["maxnorm_rel"].get<double>() * disp_scale[i]);
      }
      const std::string prefix = "state." + ks + "." + n + ".";
      for (const auto& [key, ref_state] : g.t) {
        if (key.rfind(prefix, 0) != 0) continue;
        std::string sk = key.substr(prefix.size());
        const std::string mine = c.rename.count(sk) ? c.rename.at(sk) : sk;
        const auto* e = run->reg.find("optimizer", state_name(i, mine));
        CAPTURE(key);
        REQUIRE(e != nullptr);
        const Json& spread = g.j["checks"]["perturbation"];
        const bool elem_decides = !(spread.contains("state." + sk) && spread["state." + sk]["elem_rel"].get<double>() == 0.0);
        check_tensor(e->tensor, ref_state, tol(tl, "state." + sk, "maxnorm_rel", 1e-5), tol(tl, "state." + sk, "elem_rel", 1e-5), key,
                     elem_decides);
      }
      if (c.lr_per_param) {
        const double want = g.j["steps"][k - 1]["effective"]["lr_per_param"][n].get<double>();
        const auto* e = run->reg.find("optimizer", state_name(i, "lr"));
        REQUIRE(e != nullptr);
        CAPTURE(n);
        CHECK(std::abs(e->tensor.item<double>() - want) <= 1e-5 * std::abs(want));
      }
    }
    const Json& group0 = g.j["steps"][k - 1]["groups"][0];
    for (const auto& s : c.scalars) {
      CAPTURE(s);
      const auto* e = run->reg.find("optimizer", s);
      REQUIRE(e != nullptr);
      if (!group0.contains(s)) continue;  // not yet set (a step that returned early)
      const double want = group0[s].get<double>(), got = e->tensor.item<double>();
      const double rel = tl["scalars"].contains("group." + s) ? tl["scalars"]["group." + s].get<double>() : 1e-5;
      CHECK(std::abs(got - want) <= rel * std::abs(want));
    }
  }
}

// 6 steps, the optimizer's registry entries and the parameters copied into a fresh registry
// and instance (what --save_state / --resume do), 6 more: bitwise equal to 12 uninterrupted.
void check_resume(const Case& c) {
  CAPTURE(c.file);
  const Golden g = load(c.file);
  auto whole = start(c, g);
  for (int k = 1; k <= 12; ++k) step(*whole, g, k);
  auto first = start(c, g);
  for (int k = 1; k <= 6; ++k) step(*first, g, k);
  std::map<std::string, at::Tensor> params;
  for (size_t i = 0; i < 3; ++i) params[kNames[i]] = first->params[i].detach().clone();
  auto second = start(c, g, &params);
  int copied = 0;
  {
    at::NoGradGuard ng;
    for (const auto& e : second->reg.entries()) {
      const auto* saved = first->reg.find(e.component, e.name);
      REQUIRE(saved != nullptr);
      e.tensor.copy_(saved->tensor);
      ++copied;
    }
  }
  CHECK(copied == static_cast<int>(first->reg.entries().size()));
  for (int k = 7; k <= 12; ++k) step(*second, g, k);
  for (size_t i = 0; i < 3; ++i) CHECK(at::equal(second->params[i].detach(), whole->params[i].detach()));
  for (const auto& e : whole->reg.entries()) {
    CAPTURE(e.name);
    const auto* r = second->reg.find(e.component, e.name);
    REQUIRE(r != nullptr);
    CHECK(at::equal(r->tensor, e.tensor));
  }
}

const std::vector<std::string> kProdigyScalars = {"d", "d_max", "d_numerator", "d_denom", "d_hat", "k"};

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {"AdamW", "adamw", {}, {}, {}},
      {"AdamW.custom", "adamw", {{"weight_decay", "0.1"}, {"betas", "0.9,0.99"}, {"eps", "1e-6"}}, {}, {}},
      {"SGDNesterov", "sgd", {{"momentum", "0.9"}, {"nesterov", "true"}}, {}, {}},
      {"SGDNesterov.wd", "sgd", {{"momentum", "0.8"}, {"nesterov", "true"}, {"weight_decay", "1e-2"}}, {}, {}},
      {"SGD.momentum", "sgd", {{"momentum", "0.9"}}, {}, {}},
      {"Lion", "lion", {}, {}, {}},
      {"Lion.betas_wd", "lion", {{"betas", "0.95,0.98"}, {"weight_decay", "0.5"}}, {}, {}},
      // bitsandbytes' 8-bit optimizers keep these small tensors in float32 and run their 32-bit
      // kernels, which here coincide with the references (no weight decay for Lion; SGD8bit is
      // heavy-ball SGD). Where they differ see test_optim_8bit.cpp.
      {"Lion", "lion8bit", {}, {}, {{"exp_avg", "state1"}}},
      {"SGD.momentum", "sgdnesterov8bit", {}, {}, {{"momentum_buffer", "state1"}}},
      {"Prodigy", "prodigy", {{"weight_decay", "0.01"}}, kProdigyScalars, {}},
      {"Prodigy.dcoef_bc", "prodigy",
       {{"weight_decay", "0.01"}, {"decouple", "False"}, {"d_coef", "2.0"}, {"use_bias_correction", "True"}}, kProdigyScalars, {}},
      {"Prodigy.warmup", "prodigy", {{"weight_decay", "0.01"}, {"safeguard_warmup", "True"}}, kProdigyScalars, {}},
      {"Prodigy.te_lr0", "prodigy", {{"weight_decay", "0.01"}}, kProdigyScalars, {}},
      {"DAdaptAdam", "dadaptadam", {{"weight_decay", "0.01"}}, {"d", "k", "numerator_weighted"}, {}},
      {"DAdaptAdam.decouple", "dadaptadam", {{"weight_decay", "0.01"}, {"decouple", "True"}, {"use_bias_correction", "True"}},
       {"d", "k", "numerator_weighted"}, {}},
      {"DAdaptAdamPreprint", "dadaptadampreprint", {{"weight_decay", "0.01"}}, {"d", "k", "gsq_weighted"}, {}},
      {"DAdaptAdaGrad", "dadaptadagrad", {{"eps", "1e-6"}, {"momentum", "0.9"}, {"weight_decay", "0.01"}},
       {"d", "k", "gsq_weighted", "sksq_weighted", "skl1"}, {}},
      {"DAdaptAdan", "dadaptadan", {}, {"d", "k", "gsq_weighted"}, {}},
      {"DAdaptAdan.no_prox", "dadaptadan", {{"no_prox", "True"}, {"weight_decay", "0.05"}}, {"d", "k", "gsq_weighted"}, {}},
      {"DAdaptAdanIP", "dadaptadanip", {}, {"d", "k", "numerator_weighted"}, {}},
      {"DAdaptLion", "dadaptlion", {{"weight_decay", "0.01"}}, {"d", "k", "numerator_weighted"}, {}},
      {"DAdaptSGD", "dadaptsgd", {{"momentum", "0.9"}, {"weight_decay", "0.01"}}, {"d", "k", "numerator_weighted", "g0_norm"}, {}},
      {"Adafactor", "adafactor", {}, {}, {}, true},
      {"Adafactor.warmup_init", "adafactor", {{"scale_parameter", "True"}, {"relative_step", "True"}, {"warmup_init", "True"}}, {}, {}, true},
      {"Adafactor.fixed_lr", "adafactor",
       {{"scale_parameter", "False"}, {"relative_step", "False"}, {"warmup_init", "False"}, {"weight_decay", "0.01"}}, {}, {}, true},
      {"Adafactor.relstep_false", "adafactor", {{"relative_step", "False"}, {"beta1", "0.9"}, {"weight_decay", "0.01"}}, {}, {}, true},
  };
  return all;
}

const Case& find_case(const std::string& file) {
  for (const auto& c : cases())
    if (c.file == file) return c;
  FAIL("no case " << file);
  throw std::runtime_error("unreachable");
}

}  // namespace

TEST_CASE("optimizers follow kohya's golden trajectories") {
  for (const auto& c : cases()) {
    const std::string name = c.file + " " + c.plugin;
    SUBCASE(name.c_str()) { check_golden(c); }
  }
}

TEST_CASE("optimizer state resumes bit-exactly from the registry") {
  for (const char* f : {"Lion.betas_wd", "AdamW", "Prodigy.warmup", "Prodigy.dcoef_bc", "Adafactor", "Adafactor.relstep_false", "DAdaptAdam.decouple",
                        "DAdaptAdamPreprint", "DAdaptAdaGrad", "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD"}) check_resume(find_case(f));
}

TEST_CASE("kohya's optimizer names find the plugins, case-insensitively and as module.Class") {
  auto& pm = sumi::test::plugins();
  const std::pair<const char*, const char*> names[] = {
      {"AdamW", "adamw"},
      {"torch.optim.AdamW", "adamw"},
      {"Lion", "lion"},
      {"lion_pytorch.Lion", "lion"},
      {"Prodigy", "prodigy"},
      {"prodigyopt.Prodigy", "prodigy"},
      {"DAdaptation", "dadaptadampreprint"},
      {"DAdaptAdamPreprint", "dadaptadampreprint"},
      {"dadaptation.experimental.DAdaptAdamPreprint", "dadaptadampreprint"},
      {"dadaptation.DAdaptAdam", "dadaptadam"},
      {"DAdaptAdaGrad", "dadaptadagrad"},
      {"DAdaptAdan", "dadaptadan"},
      {"dadaptation.experimental.DAdaptAdanIP", "dadaptadanip"},
      {"DAdaptLion", "dadaptlion"},
      {"DAdaptSGD", "dadaptsgd"},
      {"Adafactor", "adafactor"},
      {"transformers.optimization.Adafactor", "adafactor"},
      {"AdamW8bit", "adamw8bit"},
      {"bitsandbytes.optim.AdamW8bit", "adamw8bit"},
      {"PagedAdamW8bit", "pagedadamw8bit"},
      {"bitsandbytes.optim.PagedAdamW8bit", "pagedadamw8bit"},
      {"Lion8bit", "lion8bit"},
      {"bitsandbytes.optim.Lion8bit", "lion8bit"},
      {"PagedLion8bit", "pagedlion8bit"},
      {"bitsandbytes.optim.PagedLion8bit", "pagedlion8bit"},
      {"SGDNesterov8bit", "sgdnesterov8bit"},
  };
  for (const auto& [kohya, plugin] : names) {
    CAPTURE(kohya);
    CHECK(std::string(pm.find(SUMI_KIND_OPTIMIZER, kohya).component->name) == plugin);
  }
}

TEST_CASE("optimizer arguments the references crash on, or sumi does not have, are refused with the reason") {
  sumi::host::Registry reg;
  CHECK_THROWS_WITH(sumi::test::make(SUMI_KIND_OPTIMIZER, "dadaptadagrad", reg, {}),
                    doctest::Contains("pass e.g. --optimizer_args eps=1e-6"));
  CHECK_THROWS_WITH(sumi::test::make(SUMI_KIND_OPTIMIZER, "prodigy", reg, {{"slice_p", "11"}}), doctest::Contains("slice_p=11 is not supported"));
  CHECK_THROWS_WITH(sumi::test::make(SUMI_KIND_OPTIMIZER, "dadaptadan", reg, {{"betas", "0.9,0.99"}}),
                    doctest::Contains("betas takes 3 values"));
  CHECK_THROWS_WITH(sumi::test::make(SUMI_KIND_OPTIMIZER, "adafactor", reg, {{"eps", "1e-30"}}), doctest::Contains("eps takes two values"));
  CHECK_THROWS_WITH(sumi::test::make(SUMI_KIND_OPTIMIZER, "prodigy", reg, {{"fsdp_in_use", "true"}}),
                    doctest::Contains("fsdp_in_use=True is not supported"));
  CHECK_THROWS_WITH(sumi::test::make(SUMI_KIND_OPTIMIZER, "dadaptadam", reg, {{"nonsense", "1"}}), doctest::Contains("has no parameter 'nonsense'"));

  // Different non-zero group lrs: the references raise at the first step, so does the plugin.
  const Golden g = load("Prodigy");
  Case c{"Prodigy", "prodigy", {}, {}, {}};
  auto run = start(c, g);
  for (size_t i = 0; i < 3; ++i) run->params[i].mutable_grad() = g.t.at(std::string("grad.1.") + kNames[i]).clone();
  const double lrs[] = {0.5, 1.0};
  CHECK(run->opt->vtable<sumi_optimizer_vtable>().step(run->opt->self(), lrs, 2) != SUMI_OK);
  CHECK(std::string(sumi::host::host_api()->last_error()).find("--text_encoder_lr 0") != std::string::npos);
}

TEST_CASE("lr schedulers equal kohya's get_scheduler_fix values (lr_schedulers.json)") {
  std::ifstream in(sumi::test::fixture("optimizers/lr_schedulers.json"));
  REQUIRE(in.good());
  Json j;
  in >> j;
  int checked = 0;
  for (const auto& [name, entry] : j.items()) {
    if (name == "_notes" || name == "adafactor") continue;  // adafactor: the Adafactor golden's lr_per_param
    CAPTURE(name);
    std::map<std::string, std::string> cfg;
    int64_t total = 0, warmup = 0;
    const auto& cli = entry["kohya_cli"];
    for (size_t i = 0; i + 1 < cli.size(); i += 2) {
      const std::string flag = cli[i].get<std::string>(), value = cli[i + 1].get<std::string>();
      if (flag == "--max_train_steps") total = std::stoll(value);
      if (flag == "--lr_warmup_steps") warmup = std::stoll(value);
      if (flag == "--lr_scheduler_num_cycles") cfg["num_cycles"] = value;
      if (flag == "--lr_scheduler_power") cfg["power"] = value;
      if (flag == "--lr_scheduler_args") {
        std::string v = value.substr(value.find('=') + 1);
        if (v.size() >= 2 && v.front() == '\'') v = v.substr(1, v.size() - 2);  // ast.literal_eval's quotes
        cfg[value.substr(0, value.find('='))] = v;
      }
    }
    sumi::host::Registry reg;
    auto sched = sumi::test::make(SUMI_KIND_LR_SCHEDULER, name, reg, cfg, "lr_scheduler");
    const auto base = entry["base_lrs"].get<std::vector<double>>();
    const double learning_rate = *std::max_element(base.begin(), base.end());  // kohya's --learning_rate (polynomial)
    auto factor = [&](int64_t step) {
      sumi_lr_query q{sizeof(sumi_lr_query), step, total, warmup, learning_rate};
      double f = -1;
      sched->check(sched->vtable<sumi_lr_scheduler_vtable>().factor(sched->self(), &q, &f), "factor");
      return f;
    };
    const auto& used = entry["lr_used_at_step"];
    for (size_t k = 0; k < used.size(); ++k)
      for (size_t gi = 0; gi < base.size(); ++gi) {
        CAPTURE(k);
        CHECK(base[gi] * factor(static_cast<int64_t>(k)) == doctest::Approx(used[k][gi].get<double>()).epsilon(1e-12));
        ++checked;
      }
    for (size_t gi = 0; gi < base.size(); ++gi)
      CHECK(base[gi] * factor(total) == doctest::Approx(entry["lr_after_last_step"][gi].get<double>()).epsilon(1e-12));
  }
  CHECK(checked == 7 * 20 * 2);
}

TEST_CASE("the adafactor lr scheduler refuses a warm-up (as kohya), piecewise_constant a malformed rule") {
  sumi::host::Registry reg;
  {
    // constant with a warm-up: kohya raises ("does not require num_warmup_steps"); so does sumi.
    auto constant = sumi::test::make(SUMI_KIND_LR_SCHEDULER, "constant", reg, {}, "lr_scheduler");
    sumi_lr_query q{sizeof(sumi_lr_query), 0, 10, 3, 1e-3};
    double f = -1;
    CHECK(constant->vtable<sumi_lr_scheduler_vtable>().factor(constant->self(), &q, &f) != SUMI_OK);
    CHECK(std::string(sumi::host::host_api()->last_error()).find("constant_with_warmup") != std::string::npos);
    q.warmup_steps = 0;
    CHECK(constant->vtable<sumi_lr_scheduler_vtable>().factor(constant->self(), &q, &f) == SUMI_OK);
    CHECK(f == 1.0);
  }
  auto sched = sumi::test::make(SUMI_KIND_LR_SCHEDULER, "adafactor", reg, {}, "lr_scheduler");
  sumi_lr_query q{sizeof(sumi_lr_query), 0, 10, 2, 1e-3};
  double f = -1;
  CHECK(sched->vtable<sumi_lr_scheduler_vtable>().factor(sched->self(), &q, &f) != SUMI_OK);
  CHECK(std::string(sumi::host::host_api()->last_error()).find("--lr_warmup_steps 0") != std::string::npos);
  q.warmup_steps = 0;
  CHECK(sched->vtable<sumi_lr_scheduler_vtable>().factor(sched->self(), &q, &f) == SUMI_OK);
  CHECK(f == 1.0);
  CHECK_THROWS_WITH(sumi::test::make(SUMI_KIND_LR_SCHEDULER, "piecewise_constant", reg, {{"step_rules", "1:3,x:7,0.1"}}, "lr_scheduler"),
                    doctest::Contains("'x' is not a number"));
  CHECK_THROWS_WITH(sumi::test::make(SUMI_KIND_LR_SCHEDULER, "piecewise_constant", reg, {}, "lr_scheduler"),
                    doctest::Contains("requires 'step_rules'"));
}

TEST_CASE("adafactor steps bf16 parameters in float32 and rounds back, as transformers does") {
  const Golden g = load("Adafactor.relstep_false");
  const Case c{"Adafactor.relstep_false", "adafactor", {{"relative_step", "False"}, {"beta1", "0.9"}, {"weight_decay", "0.01"}}, {}, {}};
  std::map<std::string, at::Tensor> rounded;
  for (const char* n : kNames) rounded[n] = g.t.at(std::string("init.") + n).to(at::kBFloat16).to(at::kFloat);
  auto low = start(c, g, &rounded);
  for (auto& p : low->params) p.set_data(p.detach().to(at::kBFloat16));
  auto ref = start(c, g, &rounded);
  for (int k = 1; k <= 4; ++k) {
    std::vector<double> lrs;
    for (const auto& lr : g.j["steps"][k - 1]["lr_used"]) lrs.push_back(lr.get<double>());
    for (size_t i = 0; i < 3; ++i) {
      const at::Tensor grad = g.t.at("grad." + std::to_string(k) + "." + kNames[i]).to(at::kBFloat16);
      low->params[i].mutable_grad() = grad.clone();
      ref->params[i].mutable_grad() = grad.to(at::kFloat);
    }
    for (auto* r : {low.get(), ref.get()})
      r->opt->check(r->opt->vtable<sumi_optimizer_vtable>().step(r->opt->self(), lrs.data(), static_cast<int64_t>(lrs.size())), "step");
    at::NoGradGuard ng;
    for (size_t i = 0; i < 3; ++i) {
      ref->params[i].copy_(ref->params[i].to(at::kBFloat16).to(at::kFloat));
      CHECK((low->params[i].scalar_type() == at::kBFloat16));
      CHECK(at::equal(low->params[i].detach().to(at::kFloat), ref->params[i].detach()));
    }
  }
}
