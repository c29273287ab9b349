#include "logging/loss_curve.h"

#include <OpenImageIO/imagebuf.h>
#include <OpenImageIO/imagebufalgo.h>
#include <OpenImageIO/imageio.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>

#include <unistd.h>

namespace sumi::logging {
namespace {

struct Rgb {
  unsigned char r, g, b;
};
constexpr Rgb kBackground{255, 255, 255};
constexpr Rgb kAxis{0, 0, 0};
constexpr Rgb kGrid{225, 225, 225};
constexpr Rgb kRaw{150, 180, 230};
constexpr Rgb kAverage{20, 60, 160};
constexpr Rgb kLr{230, 120, 20};
constexpr const char* kFont = "DejaVuSans";

// A tick value as people read it: 1234, 0.0123, 1.5e-05.
std::string tick_text(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

// [lo, hi] of the values, widened when flat and padded by 5 % so the curve clears the frame.
std::pair<double, double> value_range(const std::vector<double>& v) {
  const auto [mn, mx] = std::minmax_element(v.begin(), v.end());
  double lo = *mn, hi = *mx;
  if (hi <= lo) {
    const double d = std::max(std::abs(lo) * 0.05, 1e-12);
    lo -= d;
    hi += d;
  }
  const double pad = (hi - lo) * 0.05;
  return {lo - pad, hi + pad};
}

class Canvas {
 public:
  Canvas(int w, int h) : w_(w), h_(h), px_(static_cast<std::size_t>(w) * h * 3) {
    for (std::size_t i = 0; i < px_.size(); i += 3) {
      px_[i] = kBackground.r;
      px_[i + 1] = kBackground.g;
      px_[i + 2] = kBackground.b;
    }
  }
  void set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
    const std::size_t i = (static_cast<std::size_t>(y) * w_ + x) * 3;
    px_[i] = c.r;
    px_[i + 1] = c.g;
    px_[i + 2] = c.b;
  }
  // Bresenham; a thickness above 1 stamps a square at each point.
  void line(int x0, int y0, int x1, int y1, Rgb c, int thickness) {
    const int dx = std::abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
    const int dy = -std::abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    const int lo = -(thickness - 1) / 2, hi = thickness / 2;
    for (;;) {
      for (int oy = lo; oy <= hi; ++oy)
        for (int ox = lo; ox <= hi; ++ox) set(x0 + ox, y0 + oy, c);
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) { err += dy; x0 += sx; }
      if (e2 <= dx) { err += dx; y0 += sy; }
    }
  }
  unsigned char* data() { return px_.data(); }

 private:
  int w_, h_;
  std::vector<unsigned char> px_;
};

}  // namespace

std::vector<double> moving_average(const std::vector<double>& values, int window) {
  if (window < 1) throw std::invalid_argument("moving_average: window must be >= 1");
  std::vector<double> out(values.size());
  double sum = 0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    sum += values[i];
    if (i >= static_cast<std::size_t>(window)) sum -= values[i - window];
    out[i] = sum / static_cast<double>(std::min<std::size_t>(i + 1, window));
  }
  return out;
}

