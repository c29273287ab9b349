// `sumi bench`: the SD jobs run in sumi-bench, installed next to sumi (plugins/sd/bench: it builds
// random-weight SD models from the SD plugin's modules, which the host does not link); the
// `optimizer` job runs here, through the optimizer plugins as `sumi train` loads them.
// docs/performance.md.
#include "commands.h"

#include "app.h"
#include "core/component.h"
#include "core/error.h"
#include "core/typed_plugins.h"
#include "core/runtime.h"

#include <ATen/ATen.h>
#include <sumi/torch_compat.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace sumi::app {

namespace {

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

// What `sumi bench` reads itself; everything else goes to sumi-bench unchanged.
struct BenchArgs {
  std::vector<std::string> jobs;        // empty: sumi-bench's default jobs, then optimizer
  std::vector<std::string> optimizers;  // empty: every optimizer plugin found
  std::vector<std::string> plugin_dirs;
  int threads = 0, steps = 3;
  int64_t optimizer_params = int64_t{1} << 23;
  bool tiny = false, help = false;
  std::string device;                // --device (also forwarded): where the optimizer job steps
  std::vector<std::string> forward;  // arguments for sumi-bench
};

BenchArgs parse_bench_args(const std::vector<std::string>& args) {
  BenchArgs b;
  bool jobs_given = false, params_given = false;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i], value;
    const auto eq = a.find('=');
    const bool inline_value = a.rfind("--", 0) == 0 && eq != std::string::npos;
    if (inline_value) value = a.substr(eq + 1), a = a.substr(0, eq);
    auto take = [&]() -> std::string {
      if (inline_value) return value;
      if (i + 1 >= args.size()) throw host::UserError("sumi bench: " + a + " needs a value");
      return args[++i];
    };
    auto to_int = [&](const std::string& v) -> int64_t {
      try {
        size_t used = 0;
        const long long n = std::stoll(v, &used);
        if (used == v.size() && n >= 0) return n;
      } catch (const std::exception&) {
      }
      throw host::UserError("sumi bench: " + a + " expects a non-negative integer, got '" + v + "'");
    };
    if (a == "--jobs") {
      b.jobs = split_commas(take()), jobs_given = true;
    } else if (a == "--optimizers") {
      b.optimizers = split_commas(take());
    } else if (a == "--optimizer_params") {
      b.optimizer_params = to_int(take()), params_given = true;
      if (b.optimizer_params < 65536) throw host::UserError("sumi bench: --optimizer_params must be at least 65536");
    } else if (a == "--plugin-dir") {
      b.plugin_dirs.push_back(take());
    } else {
      if (a == "--help" || a == "-h") b.help = true;
      if (a == "--tiny") b.tiny = true;
      if (a == "--device") {
        b.device = take();
        b.forward.push_back(a);
        b.forward.push_back(b.device);
        continue;
      }
      if (a == "--threads" || a == "--steps") {
        const std::string v = take();
        (a == "--threads" ? b.threads : b.steps) = static_cast<int>(to_int(v));
        b.forward.push_back(a);
        b.forward.push_back(v);
        continue;
      }
      b.forward.push_back(args[i]);
    }
  }
  if (b.tiny && !params_given) b.optimizer_params = int64_t{1} << 18;
  if (!jobs_given) b.jobs = {"peak", "unet", "lora", "cfg", "optimizer"};
  if (!b.optimizers.empty() && std::find(b.jobs.begin(), b.jobs.end(), "optimizer") == b.jobs.end())
    throw host::UserError("sumi bench: --optimizers needs the optimizer job (--jobs ...,optimizer)");
  return b;
}

// Runs sumi-bench with `args` and waits for it.
void run_sumi_bench(const std::vector<std::string>& args) {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  const auto bench = (ec ? std::filesystem::path("sumi") : self).parent_path() / "sumi-bench";
  if (!std::filesystem::exists(bench))
    throw host::UserError("sumi bench: " + bench.string() + " is missing (it is built and installed with sumi; rebuild)");
  std::vector<std::string> owned = {bench.string()};
  owned.insert(owned.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : owned) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid < 0) throw host::UserError("sumi bench: cannot start " + bench.string());
  if (pid == 0) {
    ::execv(bench.c_str(), argv.data());
    std::_Exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw host::UserError("sumi bench: " + bench.string() + " failed (exit status " +
                          std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ")");
}

double cpu_now() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Peak RSS since the last reset (VmHWM; writing 5 to clear_refs resets it).
void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }
double peak_rss_gib() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / (1024.0 * 1024.0);
  return 0;
}

struct Timing {
  double seconds = 0, cpu_seconds = 0;
};

// Median wall and CPU seconds of `n` calls, each waiting for `device`'s queued work.
Timing median_of(int n, const c10::Device& device, const std::function<void()>& fn) {
  std::vector<double> wall, cpu;
  for (int i = 0; i < n; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_now();
    fn();
    torch_compat::synchronize(device);
    wall.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    cpu.push_back(cpu_now() - c0);
  }
  std::sort(wall.begin(), wall.end());
  std::sort(cpu.begin(), cpu.end());
  return {wall[wall.size() / 2], cpu[cpu.size() / 2]};
}

// The machine's memory bandwidth as an optimizer sees it: a += 1e-9 b in place over float32
// arrays of `n` elements (a read and written, b read: 12 bytes per element), fastest of 5.
double bandwidth_gbs(int64_t n, const c10::Device& device) {
  at::Tensor a = at::rand({n}).to(device);
  const at::Tensor b = at::rand({n}).to(device);
  a.add_(b, 1e-9);
  torch_compat::synchronize(device);
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    a.add_(b, 1e-9);
    torch_compat::synchronize(device);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 12.0 * static_cast<double>(n) / best * 1e-9;
}

