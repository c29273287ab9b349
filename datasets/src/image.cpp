#include "sumi/datasets/image.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include <OpenImageIO/imageio.h>

#include "sumi/datasets/cv_resize.h"
#include "sumi/datasets/random.h"

namespace sumi::datasets {
namespace fs = std::filesystem;
using namespace OIIO;

bool is_image_file(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".webp" || ext == ".bmp";
}

namespace {
[[noreturn]] void fail(const fs::path& p, const std::string& what, const std::string& detail) {
  std::string msg = "cannot read image " + p.string() + ": " + what;
  if (!detail.empty()) msg += " (" + detail + ")";
  msg += "; re-export the file or remove it from the dataset";
  throw ImageError(msg);
}

std::unique_ptr<ImageInput> open(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) throw ImageError("image " + p.string() + " does not exist or is not a file");
  auto in = ImageInput::open(p.string());
  if (!in) fail(p, "not a readable image", OIIO::geterror());
  return in;
}
}  // namespace

Size read_image_size(const fs::path& p) {
  auto in = open(p);
  const ImageSpec& spec = in->spec();
  if (spec.width <= 0 || spec.height <= 0) fail(p, "empty image", "");
  return {spec.width, spec.height};
}

Image read_image(const fs::path& p) {
  auto in = open(p);
  const ImageSpec spec = in->spec();
  if (spec.width <= 0 || spec.height <= 0 || spec.nchannels <= 0) fail(p, "empty image", "");
  const int nc = spec.nchannels;
  std::vector<std::uint8_t> raw(static_cast<std::size_t>(spec.width) * spec.height * nc);
  if (!in->read_image(0, 0, 0, nc, TypeDesc::UINT8, raw.data())) fail(p, "decoding failed", in->geterror());
  const std::string err = in->geterror();  // some readers warn on truncation yet return true
  if (!err.empty()) fail(p, "decoding failed", err);
  in->close();
  Image img;
  img.width = spec.width;
  img.height = spec.height;
  img.rgb.resize(static_cast<std::size_t>(img.width) * img.height * 3);
  const std::size_t n = static_cast<std::size_t>(img.width) * img.height;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t* s = raw.data() + i * nc;
    std::uint8_t* d = img.rgb.data() + i * 3;
    if (nc >= 3) {
      d[0] = s[0], d[1] = s[1], d[2] = s[2];
    } else {
      d[0] = d[1] = d[2] = s[0];  // gray (+ alpha)
    }
  }
  return img;
}

std::optional<Interpolation> parse_interpolation(const std::string& name) {
  if (name == "lanczos") return Interpolation::Lanczos;
  if (name == "nearest") return Interpolation::Nearest;
  if (name == "bilinear" || name == "linear") return Interpolation::Linear;
  if (name == "bicubic" || name == "cubic") return Interpolation::Cubic;
  if (name == "area" || name == "box") return Interpolation::Area;
  return std::nullopt;
}

CvInterpolation cv_interpolation(Interpolation how, Size from, Size to) {
  switch (how) {
    case Interpolation::Default:
      // kohya's resize_image: area when neither side grows, else lanczos.
      return from.width >= to.width && from.height >= to.height ? CvInterpolation::Area : CvInterpolation::Lanczos4;
    case Interpolation::Lanczos: return CvInterpolation::Lanczos4;
    case Interpolation::Nearest: return CvInterpolation::NearestExact;  // kohya's get_cv2_interpolation
    case Interpolation::Linear: return CvInterpolation::Linear;
    case Interpolation::Cubic: return CvInterpolation::Cubic;
    case Interpolation::Area: return CvInterpolation::Area;
  }
  return CvInterpolation::Area;
}

Image resize_image(const Image& img, Size size, Interpolation how) {
  return resize_image(img, size, cv_interpolation(how, {img.width, img.height}, size));
}

Image resize_image(const Image& img, Size size, CvInterpolation how) {
  if (size.width <= 0 || size.height <= 0) throw std::invalid_argument("resize to empty size " + to_string(size));
  if (size.width == img.width && size.height == img.height) return img;
  Image out;
  out.width = size.width;
  out.height = size.height;
  out.rgb.resize(static_cast<std::size_t>(size.width) * size.height * 3);
  cv_resize(img.rgb.data(), img.width, img.height, 3, out.rgb.data(), size.width, size.height, how);
  return out;
}

