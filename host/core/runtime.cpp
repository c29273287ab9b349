#include "runtime.h"

#include "progress.h"

#include <ATen/Parallel.h>

#include <filesystem>
#include <fstream>
#include <thread>

namespace sumi::host {

std::string loaded_blas_path() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    if (path.find("libblas.so") == std::string::npos) continue;
    std::error_code ec;
    auto real = std::filesystem::canonical(path, ec);
    return ec ? path : real.string();
  }
  return "";
}

int init_runtime(int threads) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int n = threads > 0 ? threads : cores;
  at::set_num_threads(n);
  static bool warned = false;
  const std::string blas = loaded_blas_path();
  // Debian's alternatives point libblas.so.3 at netlib's reference BLAS unless OpenBLAS is
  // installed; matmul is then ~50x slower.
  if (!warned && !blas.empty() && blas.find("openblas") == std::string::npos &&
      blas.find("mkl") == std::string::npos && blas.find("blis") == std::string::npos) {
    warned = true;
    log(2, "sumi", ("libtorch uses the reference BLAS (" + blas +
                    "), which is very slow; install libopenblas0-openmp (scripts/setup.sh does)")
                       .c_str());
  }
  return n;
}

}  // namespace sumi::host
