#include "sumi/datasets/bucket.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

#include "sumi/datasets/random.h"

namespace sumi::datasets {

std::string to_string(Size s) { return std::to_string(s.width) + "x" + std::to_string(s.height); }

namespace {
// Python's floor division and modulo for the positive operands used here.
long long floordiv(long long a, long long b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }
}  // namespace

std::vector<Size> make_bucket_resolutions(Size max_reso, int min_size, int max_size, int divisible) {
  if (divisible <= 0) throw std::invalid_argument("bucket_reso_steps must be positive, found " + std::to_string(divisible));
  const long long max_area = static_cast<long long>(max_reso.width) * max_reso.height;
  std::set<Size> resos;
  // The square bucket: floor(sqrt(area) / steps) * steps (Python float `//`).
  const int square = static_cast<int>(std::floor(std::sqrt(static_cast<double>(max_area)) / divisible)) * divisible;
  resos.insert({square, square});
  // Every width from min to max in steps, with the tallest height that keeps the area.
  for (int width = min_size; width <= max_size; width += divisible) {
    const int height = static_cast<int>(std::min<long long>(max_size, floordiv(floordiv(max_area, width), divisible) * divisible));
    if (height >= min_size) {
      resos.insert({width, height});
      resos.insert({height, width});
    }
  }
  return {resos.begin(), resos.end()};
}

BucketSettings adjusted(const BucketSettings& in) {
  BucketSettings s = in;
  const std::string where = " (bucket settings)";
  if (s.resolution.width <= 0 || s.resolution.height <= 0)
    throw std::invalid_argument("resolution must be positive, found " + to_string(s.resolution) + where);
  if (!s.enable_bucket) return s;
  if (s.reso_steps <= 0)
    throw std::invalid_argument("bucket_reso_steps must be positive, found " + std::to_string(s.reso_steps) + where);
  if (s.min_bucket_reso % s.reso_steps != 0) s.min_bucket_reso -= s.min_bucket_reso % s.reso_steps;
  if (s.max_bucket_reso % s.reso_steps != 0) s.max_bucket_reso += s.reso_steps - s.max_bucket_reso % s.reso_steps;
  if (std::min(s.resolution.width, s.resolution.height) < s.min_bucket_reso)
    throw std::invalid_argument("min_bucket_reso must be at most the smaller side of resolution " + to_string(s.resolution) +
                                ", found " + std::to_string(s.min_bucket_reso) + " after rounding down to bucket_reso_steps " +
                                std::to_string(s.reso_steps) + "; lower min_bucket_reso");
  if (std::max(s.resolution.width, s.resolution.height) > s.max_bucket_reso)
    throw std::invalid_argument("max_bucket_reso must be at least the larger side of resolution " + to_string(s.resolution) +
                                ", found " + std::to_string(s.max_bucket_reso) + "; raise max_bucket_reso");
  return s;
}

BucketSelector::BucketSelector(const BucketSettings& settings) : settings_(adjusted(settings)) {
  if (!settings_.enable_bucket) {
    // One fixed bucket; selection below then only computes the covering resize.
    predefined_ = {settings_.resolution};
  } else if (!settings_.no_upscale) {
    predefined_ = make_bucket_resolutions(settings_.resolution, settings_.min_bucket_reso, settings_.max_bucket_reso,
                                          settings_.reso_steps);
  }
  for (Size r : predefined_) aspect_ratios_.push_back(static_cast<double>(r.width) / r.height);
}

int BucketSelector::round_to_steps(double x) const {
  const int v = static_cast<int>(x + 0.5);  // Python int(): truncation
  return v - v % settings_.reso_steps;
}

BucketChoice BucketSelector::select(Size image) const {
  if (image.width <= 0 || image.height <= 0)
    throw std::invalid_argument("cannot bucket an image of size " + to_string(image));
  const double aspect = static_cast<double>(image.width) / image.height;
  const bool upscale_path = !settings_.enable_bucket || !settings_.no_upscale;
  if (upscale_path) {
    // An image already at a bucket size keeps it (several buckets can share an aspect ratio);
    // otherwise the first bucket with the smallest |aspect error| (numpy argmin).
    Size reso = image;
    if (std::find(predefined_.begin(), predefined_.end(), image) == predefined_.end()) {
      std::size_t best = 0;
      double best_err = std::abs(aspect_ratios_[0] - aspect);
      for (std::size_t i = 1; i < aspect_ratios_.size(); ++i) {
        const double err = std::abs(aspect_ratios_[i] - aspect);
        if (err < best_err) best = i, best_err = err;
      }
      reso = predefined_[best];
    }
    // Scale so the image covers the bucket: match the side that is relatively shorter.
    const double reso_aspect = static_cast<double>(reso.width) / reso.height;
    const double scale = aspect > reso_aspect ? static_cast<double>(reso.height) / image.height
                                              : static_cast<double>(reso.width) / image.width;
    const Size resized{static_cast<int>(image.width * scale + 0.5), static_cast<int>(image.height * scale + 0.5)};
    return {reso, resized, reso_aspect - aspect};
  }

  // bucket_no_upscale: shrink to the maximum area if larger, then the bucket is the resized
  // size cut down to reso steps (cropping, never padding).
  const double max_area = static_cast<double>(settings_.resolution.width) * settings_.resolution.height;
  Size resized = image;
  if (static_cast<double>(image.width) * image.height > max_area) {
    const double rw = std::sqrt(max_area * aspect);
    const double rh = max_area / rw;
    // Round either the width or the height to steps, whichever keeps the aspect ratio better.
    const int w_rounded = round_to_steps(rw);
    const int h_in_wr = round_to_steps(w_rounded / aspect);
    const int h_rounded = round_to_steps(rh);
    const int w_in_hr = round_to_steps(h_rounded * aspect);
    if (h_in_wr == 0 || h_rounded == 0)
      throw std::invalid_argument("image " + to_string(image) + " is too elongated for bucket_no_upscale at resolution " +
                                  to_string(settings_.resolution) + " and bucket_reso_steps " +
                                  std::to_string(settings_.reso_steps));
    const double ar_w = static_cast<double>(w_rounded) / h_in_wr;
    const double ar_h = static_cast<double>(w_in_hr) / h_rounded;
    if (std::abs(ar_w - aspect) < std::abs(ar_h - aspect))
      resized = {w_rounded, static_cast<int>(w_rounded / aspect + 0.5)};
    else
      resized = {static_cast<int>(h_rounded * aspect + 0.5), h_rounded};
  }
  const Size bucket{resized.width - resized.width % settings_.reso_steps,
                    resized.height - resized.height % settings_.reso_steps};
  if (bucket.width <= 0 || bucket.height <= 0)
    throw std::invalid_argument("image " + to_string(image) + " has a side smaller than bucket_reso_steps " +
                                std::to_string(settings_.reso_steps) + " (bucket_no_upscale never enlarges images)");
  return {bucket, resized, static_cast<double>(bucket.width) / bucket.height - aspect};
}

CropOffset crop_offset(Size resized, Size bucket, bool random_crop, std::mt19937_64& rng) {
  if (resized.width < bucket.width || resized.height < bucket.height)
    throw std::invalid_argument("resized image " + to_string(resized) + " does not cover bucket " + to_string(bucket));
  CropOffset c;
  // Width first, then height: the order kohya draws them in.
  const int tw = resized.width - bucket.width, th = resized.height - bucket.height;
  if (tw > 0) c.left = random_crop ? static_cast<int>(uniform_int(rng, 0, tw)) : tw / 2;
  if (th > 0) c.top = random_crop ? static_cast<int>(uniform_int(rng, 0, th)) : th / 2;
  return c;
}

CropLtrb sdxl_crop_ltrb(Size bucket, Size original) {
  const double bucket_ar = static_cast<double>(bucket.width) / bucket.height;
  const double image_ar = static_cast<double>(original.width) / original.height;
  double rw, rh;
  if (bucket_ar > image_ar) {
    rw = bucket.height * image_ar;
    rh = bucket.height;
  } else {
    rw = bucket.width;
    rh = bucket.width / image_ar;
  }
  const double left = std::floor((bucket.width - rw) / 2), top = std::floor((bucket.height - rh) / 2);
  return {left, top, left + rw, top + rh};
}

}  // namespace sumi::datasets