Image crop_image(const Image& img, CropOffset at, Size size) {
  if (at.left < 0 || at.top < 0 || at.left + size.width > img.width || at.top + size.height > img.height)
    throw std::invalid_argument("crop " + to_string(size) + " at " + std::to_string(at.left) + "," + std::to_string(at.top) +
                                " does not fit in " + std::to_string(img.width) + "x" + std::to_string(img.height));
  Image out;
  out.width = size.width;
  out.height = size.height;
  out.rgb.resize(static_cast<std::size_t>(size.width) * size.height * 3);
  for (int y = 0; y < size.height; ++y)
    std::copy_n(img.pixel(at.left, at.top + y), static_cast<std::size_t>(size.width) * 3, out.pixel(0, y));
  return out;
}

void flip_horizontal(Image& img) {
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width / 2; ++x) std::swap_ranges(img.pixel(x, y), img.pixel(x, y) + 3, img.pixel(img.width - 1 - x, y));
}

void color_aug(Image& img, std::mt19937_64& rng) {
  if (!(uniform01(rng) <= 0.33)) return;
  if (uniform01(rng) > 0.5) {
    // Hue shift in OpenCV's half-degree units: h' = (h + shift) mod 180.
    double shift = uniform_real(rng, -8.0, 8.0);
    if (shift < 0) shift += 180;
    for (std::size_t i = 0; i < img.rgb.size(); i += 3) {
      const double r = img.rgb[i] / 255.0, g = img.rgb[i + 1] / 255.0, b = img.rgb[i + 2] / 255.0;
      const double mx = std::max({r, g, b}), mn = std::min({r, g, b}), d = mx - mn;
      if (d <= 0) continue;  // gray: no hue
      double h = mx == r ? 60 * (g - b) / d : mx == g ? 60 * (b - r) / d + 120 : 60 * (r - g) / d + 240;
      if (h < 0) h += 360;
      h = std::fmod(h / 2 + shift, 180.0) * 2;  // back to degrees
      const double s = d / mx, v = mx;
      const double c = v * s, hp = h / 60, x = c * (1 - std::abs(std::fmod(hp, 2.0) - 1)), m = v - c;
      double rr = 0, gg = 0, bb = 0;
      switch (static_cast<int>(hp) % 6) {
        case 0: rr = c, gg = x; break;
        case 1: rr = x, gg = c; break;
        case 2: gg = c, bb = x; break;
        case 3: gg = x, bb = c; break;
        case 4: rr = x, bb = c; break;
        default: rr = c, bb = x; break;
      }
      img.rgb[i] = static_cast<std::uint8_t>(std::lround((rr + m) * 255));
      img.rgb[i + 1] = static_cast<std::uint8_t>(std::lround((gg + m) * 255));
      img.rgb[i + 2] = static_cast<std::uint8_t>(std::lround((bb + m) * 255));
    }
  } else {
    const double gamma = uniform_real(rng, 0.95, 1.05);
    std::uint8_t lut[256];
    for (int v = 0; v < 256; ++v) lut[v] = static_cast<std::uint8_t>(std::clamp(std::pow(v, gamma), 0.0, 255.0));
    for (auto& px : img.rgb) px = lut[px];
  }
}

TrainingImage load_training_image(const fs::path& p, const BucketChoice& choice, const AugmentOptions& aug,
                                  std::mt19937_64& rng, const fs::path& conditioning) {
  TrainingImage out;
  Image img = read_image(p);
  out.original = {img.width, img.height};
  img = resize_image(img, choice.resized, aug.interpolation);
  out.crop = crop_offset(choice.resized, choice.bucket, aug.random_crop, rng);
  out.image = crop_image(img, out.crop, choice.bucket);
  out.crop_ltrb = sdxl_crop_ltrb(choice.bucket, out.original);
  if (!conditioning.empty()) {
    Image cond = read_image(conditioning);
    if (cond.width != out.original.width || cond.height != out.original.height)
      throw ImageError("conditioning image " + conditioning.string() + " is " + std::to_string(cond.width) + "x" +
                       std::to_string(cond.height) + " but its training image " + p.string() + " is " +
                       to_string(out.original) + "; they must be the same size");
    out.conditioning = crop_image(resize_image(cond, choice.resized, aug.interpolation), out.crop, choice.bucket);
  }
  if (aug.color_aug) color_aug(out.image, rng);
  out.flipped = aug.flip_aug && uniform01(rng) < 0.5;
  if (out.flipped) {
    flip_horizontal(out.image);
    if (!out.conditioning.rgb.empty()) flip_horizontal(out.conditioning);
    const double w = choice.bucket.width;
    out.crop_ltrb = {w - out.crop_ltrb.right, out.crop_ltrb.top, w - out.crop_ltrb.left, out.crop_ltrb.bottom};
  }
  return out;
}

}  // namespace sumi::datasets