// One optimizer's step on `params` (float32, gradients set): median seconds of `steps` steps
// after one warm-up step (which creates the state), the state's bytes per parameter, and the
// least memory traffic of a step: parameter read + write, gradient read, state read + write.
void bench_optimizer(host::PluginManager& pm, const std::string& spec, const std::vector<at::Tensor>& shapes,
                     int steps, double bw_gbs, const c10::Device& device) {
  host::Registry registry;
  registry.set_device(device);
  std::vector<at::Tensor> params;
  int64_t numel = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    at::Tensor p = registry.add("network", "p" + std::to_string(i), shapes[i], "", true);
    p.mutable_grad() = at::randn_like(p) * 1e-3;  // on the registry's device, as p
    params.push_back(p);
    numel += p.numel();
  }
  std::string name = spec;
  try {
    auto ref = pm.find(SUMI_KIND_OPTIMIZER, spec);
    name = ref.component->name;
    host::Component opt(ref, "optimizer", registry, host::make_config(*ref.component, {}));
    host::OptimizerPlugin optimizer(opt);
    optimizer.add_param_group("", params);
    const std::vector<double> lrs{1e-4};
    auto step = [&] { optimizer.step(lrs); };
    reset_peak_rss();
    const at::Tensor before = params.front().clone();
    step();
    // A step that leaves the parameters as they were (the null optimizer) moves no known traffic.
    const bool moved = !at::equal(before, params.front());
    double state_bytes = 0;
    for (const auto& e : registry.entries())
      if (e.component == "optimizer" && e.tensor.defined()) state_bytes += static_cast<double>(e.tensor.nbytes());
    const Timing t = median_of(std::max(1, steps), device, step);
    const double per_param = state_bytes / static_cast<double>(numel);
    const double traffic = static_cast<double>(numel) * (12.0 + 2.0 * per_param);
    const double gbs = traffic / t.seconds * 1e-9;
    char rate[32] = "-", frac[32] = "-";
    if (moved) {
      std::snprintf(rate, sizeof rate, "%.1f", gbs);
      std::snprintf(frac, sizeof frac, "%.1f%%", 100.0 * gbs / bw_gbs);
    }
    std::printf("%-24s %10.4f %9.2f %9.2f %9s %8s %9.2f %9.4f\n", name.c_str(), t.seconds,
                t.seconds / static_cast<double>(numel) * 1e9, per_param, rate, frac, peak_rss_gib(), t.cpu_seconds);
  } catch (const host::UserError& e) {
    std::printf("%-24s refused: %s\n", name.c_str(), e.what());
  }
  std::fflush(stdout);
}

void run_optimizer_job(const BenchArgs& b) {
  const int threads = host::init_runtime(b.threads);
  const c10::Device device = run_device(b.device);
  CommonOptions o;
  o.plugin_dirs = b.plugin_dirs;
  auto pm = make_plugin_manager(o);
  std::vector<std::string> names = b.optimizers;
  if (names.empty())
    for (const auto* lib : pm.scan())
      for (const auto& c : lib->components)
        if (c.component->kind == SUMI_KIND_OPTIMIZER) names.push_back(c.component->name);
  // float32 parameters of 256 x 256 (above bitsandbytes' min_8bit_size, whole 2048-element blocks).
  const int64_t tensors = std::max<int64_t>(1, b.optimizer_params / 65536);
  at::manual_seed(0);
  std::vector<at::Tensor> shapes;
  for (int64_t i = 0; i < tensors; ++i) shapes.push_back(at::randn({256, 256}) * 0.02);
  const double bw = bandwidth_gbs(b.tiny ? (int64_t{1} << 20) : (int64_t{1} << 26), device);
  std::printf("\noptimizer step: %lld float32 parameters in %lld tensors of 256x256, device %s, %d threads, median of %d "
              "steps;\nmemory bandwidth (a += b in place, float32) %.1f GB/s\n",
              static_cast<long long>(tensors * 65536), static_cast<long long>(tensors), device.str().c_str(), threads,
              std::max(1, b.steps), bw);
  std::printf("%-24s %10s %9s %9s %9s %8s %9s %9s\n", "optimizer", "seconds", "ns/param", "state_B", "GB/s",
              "of_peak", "rss_GiB", "cpu_s");
  for (const auto& n : names) bench_optimizer(pm, n, shapes, b.steps, bw, device);
}

}  // namespace

int cmd_bench(const std::vector<std::string>& args) {
  const BenchArgs b = parse_bench_args(args);
  if (b.help) {
    run_sumi_bench(b.forward);
    std::printf("\n`sumi bench` also reads:\n"
                "  --jobs ...,optimizer     the optimizer job: one step of each optimizer plugin (default: all jobs)\n"
                "  --optimizers a,b         the optimizers to time (kohya names; default: every plugin found)\n"
                "  --optimizer_params N     float32 parameters in the optimizer job (default 8388608; --tiny 262144)\n"
                "  --plugin-dir DIR         also search DIR for plugins\n");
    return 0;
  }
  std::vector<std::string> sd_jobs;
  bool optimizer = false;
  for (const auto& j : b.jobs) {
    if (j == "optimizer") optimizer = true;
    else sd_jobs.push_back(j);
  }
  if (!sd_jobs.empty()) {
    std::vector<std::string> forward = b.forward;
    std::string joined;
    for (const auto& j : sd_jobs) joined += (joined.empty() ? "" : ",") + j;
    forward.push_back("--jobs");
    forward.push_back(joined);
    run_sumi_bench(forward);
  }
  if (optimizer) run_optimizer_job(b);
  return 0;
}

}  // namespace sumi::app
