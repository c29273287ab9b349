// Python's `random` module as gen_img uses it to pick seeds: `random.seed(n)` followed by
// `random.randint(0, 0x7FFFFFFF)`. The generator is MT19937 seeded the way CPython seeds it
// from an integer (init_by_array over the integer's 32-bit words), so `--seed 42` gives the
// images the same seeds gen_img gives them.
#pragma once

#include <array>
#include <cstdint>

namespace sumi::app {

class PyRandom {
 public:
  explicit PyRandom(uint64_t seed);
  // The next 32 bits (CPython's genrand_uint32).
  uint32_t next32();
  // random.randint(0, 0x7FFFFFFF): 32-bit draws below 2^31, the others rejected.
  int64_t randint31();

 private:
  std::array<uint32_t, 624> mt_{};
  int index_ = 624;
};

}  // namespace sumi::app
