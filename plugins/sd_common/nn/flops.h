// Counting the floating-point work of the SD networks as they run: Linear, Conv2d and the two
// attention products add their multiply-adds (x2) to the counter active on the calling thread.
// Off (one thread-local load per call) unless a FlopCounter scope is open; `sumi bench` uses it
// to turn measured seconds into GFLOP/s. Adapter (LoRA) hooks and element-wise ops are not
// counted.
#pragma once

namespace sumi::nn {

struct FlopCount {
  double conv = 0;       // convolutions, 2 * output elements * in channels * kernel area
  double linear = 0;     // linear layers, 2 * output elements * in features
  double attention = 0;  // QK^T and softmax(QK^T)V, 2 * 2 * B * H * Lq * Lk * D
  double total() const { return conv + linear + attention; }
};

namespace detail {
inline FlopCount*& active_flop_count() {
  static thread_local FlopCount* active = nullptr;
  return active;
}
}  // namespace detail

// The counter of this thread's open FlopCounter scope, or null.
inline FlopCount* active_flop_count() { return detail::active_flop_count(); }

// Counts the SD network work done on this thread during its lifetime (nested scopes: the
// innermost counts).
class FlopCounter {
 public:
  FlopCounter() : prev_(detail::active_flop_count()) { detail::active_flop_count() = &count_; }
  ~FlopCounter() { detail::active_flop_count() = prev_; }
  FlopCounter(const FlopCounter&) = delete;
  FlopCounter& operator=(const FlopCounter&) = delete;
  const FlopCount& count() const { return count_; }

 private:
  FlopCount count_;
  FlopCount* prev_;
};

}  // namespace sumi::nn
