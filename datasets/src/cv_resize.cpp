// cv::resize for 8-bit images, written from the description of OpenCV 4.6's
// modules/imgproc/src/resize.cpp (CPU, no IPP): which path a size pair takes, how each path
// places its taps, and where it rounds. Bit-exactness with cv2 is the point, so the float
// arithmetic is done in float, in OpenCV's order, and this file builds with -ffp-contract=off.
#include "sumi/datasets/cv_resize.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace sumi::datasets {
namespace {

constexpr int kCoefBits = 11;  // OpenCV's INTER_RESIZE_COEF_BITS
constexpr int kCoefScale = 1 << kCoefBits;

struct Src {
  const std::uint8_t* data;
  int w, h, cn;
  const std::uint8_t* row(int y) const { return data + static_cast<std::size_t>(y) * w * cn; }
};
struct Dst {
  std::uint8_t* data;
  int w, h, cn;
  std::uint8_t* row(int y) const { return data + static_cast<std::size_t>(y) * w * cn; }
};

int floor_int(double v) { return static_cast<int>(std::floor(v)); }
int ceil_int(double v) { return static_cast<int>(std::ceil(v)); }
// cvRound: round half to even (the default rounding mode), as cvtss2si does.
int round_even(float v) { return static_cast<int>(std::nearbyint(v)); }
std::uint8_t sat_u8(int v) { return static_cast<std::uint8_t>(std::clamp(v, 0, 255)); }
std::int16_t sat_s16(int v) { return static_cast<std::int16_t>(std::clamp(v, -32768, 32767)); }
int clamp_index(int i, int n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// ---- nearest ----------------------------------------------------------------------------
// INTER_NEAREST: source index floor(d * (1 / (dsize / ssize))) in doubles, clamped.
std::vector<int> nearest_index(int ssize, int dsize) {
  const double inv = 1.0 / (static_cast<double>(dsize) / ssize);
  std::vector<int> idx(dsize);
  for (int d = 0; d < dsize; ++d) idx[d] = std::min(floor_int(d * inv), ssize - 1);
  return idx;
}
// INTER_NEAREST_EXACT: 16.16 fixed point, pixel centres, offset by one 1/65536 step below
// half a source pixel (what OpenCV 4.6 gives for even and odd sizes alike: an integer factor
// picks the first of the two middle pixels).
std::vector<int> nearest_exact_index(int ssize, int dsize) {
  const std::int64_t step = ((static_cast<std::int64_t>(ssize) << 16) + dsize / 2) / dsize;
  const std::int64_t start = step / 2 - 1;
  std::vector<int> idx(dsize);
  for (int d = 0; d < dsize; ++d) idx[d] = std::min(static_cast<int>((step * d + start) >> 16), ssize - 1);
  return idx;
}
void resize_nearest(const Src& s, const Dst& d, bool exact) {
  const auto xs = exact ? nearest_exact_index(s.w, d.w) : nearest_index(s.w, d.w);
  const auto ys = exact ? nearest_exact_index(s.h, d.h) : nearest_index(s.h, d.h);
  for (int y = 0; y < d.h; ++y) {
    const std::uint8_t* S = s.row(ys[y]);
    std::uint8_t* D = d.row(y);
    for (int x = 0; x < d.w; ++x) std::memcpy(D + x * d.cn, S + xs[x] * s.cn, s.cn);
  }
}

// ---- INTER_AREA, shrinking ---------------------------------------------------------------
// Integer factors: the mean of each block, sum * (1/area) rounded half to even in float; for
// 2x2 blocks of 1, 3 or 4 channels OpenCV's vector code computes (sum + 2) >> 2 instead.
// Blocks cut by the image edge (never, for sizes cv2 derives) average what they cover.
void resize_area_fast(const Src& s, const Dst& d, int fx, int fy) {
  const float scale = 1.f / static_cast<float>(fx * fy);
  const bool half_up = fx == 2 && fy == 2 && s.cn != 2;
  for (int dy = 0; dy < d.h; ++dy) {
    const int sy0 = dy * fy;
    std::uint8_t* D = d.row(dy);
    for (int dx = 0; dx < d.w; ++dx) {
      const int sx0 = dx * fx;
      for (int c = 0; c < s.cn; ++c) {
        int sum = 0, count = 0;
        for (int y = sy0; y < std::min(sy0 + fy, s.h); ++y)
          for (int x = sx0; x < std::min(sx0 + fx, s.w); ++x) sum += s.row(y)[x * s.cn + c], ++count;
        int v;
        if (count == 0)
          v = 0;
        else if (count != fx * fy)
          v = round_even(static_cast<float>(sum) / static_cast<float>(count));
        else
          v = half_up ? (sum + 2) >> 2 : round_even(static_cast<float>(sum) * scale);
        D[dx * d.cn + c] = sat_u8(v);
      }
    }
  }
}

struct AreaTap {
  int di, si;  // destination and source index (pixels)
  float alpha;
};
// Each destination cell [d*scale, (d+1)*scale) as source pixels with their covered fraction
// of the cell (partial pixels at both ends; slivers under 1e-3 dropped), in source order.
std::vector<AreaTap> area_taps(int ssize, int dsize, double scale) {
  std::vector<AreaTap> tab;
  for (int d = 0; d < dsize; ++d) {
    const double f1 = d * scale, f2 = f1 + scale;
    const double cell = std::min(scale, ssize - f1);
    int s2 = std::min(floor_int(f2), ssize - 1);
    const int s1 = std::min(ceil_int(f1), s2);
    if (s1 - f1 > 1e-3) tab.push_back({d, s1 - 1, static_cast<float>((s1 - f1) / cell)});
    for (int si = s1; si < s2; ++si) tab.push_back({d, si, static_cast<float>(1.0 / cell)});
    if (f2 - s2 > 1e-3) tab.push_back({d, s2, static_cast<float>(std::min(std::min(f2 - s2, 1.0), cell) / cell)});
  }
  return tab;
}
// Rows weighted into float sums in OpenCV's order: each source row's horizontal sums first,
// then sum += beta * row; a destination row is written (rounded half to even) when done.
void resize_area(const Src& s, const Dst& d, double scale_x, double scale_y) {
  const auto xt = area_taps(s.w, d.w, scale_x);
  const auto yt = area_taps(s.h, d.h, scale_y);
  const int W = d.w * d.cn;
  std::vector<float> buf(W), sum(W, 0.f);
  auto flush = [&](int dy) {
    std::uint8_t* D = d.row(dy);
    for (int i = 0; i < W; ++i) D[i] = sat_u8(round_even(sum[i]));
  };
  int prev = yt.front().di;
  for (const AreaTap& ty : yt) {
    const std::uint8_t* S = s.row(ty.si);
    std::fill(buf.begin(), buf.end(), 0.f);
    for (const AreaTap& tx : xt)
      for (int c = 0; c < s.cn; ++c) {
        float& b = buf[tx.di * d.cn + c];
        b = b + static_cast<float>(S[tx.si * s.cn + c]) * tx.alpha;
      }
    if (ty.di != prev) {
      flush(prev);
      for (int i = 0; i < W; ++i) sum[i] = ty.alpha * buf[i];
      prev = ty.di;
    } else {
      for (int i = 0; i < W; ++i) sum[i] = sum[i] + ty.alpha * buf[i];
    }
  }
  flush(prev);
}

// ---- separable filters: INTER_LINEAR, INTER_CUBIC, INTER_LANCZOS4, INTER_AREA enlarging ----
enum class Kernel { Linear, Cubic, Lanczos4 };

void cubic_weights(float x, float* w) {
  const float A = -0.75f;
  w[0] = ((A * (x + 1) - 5 * A) * (x + 1) + 8 * A) * (x + 1) - 4 * A;
  w[1] = ((A + 2) * x - (A + 3)) * x * x + 1;
  w[2] = ((A + 2) * (1 - x) - (A + 3)) * (1 - x) * (1 - x) + 1;
  w[3] = 1.f - w[0] - w[1] - w[2];
}

// sin(pi t/4) sin(pi t) ... as OpenCV evaluates it: one sin/cos pair of the first tap, the
// others by the angle-sum table, each over (pi t / 4)^2, normalised in float.
void lanczos4_weights(float x, float* w) {
  if (x < FLT_EPSILON) {
    for (int i = 0; i < 8; ++i) w[i] = 0;
    w[3] = 1;
    return;
  }
  constexpr double pi = 3.1415926535897932384626433832795;
  constexpr double r = 0.70710678118654752440084436210485;
  static const double turn[8][2] = {{1, 0}, {-r, -r}, {0, 1}, {r, -r}, {-1, 0}, {r, r}, {0, -1}, {-r, r}};
  float sum = 0;
  const double y0 = -(x + 3) * pi * 0.25, s0 = std::sin(y0), c0 = std::cos(y0);
  for (int i = 0; i < 8; ++i) {
    const double y = -(x + 3 - i) * pi * 0.25;
    w[i] = static_cast<float>((turn[i][0] * s0 + turn[i][1] * c0) / (y * y));
    sum += w[i];
  }
  sum = 1.f / sum;
  for (int i = 0; i < 8; ++i) w[i] *= sum;
}

struct Taps {
  int ksize = 0;
  std::vector<int> first;           // per destination index: source index of the floor tap
  std::vector<std::int16_t> coef;   // ksize per destination index, scaled by 2^11
};

// Tap positions and 11-bit weights along one axis. `clamp_edges`: the horizontal axis of the
// 2-tap kernels moves a tap that falls off either edge onto the edge pixel with weight 1
// (OpenCV does this for x only; rows are clamped later, with the computed weights).
Taps make_taps(int ssize, int dsize, Kernel k, bool area_mode, bool clamp_edges) {
  const double inv_scale = static_cast<double>(dsize) / ssize;
  const double scale = 1.0 / inv_scale;
  Taps t;
  t.ksize = k == Kernel::Linear ? 2 : k == Kernel::Cubic ? 4 : 8;
  t.first.resize(dsize);
  t.coef.resize(static_cast<std::size_t>(dsize) * t.ksize);
  for (int d = 0; d < dsize; ++d) {
    float f;
    int s;
    if (!area_mode) {
      f = static_cast<float>((d + 0.5) * scale - 0.5);
      s = static_cast<int>(std::floor(f));
      f -= static_cast<float>(s);
    } else {
      s = floor_int(d * scale);
      f = static_cast<float>((d + 1) - (s + 1) * inv_scale);
      f = f <= 0 ? 0.f : f - static_cast<float>(std::floor(f));
    }
    if (clamp_edges && k == Kernel::Linear) {
      if (s < 0) f = 0, s = 0;
      if (s >= ssize - 1) f = 0, s = ssize - 1;
    }
    float w[8];
    if (k == Kernel::Cubic)
      cubic_weights(f, w);
    else if (k == Kernel::Lanczos4)
      lanczos4_weights(f, w);
    else
      w[0] = 1.f - f, w[1] = f;
    t.first[d] = s;
    for (int j = 0; j < t.ksize; ++j)
      t.coef[static_cast<std::size_t>(d) * t.ksize + j] = sat_s16(round_even(w[j] * static_cast<float>(kCoefScale)));
  }
  return t;
}

// One source row filtered horizontally into ints (exact: 8-bit values times 16-bit weights).
void hfilter(const std::uint8_t* S, int sw, int cn, const Taps& xt, int dw, int* out) {
  const int k = xt.ksize, back = k / 2 - 1;
  for (int dx = 0; dx < dw; ++dx) {
    const std::int16_t* a = &xt.coef[static_cast<std::size_t>(dx) * k];
    for (int c = 0; c < cn; ++c) {
      int v = 0;
      for (int j = 0; j < k; ++j) v += S[clamp_index(xt.first[dx] - back + j, sw) * cn + c] * a[j];
      out[dx * cn + c] = v;
    }
  }
}

int descale22(std::int64_t v) { return static_cast<int>((v + (1 << 21)) >> 22); }

// Vertical 2-tap pass as OpenCV's vector code computes it: drop 4 bits of each row value, keep
// the high half of the 16-bit products, round the last 2 bits. OpenCV 4.6 gives every value
// of a row this way, the row's tail included (checked on all widths of the goldens and on
// 1500 random cases; the once-rounded 22-bit sum differs by one in places).
void vlinear(const int* const* rows, const std::int16_t* b, int W, std::uint8_t* D) {
  for (int x = 0; x < W; ++x) {
    const int s0 = sat_s16(rows[0][x] >> 4), s1 = sat_s16(rows[1][x] >> 4);
    const int t = sat_s16(((s0 * b[0]) >> 16) + ((s1 * b[1]) >> 16));
    D[x] = sat_u8((t + 2) >> 2);
  }
}

// Vertical 4-tap pass: 8 values a step in float (weights / 2^22, S3*b3 first, then each
// earlier row multiplied and added), rounded half to even; the rest in 22-bit fixed point.
void vcubic(const int* const* rows, const std::int16_t* b, int W, std::uint8_t* D) {
  const float scale = 1.f / static_cast<float>(kCoefScale * kCoefScale);
  const float f0 = b[0] * scale, f1 = b[1] * scale, f2 = b[2] * scale, f3 = b[3] * scale;
  const int vec = W / 8 * 8;
  for (int x = 0; x < W; ++x) {
    if (x < vec) {
      float t = static_cast<float>(rows[3][x]) * f3;
      t = static_cast<float>(rows[2][x]) * f2 + t;
      t = static_cast<float>(rows[1][x]) * f1 + t;
      t = static_cast<float>(rows[0][x]) * f0 + t;
      D[x] = sat_u8(sat_s16(round_even(t)));
    } else {
      std::int64_t v = 0;
      for (int k = 0; k < 4; ++k) v += static_cast<std::int64_t>(rows[k][x]) * b[k];
      D[x] = sat_u8(descale22(v));
    }
  }
}

void vlanczos4(const int* const* rows, const std::int16_t* b, int W, std::uint8_t* D) {
  for (int x = 0; x < W; ++x) {
    std::int64_t v = 0;
    for (int k = 0; k < 8; ++k) v += static_cast<std::int64_t>(rows[k][x]) * b[k];
    D[x] = sat_u8(descale22(v));
  }
}

void resize_separable(const Src& s, const Dst& d, Kernel k, bool area_mode) {
  const Taps xt = make_taps(s.w, d.w, k, area_mode, true);
  const Taps yt = make_taps(s.h, d.h, k, area_mode, false);
  const int W = d.w * d.cn, n = yt.ksize, back = n / 2 - 1;
  // Horizontally filtered source rows, computed once each, on demand.
  std::vector<std::vector<int>> hrows(s.h);
  std::vector<const int*> rows(n);
  int freed = 0;
  for (int dy = 0; dy < d.h; ++dy) {
    for (int j = 0; j < n; ++j) {
      const int sy = clamp_index(yt.first[dy] - back + j, s.h);
      if (hrows[sy].empty()) {
        hrows[sy].resize(W);
        hfilter(s.row(sy), s.w, s.cn, xt, d.w, hrows[sy].data());
      }
      rows[j] = hrows[sy].data();
    }
    const std::int16_t* b = &yt.coef[static_cast<std::size_t>(dy) * n];
    if (k == Kernel::Linear)
      vlinear(rows.data(), b, W, d.row(dy));
    else if (k == Kernel::Cubic)
      vcubic(rows.data(), b, W, d.row(dy));
    else
      vlanczos4(rows.data(), b, W, d.row(dy));
    // Rows above the next output row's first tap are no longer needed.
    const int keep = dy + 1 < d.h ? clamp_index(yt.first[dy + 1] - back, s.h) : s.h;
    for (; freed < keep; ++freed) std::vector<int>().swap(hrows[freed]);
  }
}

}  // namespace

void cv_resize(const std::uint8_t* src, int sw, int sh, int channels, std::uint8_t* dst, int dw, int dh,
               CvInterpolation how) {
  if (sw <= 0 || sh <= 0 || dw <= 0 || dh <= 0)
    throw std::invalid_argument("cv_resize: sizes must be positive, got " + std::to_string(sw) + "x" + std::to_string(sh) +
                                " -> " + std::to_string(dw) + "x" + std::to_string(dh));
  if (channels < 1 || channels > 4)
    throw std::invalid_argument("cv_resize: 1 to 4 channels, got " + std::to_string(channels));
  const Src s{src, sw, sh, channels};
  const Dst d{dst, dw, dh, channels};
  if (sw == dw && sh == dh) {
    std::memcpy(dst, src, static_cast<std::size_t>(sw) * sh * channels);
    return;
  }
  if (how == CvInterpolation::Nearest || how == CvInterpolation::NearestExact)
    return resize_nearest(s, d, how == CvInterpolation::NearestExact);

  const double scale_x = 1.0 / (static_cast<double>(dw) / sw), scale_y = 1.0 / (static_cast<double>(dh) / sh);
  const bool integer_factors = std::abs(scale_x - std::nearbyint(scale_x)) < DBL_EPSILON &&
                               std::abs(scale_y - std::nearbyint(scale_y)) < DBL_EPSILON;
  const int fx = static_cast<int>(std::nearbyint(scale_x)), fy = static_cast<int>(std::nearbyint(scale_y));
  // OpenCV: a 2x bilinear shrink is the 2x2 block mean.
  if (how == CvInterpolation::Linear && integer_factors && fx == 2 && fy == 2) how = CvInterpolation::Area;
  if (how == CvInterpolation::Area && scale_x >= 1 && scale_y >= 1) {
    if (integer_factors) return resize_area_fast(s, d, fx, fy);
    return resize_area(s, d, scale_x, scale_y);
  }
  const Kernel k = how == CvInterpolation::Cubic      ? Kernel::Cubic
                   : how == CvInterpolation::Lanczos4 ? Kernel::Lanczos4
                                                      : Kernel::Linear;
  resize_separable(s, d, k, how == CvInterpolation::Area);
}

}  // namespace sumi::datasets
