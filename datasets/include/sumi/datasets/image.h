// Reading training images with OpenImageIO (png, jpg, webp, bmp, and whatever else the
// installed OpenImageIO reads) as 8-bit RGB, and kohya's per-sample image steps: resize to
// cover the bucket, crop (centre or random), color_aug, flip_aug. Errors name the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <stdexcept>
#include <vector>

#include "sumi/datasets/bucket.h"
#include "sumi/datasets/cv_resize.h"

namespace sumi::datasets {

struct ImageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// 8-bit RGB, rows top to bottom, pixels interleaved (HWC).
struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgb;
  std::uint8_t* pixel(int x, int y) { return rgb.data() + (static_cast<std::size_t>(y) * width + x) * 3; }
  const std::uint8_t* pixel(int x, int y) const { return rgb.data() + (static_cast<std::size_t>(y) * width + x) * 3; }
};

// kohya's image extensions (.png .jpg .jpeg .webp .bmp, any case).
bool is_image_file(const std::filesystem::path& p);

// The size from the file header (no decode). Throws ImageError naming the file.
Size read_image_size(const std::filesystem::path& p);

// The whole image decoded to RGB8: gray is replicated, alpha dropped (PIL's convert("RGB")),
// higher bit depths converted. Throws ImageError naming the file on any decode failure,
// including truncated data.
Image read_image(const std::filesystem::path& p);

// kohya's resize_interpolation names: "lanczos", "nearest", "bilinear"/"linear",
// "bicubic"/"cubic", "area"/"box". Default: area when neither side grows, else lanczos.
enum class Interpolation { Default, Lanczos, Nearest, Linear, Cubic, Area };
// nullopt for an unknown name.
std::optional<Interpolation> parse_interpolation(const std::string& name);

// The OpenCV interpolation kohya's get_cv2_interpolation picks for a name (lanczos:
// INTER_LANCZOS4, nearest: INTER_NEAREST_EXACT, linear: INTER_LINEAR, cubic: INTER_CUBIC,
// area: INTER_AREA), Default resolved for a `from` -> `to` resize.
CvInterpolation cv_interpolation(Interpolation how, Size from, Size to);
// Resample to `size` as cv2.resize does (sumi/datasets/cv_resize.h): the same pixels.
Image resize_image(const Image& img, Size size, Interpolation how = Interpolation::Default);
Image resize_image(const Image& img, Size size, CvInterpolation how);
Image crop_image(const Image& img, CropOffset at, Size size);
void flip_horizontal(Image& img);

// kohya's AugHelper.color_aug: with probability 0.33, either a hue shift of up to +-8 in
// OpenCV's 0..180 hue scale or x ** gamma, gamma in [0.95, 1.05], clipped to 0..255 (a
// brightness change on 0..255 values, as kohya's numpy code does).
void color_aug(Image& img, std::mt19937_64& rng);

struct AugmentOptions {
  bool random_crop = false;
  bool flip_aug = false;
  bool color_aug = false;
  Interpolation interpolation = Interpolation::Default;
};

struct TrainingImage {
  Image image;            // bucket-sized
  Size original;          // file size, for SDXL conditioning
  CropOffset crop;        // where the resized image was cut
  CropLtrb crop_ltrb;     // kohya's SDXL crop conditioning (mirrored when flipped)
  bool flipped = false;
  Image conditioning;     // ControlNet: the conditioning image, same resize/crop/flip, no color_aug
};

// Read, resize to choice.resized, crop to choice.bucket, color_aug, flip: kohya's order and
// draw order (crop x, crop y, color, flip). A ControlNet conditioning image (same size as the
// image, else ImageError) gets the same resize, crop and flip.
TrainingImage load_training_image(const std::filesystem::path& p, const BucketChoice& choice, const AugmentOptions& aug,
                                  std::mt19937_64& rng, const std::filesystem::path& conditioning = {});

}  // namespace sumi::datasets
