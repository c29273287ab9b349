// Portable random draws on a caller-owned std::mt19937_64. The standard distributions and
// std::shuffle are implementation-defined (libstdc++ and libc++ give different streams), so
// the dataset layer draws through these to stay reproducible for a seed on every platform.
// The stream is sumi's own: a seed does not reproduce the draws of kohya's Python `random`.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace sumi::datasets {

// Uniform in [0, 1) with 53 random bits (like Python's random.random()).
inline double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Uniform integer in [0, n) without modulo bias; n > 0.
inline std::uint64_t uniform_below(std::mt19937_64& rng, std::uint64_t n) {
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // reject the biased tail
  std::uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}

// Uniform integer in [lo, hi], both inclusive (Python's randint).
inline long long uniform_int(std::mt19937_64& rng, long long lo, long long hi) {
  return lo + static_cast<long long>(uniform_below(rng, static_cast<std::uint64_t>(hi - lo) + 1));
}

// Uniform real in [lo, hi).
inline double uniform_real(std::mt19937_64& rng, double lo, double hi) { return lo + (hi - lo) * uniform01(rng); }

// Fisher-Yates, same walk as Python's random.shuffle (from the back).
template <class T>
void shuffle(std::vector<T>& v, std::mt19937_64& rng) {
  for (std::size_t i = v.size(); i > 1; --i) {
    std::size_t j = static_cast<std::size_t>(uniform_below(rng, i));
    std::swap(v[i - 1], v[j]);
  }
}

// A generator for (seed, stream, index), so e.g. epoch 3 does not depend on draws in epoch 2.
inline std::mt19937_64 derived_rng(std::uint64_t seed, std::uint64_t stream, std::uint64_t index = 0) {
  std::seed_seq seq{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                    static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32),
                    static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32)};
  return std::mt19937_64(seq);
}

}  // namespace sumi::datasets