void write_loss_curve_png(const std::string& path, const std::vector<std::int64_t>& steps,
                          const std::vector<double>& losses, const std::string& title,
                          const LossCurveOptions& options) {
  if (losses.empty()) throw std::invalid_argument("loss curve '" + path + "': no losses to plot");
  if (steps.size() != losses.size())
    throw std::invalid_argument("loss curve '" + path + "': " + std::to_string(steps.size()) +
                                " steps but " + std::to_string(losses.size()) + " losses");
  for (std::size_t i = 0; i < losses.size(); ++i)
    if (!std::isfinite(losses[i]))
      throw std::invalid_argument("loss curve '" + path + "': loss at index " + std::to_string(i) +
                                  " (step " + std::to_string(steps[i]) +
                                  ") is not finite (hint: the run diverged; lower the learning rate)");
  const int W = options.width, H = options.height;
  if (W < 64 || H < 64)
    throw std::invalid_argument("loss curve '" + path + "': size " + std::to_string(W) + "x" +
                                std::to_string(H) + " is too small (expected at least 64x64)");
  const int window = options.window > 0
                         ? options.window
                         : std::max(1, static_cast<int>(losses.size() / 20));
  const std::vector<double> avg = moving_average(losses, window);

  const bool with_lr = !options.lrs.empty();
  if (with_lr) {
    if (options.lrs.size() != losses.size())
      throw std::invalid_argument("loss curve '" + path + "': " + std::to_string(options.lrs.size()) +
                                  " learning rates but " + std::to_string(losses.size()) + " losses");
    for (std::size_t i = 0; i < options.lrs.size(); ++i)
      if (!std::isfinite(options.lrs[i]))
        throw std::invalid_argument("loss curve '" + path + "': learning rate at index " + std::to_string(i) +
                                    " is not finite");
  }

  const auto [smin, smax] = std::minmax_element(steps.begin(), steps.end());
  const auto [lmin, lmax] = std::minmax_element(losses.begin(), losses.end());
  double x0 = static_cast<double>(*smin), x1 = static_cast<double>(*smax);
  if (x1 <= x0) { x0 -= 1; x1 += 1; }
  const auto [y0, y1] = value_range(losses);
  auto [r0, r1] = with_lr ? value_range(options.lrs) : std::pair<double, double>{0, 1};
  // Learning rates are not negative: the padding below a schedule that ends at 0 stays at 0.
  if (with_lr && *std::min_element(options.lrs.begin(), options.lrs.end()) >= 0) r0 = std::max(r0, 0.0);

  // Plot area inside margins sized for the text: tick values left (loss) and right (lr), step
  // values and the axis name below, the title above.
  const int font = std::max(9, std::min(16, H / 26));
  const int left = std::min(W / 3, font * 4 + 8), right = W - (with_lr ? std::min(W / 3, font * 5 + 12) : font);
  const int top = std::min(H / 4, font * 2 + 4), bottom = H - std::min(H / 4, font * 3);
  auto px = [&](double s) { return left + static_cast<int>(std::lround((s - x0) / (x1 - x0) * (right - left))); };
  auto py = [&](double l) { return bottom - static_cast<int>(std::lround((l - y0) / (y1 - y0) * (bottom - top))); };
  auto pr = [&](double r) { return bottom - static_cast<int>(std::lround((r - r0) / (r1 - r0) * (bottom - top))); };

  Canvas c(W, H);
  constexpr int kTicks = 5;
  for (int t = 0; t <= kTicks; ++t) {
    const int gx = left + (right - left) * t / kTicks, gy = bottom - (bottom - top) * t / kTicks;
    c.line(gx, top, gx, bottom, kGrid, 1);
    c.line(left, gy, right, gy, kGrid, 1);
    c.line(gx, bottom, gx, bottom + 4, kAxis, 1);
    c.line(left - 4, gy, left, gy, kAxis, 1);
    if (with_lr) c.line(right, gy, right + 4, gy, kLr, 1);
  }
  c.line(left, bottom, right, bottom, kAxis, 2);
  c.line(left, top, left, bottom, kAxis, 2);
  if (with_lr) c.line(right, top, right, bottom, kLr, 2);

  auto polyline = [&](const std::vector<double>& ys, Rgb color, int thickness, auto&& to_y) {
    int lx = px(static_cast<double>(steps[0])), ly = to_y(ys[0]);
    c.line(lx, ly, lx, ly, color, thickness);
    for (std::size_t i = 1; i < ys.size(); ++i) {
      const int nx = px(static_cast<double>(steps[i])), ny = to_y(ys[i]);
      c.line(lx, ly, nx, ny, color, thickness);
      lx = nx;
      ly = ny;
    }
  };
  polyline(losses, kRaw, 1, py);
  polyline(avg, kAverage, 3, py);
  if (with_lr) polyline(options.lrs, kLr, 2, pr);

  // Text on top of the drawing.
  OIIO::ImageSpec spec(W, H, 3, OIIO::TypeDesc::UINT8);
  OIIO::ImageBuf buf(spec, c.data());
  auto text = [&](int x, int y, const std::string& t, Rgb color, OIIO::ImageBufAlgo::TextAlignX ax,
                  OIIO::ImageBufAlgo::TextAlignY ay, int size) {
    const float rgb[3] = {color.r / 255.f, color.g / 255.f, color.b / 255.f};
    if (!OIIO::ImageBufAlgo::render_text(buf, x, y, t, size, kFont, OIIO::cspan<float>(rgb, 3), ax, ay))
      throw std::runtime_error("loss curve '" + path + "': cannot render text (" + buf.geterror() +
                               "); hint: install the fonts-dejavu-core package");
  };
  using AX = OIIO::ImageBufAlgo::TextAlignX;
  using AY = OIIO::ImageBufAlgo::TextAlignY;
  for (int t = 0; t <= kTicks; ++t) {
    const int gx = left + (right - left) * t / kTicks, gy = bottom - (bottom - top) * t / kTicks;
    const double sv = x0 + (x1 - x0) * t / kTicks;
    text(gx, bottom + 6, tick_text(std::round(sv)), kAxis, AX::Center, AY::Top, font);
    text(left - 6, gy, tick_text(y0 + (y1 - y0) * t / kTicks), kAverage, AX::Right, AY::Center, font);
    if (with_lr) text(right + 6, gy, tick_text(r0 + (r1 - r0) * t / kTicks), kLr, AX::Left, AY::Center, font);
  }
  text((left + right) / 2, H - 2, "step", kAxis, AX::Center, AY::Bottom, font);
  text(left, top - 4, "loss", kAverage, AX::Center, AY::Bottom, font);
  if (with_lr) text(right, top - 4, "lr", kLr, AX::Center, AY::Bottom, font);
  text((left + right) / 2, 2, title, kAxis, AX::Center, AY::Top, font + 2);

  namespace fs = std::filesystem;
  const fs::path dest(path);
  if (dest.has_parent_path()) fs::create_directories(dest.parent_path());
  const std::string tmp = (dest.parent_path() / ("." + dest.filename().string() + ".tmp" +
                                                  std::to_string(::getpid()) + ".png")).string();
  auto out = OIIO::ImageOutput::create("png");
  if (!out) throw std::runtime_error("loss curve '" + path + "': OpenImageIO has no PNG writer");
  char ranges[160];
  std::snprintf(ranges, sizeof ranges, " (steps %g..%g, loss %.6g..%.6g, average window %d)",
                static_cast<double>(*smin), static_cast<double>(*smax), *lmin, *lmax, window);
  spec.attribute("ImageDescription", title + ranges);
  if (!out->open(tmp, spec) || !out->write_image(OIIO::TypeDesc::UINT8, buf.localpixels()) || !out->close()) {
    const std::string err = out->geterror();
    std::error_code ec;
    fs::remove(tmp, ec);
    throw std::runtime_error("loss curve: cannot write '" + tmp + "': " + err);
  }
  std::error_code ec;
  fs::rename(tmp, dest, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw std::runtime_error("loss curve: cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
  }
}

}  // namespace sumi::logging
