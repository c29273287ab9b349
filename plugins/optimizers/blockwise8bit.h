// bitsandbytes' block-wise dynamic 8-bit optimizer state (bitsandbytes 0.41.1), shared by the
// 8-bit optimizers (bnb8bit.cpp): the dynamic quantization map of functional.create_dynamic_map,
// and the decode / encode of a run of 2048-element blocks as the block-wise 8-bit optimizer kernels
// (kOptimizerStatic8bit{1,2}StateBlockwise) do it: dequantize with the block's absmax, update in
// float32, requantize against the block's new absmax. encode_scaled is the same quantizer as the
// non-blockwise kernels (block_wise=False) use it, against one max per tensor.
//
// Everything runs as ATen ops through the host, so it works on whatever device the state lives on.
#pragma once

#include <sumi/plugin.hpp>

#include <vector>

namespace sumi::optim::q8 {

// Elements per block of absmax (bitsandbytes' BLOCKSIZE_1STATE / BLOCKSIZE_2STATE).
constexpr int64_t kBlock = 2048;
// bitsandbytes keeps tensors with fewer elements than this in float32 whatever min_8bit_size says
// (Optimizer{1,2}State.init_state).
constexpr int64_t kMin8bitFloor = 4096;

// create_dynamic_map(signed): 256 sorted float32 values, [-0.99296875, 1] signed (127 negative
// values, 0, 128 positive) or [0, 1] unsigned. The fractions come from aten::linspace in float32,
// as torch.linspace computes them for the Python function.
std::vector<float> dynamic_map(bool is_signed);

// A map as the encoder uses it.
struct Map {
  Tensor code;         // [256] float32, sorted
  Tensor table_code;   // [65536] uint8 and
  Tensor table_bound;  // [65536] float32: the encoding table (see make_map)
  bool is_signed = false;
};
// The encoder for `code` (a [256] float32 tensor, e.g. the map kept in the optimizer's state).
Map make_map(const Tensor& code, bool is_signed);

// The code a padded element reads (the kernels load 128 for state1 and 0 for state2 past the end
// of the tensor): padding makes the last block behave as in the kernel, its absmax included.
inline int64_t pad_code(const Map& m) { return m.is_signed ? 128 : 0; }

// Dequantize `codes` (uint8, nblocks * kBlock elements) with one absmax per block ([nblocks]
// float32): float32 [nblocks, kBlock], code[c] * absmax.
Tensor decode(const Map& m, const Tensor& codes, const Tensor& absmax);
// The new absmax of each block of `s` ([nblocks, kBlock]): max |s|.
Tensor block_absmax(const Tensor& s);
// Quantize `s` ([nblocks, kBlock]) against `absmax` ([nblocks]) as bitsandbytes' quantize_2D: the
// nearest code to s / absmax, a tie between two codes going to the even index (where the kernel's
// binary search ends); s / absmax = NaN (an all-zero block, absmax 0) gives code 0. For a signed
// map, state1's sign rule follows: a code whose sign bit differs from s's moves one step toward
// s's side (so a tiny negative value keeps a negative code; +0 in an all-zero block wraps to 255,
// as the kernel's unsigned char does). Returns uint8 codes, flattened. A lookup in a table over
// the float32 bit pattern of s / absmax, one comparison per element.
Tensor encode(const Map& m, const Tensor& s, const Tensor& absmax);

// Quantize `s` (any shape, float32) as bitsandbytes' non-blockwise kernels do (dQuantize of
// s * inv_max, inv_max = 1.0f / max computed once per tensor): the same nearest-code / tie /
// sign rules as encode, x = +-inf (max 0) giving the end codes 255 / 0 and x = NaN (0 * inf)
// giving, in a signed map, 255 unless s is negative (code 0 and the sign rule). Returns uint8
// codes, flattened.
Tensor encode_scaled(const Map& m, const Tensor& s, float inv_max);

// Small ATen helpers the optimizers share.
Tensor view(const Tensor& t, std::vector<int64_t> shape);
Tensor narrow(const Tensor& t, int64_t dim, int64_t start, int64_t length);
Tensor pad_end(const Tensor& t, int64_t pad, double value);  // 1-D: `pad` trailing elements of `value`
Tensor unsqueeze(const Tensor& t, int64_t dim);

}  // namespace sumi::optim::q8
