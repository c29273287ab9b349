#include "py_random.h"

#include <algorithm>
#include <vector>

namespace sumi::app {

namespace {
constexpr int N = 624, M = 397;
}

PyRandom::PyRandom(uint64_t seed) {
  // CPython: the absolute value's 32-bit words, least significant first; 0 is one word.
  std::vector<uint32_t> key;
  for (uint64_t v = seed; v != 0; v >>= 32) key.push_back(static_cast<uint32_t>(v & 0xffffffffu));
  if (key.empty()) key.push_back(0);
  mt_[0] = 19650218u;
  for (int i = 1; i < N; ++i)
    mt_[static_cast<size_t>(i)] =
        1812433253u * (mt_[static_cast<size_t>(i - 1)] ^ (mt_[static_cast<size_t>(i - 1)] >> 30)) + static_cast<uint32_t>(i);
  size_t i = 1, j = 0;
  for (size_t k = std::max<size_t>(N, key.size()); k; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525u)) + key[j] + static_cast<uint32_t>(j);
    ++i;
    ++j;
    if (i >= N) {
      mt_[0] = mt_[N - 1];
      i = 1;
    }
    if (j >= key.size()) j = 0;
  }
  for (size_t k = N - 1; k; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941u)) - static_cast<uint32_t>(i);
    ++i;
    if (i >= N) {
      mt_[0] = mt_[N - 1];
      i = 1;
    }
  }
  mt_[0] = 0x80000000u;
  index_ = N;
}

uint32_t PyRandom::next32() {
  if (index_ >= N) {
    for (int k = 0; k < N; ++k) {
      const uint32_t y = (mt_[static_cast<size_t>(k)] & 0x80000000u) | (mt_[static_cast<size_t>((k + 1) % N)] & 0x7fffffffu);
      mt_[static_cast<size_t>(k)] = mt_[static_cast<size_t>((k + M) % N)] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    index_ = 0;
  }
  uint32_t y = mt_[static_cast<size_t>(index_++)];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

int64_t PyRandom::randint31() {
  // randint(0, 2^31 - 1) = randrange(2^31) = _randbelow(2^31): k = 32 bits a draw, rejected
  // until below 2^31.
  uint32_t r = next32();
  while (r >= 0x80000000u) r = next32();
  return static_cast<int64_t>(r);
}

}  // namespace sumi::app
