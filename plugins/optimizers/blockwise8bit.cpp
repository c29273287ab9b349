// The dynamic map and the block-wise encode / decode of bitsandbytes 0.41.1 (see blockwise8bit.h).
#include "blockwise8bit.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace sumi::optim::q8 {

std::vector<float> dynamic_map(bool is_signed) {
  // functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8). Its
  // non_sign_bits is 7 for both signs (`total_bits - (1 if signed else 1)`), so no extra
  // items: decade i holds 2^i means (signed, mirrored) or 2^(i+1) (unsigned).
  static const Op linspace("aten::linspace");
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int64_t items = is_signed ? (int64_t{1} << i) + 1 : (int64_t{1} << (i + 1)) + 1;
    const auto b = linspace({0.1, 1.0, items, dtype::f32, none, none, none}).to_float_vector();
    // Python: (10 ** (-6 + i)) * means, a float32 tensor times a Python number (taken as float32).
    const float scale = static_cast<float>(std::pow(10.0, i - 6));
    for (size_t k = 0; k + 1 < b.size(); ++k) {
      const float mean = (b[k] + b[k + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  return data;
}

namespace {

float float_of(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace

Map make_map(const Tensor& code, bool is_signed) {
  const auto c = code.to_float_vector();
  if (c.size() != 256)
    throw Error(SUMI_ERR_INVALID_ARGUMENT, "8-bit optimizer: a quantization map has 256 values, got " + std::to_string(c.size()));
  // The kernel's binary search ends at an even index and compares with the midpoint
  // (a + b) * 0.5f of its neighbours, so a value exactly on a midpoint goes to the even side.
  // As bucket boundaries (x belongs to bucket #{bounds < x}), an odd j's midpoint moves one ulp
  // down: no float lies between, nothing else changes bucket.
  std::vector<float> bounds(255);
  for (size_t j = 0; j < 255; ++j) {
    const float mid = (c[j] + c[j + 1]) * 0.5f;
    bounds[j] = j % 2 ? std::nextafter(mid, -std::numeric_limits<float>::infinity()) : mid;
  }
  // The sign rule of state1: a code whose sign bit differs from x's moves one step toward x's side
  // (+1 for x > 0, else -1; in the cell of +0 it never applies).
  auto fix = [&](size_t q, bool neg) -> size_t {
    if (!is_signed || std::signbit(c[q % 256]) == neg) return q;
    return (q + (neg ? 255 : 1)) % 256;  // unsigned char arithmetic
  };
  // Encoding table over the top 16 bits of x's float32 pattern (sign, exponent, 7 mantissa bits):
  // every x of a cell gets code lo, or lo + 1 where x lies above the one bucket boundary inside the
  // cell (a cell is at most 2^-7 of its values wide, the dynamic maps' boundaries lie farther apart;
  // checked here). Cells of NaN give 0: the kernel's search fails every comparison with NaN and
  // ends there. The cells of +-inf (x = s * (1 / max) with max 0, in the non-blockwise kernels;
  // never x = s / absmax) give the end codes the search reaches, 255 and 0, after the sign rule.
  std::vector<float> lo(65536), bound(65536, std::numeric_limits<float>::infinity());
  for (uint32_t cell = 0; cell < 65536; ++cell) {
    if (((cell >> 7) & 0xFF) == 0xFF) {
      const bool inf = (cell & 0x7F) == 0, neg = cell & 0x8000;
      lo[cell] = inf ? static_cast<float>(fix(neg ? size_t{0} : size_t{255}, neg)) : 0.0f;
      continue;
    }
    const bool neg = cell & 0x8000;
    const float a = float_of(cell << 16), b = float_of((cell << 16) | 0xFFFF);
    const float cmin = neg ? b : a, cmax = neg ? a : b;
    const size_t base = std::lower_bound(bounds.begin(), bounds.end(), cmin) - bounds.begin();
    const size_t inside = (std::upper_bound(bounds.begin(), bounds.end(), cmax) - bounds.begin()) - base;
    if (inside > 1)
      throw Error(SUMI_ERR_RUNTIME, "8-bit optimizer: the quantization map has two boundaries within 1/128 of each other near " +
                                        std::to_string(cmin));
    const size_t q_lo = fix(base, neg), q_hi = fix(base + 1, neg);
    lo[cell] = static_cast<float>(q_lo);
    if (inside == 1 && q_hi != q_lo) {
      if (q_hi != q_lo + 1) throw Error(SUMI_ERR_RUNTIME, "8-bit optimizer: unexpected quantization map layout");
      bound[cell] = bounds[base];
    }
  }
  Map m;
  m.code = code;
  // Built on the CPU, used where the state is.
  m.table_code = ops::to_device_of(ops::to(Tensor::from_data(lo, {65536}), dtype::u8), code);
  m.table_bound = ops::to_device_of(Tensor::from_data(bound, {65536}), code);
  m.is_signed = is_signed;
  return m;
}

Tensor view(const Tensor& t, std::vector<int64_t> shape) {
  static const Op op("aten::view");
  return op({t, std::move(shape)});
}

Tensor narrow(const Tensor& t, int64_t dim, int64_t start, int64_t length) {
  static const Op op("aten::narrow");
  return op({t, dim, start, length});
}

Tensor pad_end(const Tensor& t, int64_t pad, double value) {
  static const Op op("aten::constant_pad_nd");
  return op({t, std::vector<int64_t>{0, pad}, value});
}

Tensor unsqueeze(const Tensor& t, int64_t dim) {
  static const Op op("aten::unsqueeze");
  return op({t, dim});
}

Tensor decode(const Map& m, const Tensor& codes, const Tensor& absmax) {
  static const Op index_select("aten::index_select");
  Tensor s = index_select({m.code, int64_t{0}, ops::to(codes, dtype::i32)});
  s = view(s, {absmax.numel(), kBlock});
  ops::mul_(s, unsqueeze(absmax, 1));
  return s;
}

Tensor block_absmax(const Tensor& s) {
  static const Op amax("aten::amax");
  return amax({ops::abs(s), std::vector<int64_t>{1}, false});
}

namespace {

// The table lookup of make_map: the code of each element of the flat float32 `x`, NaN -> 0.
Tensor lookup(const Map& m, const Tensor& x) {
  static const Op view_dtype("aten::view", "dtype");
  static const Op rshift("aten::bitwise_right_shift", "Tensor_Scalar");
  static const Op bitwise_and("aten::bitwise_and", "Scalar");
  static const Op index_select("aten::index_select");
  static const Op add("aten::add", "Tensor");
  static const Op gt("aten::gt", "Tensor");
  const Tensor cell = bitwise_and({rshift({view_dtype({x, dtype::i32}), int64_t{16}}), int64_t{0xFFFF}});
  return add({index_select({m.table_code, int64_t{0}, cell}), gt({x, index_select({m.table_bound, int64_t{0}, cell})}), int64_t{1}});
}

// A uint8 code as a 0-dim tensor on the device of `like`.
Tensor code_scalar(float v, const Tensor& like) {
  return ops::to_device_of(ops::to(Tensor::from_data(std::vector<float>{v}, {}), dtype::u8), like);
}

}  // namespace

Tensor encode_scaled(const Map& m, const Tensor& s, float inv_max) {
  static const Op isnan("aten::isnan");
  static const Op any("aten::any");
  static const Op signbit("aten::signbit");
  const Tensor flat_s = view(s, {-1});
  const Tensor x = ops::mul(flat_s, inv_max);
  Tensor q = lookup(m, x);
  if (m.is_signed) {
    // x = NaN (0 * inf: max 0; or a NaN state): the kernel's code 0, then the sign rule with s's
    // sign bit: 255 unless s is negative. (Unsigned: 0, as the table gives.)
    const Tensor nan = isnan({x});
    if (any({nan}).item() != 0) {
      const Tensor zero = code_scalar(0, flat_s), top = code_scalar(255, flat_s);
      q = ops::where(nan, ops::where(signbit({flat_s}), zero, top), q);
    }
  }
  return q;
}

Tensor encode(const Map& m, const Tensor& s, const Tensor& absmax) {
  static const Op amin("aten::amin");
  const Tensor x = view(ops::div(s, unsqueeze(absmax, 1)), {-1});
  Tensor q = lookup(m, x);
  if (m.is_signed && amin({absmax, std::vector<int64_t>{}, false}).item() == 0) {
    // An all-zero block: x = 0 / 0, the kernel's code 0, then the sign rule with s's sign: +0 -> 255.
    static const Op isnan("aten::isnan");
    static const Op signbit("aten::signbit");
    const Tensor zero = code_scalar(0, s), top = code_scalar(255, s);
    q = ops::where(isnan({x}), ops::where(signbit({view(s, {-1})}), zero, top), q);
  }
  return q;
}

}  // namespace sumi::optim::q8
