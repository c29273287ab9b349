// Process-wide runtime set-up: intra-op threads and a check that libtorch's BLAS is a fast one.
#pragma once

#include <string>

namespace sumi::host {

// Sets libtorch's intra-op threads (0 = all cores) and warns once when the BLAS that libblas.so.3
// resolves to is the slow reference implementation. Returns the thread count in effect.
int init_runtime(int threads);

// The real path of the BLAS library mapped into this process ("" if none is mapped).
std::string loaded_blas_path();

}  // namespace sumi::host
