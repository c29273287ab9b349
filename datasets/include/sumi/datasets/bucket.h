// Aspect-ratio bucketing as kohya-ss sd-scripts does it (library/train_util.py BucketManager,
// library/model_util.py make_bucket_resolutions): which bucket an image of a given size goes
// to, the size it is resized to (covering the bucket) and where it is cropped. The numbers
// are kohya's exactly: same integer/float rounding, same tie-breaking.
// Plain C++17; no image data here, only sizes.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace sumi::datasets {

struct Size {
  int width = 0;
  int height = 0;
  friend bool operator==(Size a, Size b) { return a.width == b.width && a.height == b.height; }
  friend bool operator!=(Size a, Size b) { return !(a == b); }
  // Python tuple order (width, then height): kohya sorts bucket lists this way.
  friend bool operator<(Size a, Size b) {
    return a.width != b.width ? a.width < b.width : a.height < b.height;
  }
};
std::string to_string(Size s);  // "512x768"

struct BucketSettings {
  Size resolution{512, 512};  // the maximum area is resolution.width * resolution.height
  bool enable_bucket = false;
  bool no_upscale = false;     // per-image buckets, images are only shrunk
  int min_bucket_reso = 256;
  int max_bucket_reso = 1024;
  int reso_steps = 64;
};

// kohya's candidate bucket list for a maximum resolution, sorted by (width, height).
std::vector<Size> make_bucket_resolutions(Size max_reso, int min_size, int max_size, int divisible);

// kohya's BaseDataset.adjust_min_max_bucket_reso_by_steps: min rounds down and max rounds up
// to reso_steps, then both must bracket the resolution. Throws std::invalid_argument naming
// the setting. Only meaningful with enable_bucket.
BucketSettings adjusted(const BucketSettings& s);

struct BucketChoice {
  Size bucket;      // the training resolution of the batch the image lands in
  Size resized;     // the image is resized to this first; it covers `bucket`
  double ar_error;  // bucket aspect ratio minus image aspect ratio (kohya's diagnostic)
};

// One dataset's buckets. With enable_bucket off there is one bucket, the resolution, and
// images are scaled to cover it (kohya's latent-caching path).
class BucketSelector {
 public:
  // Validates and adjusts the settings (see adjusted()); throws std::invalid_argument.
  explicit BucketSelector(const BucketSettings& settings);

  // Throws std::invalid_argument for empty images and, with no_upscale, images smaller than
  // one reso step (kohya would make a zero-sized bucket).
  BucketChoice select(Size image) const;

  // The predefined list (empty with no_upscale: buckets then come from the images).
  const std::vector<Size>& predefined() const { return predefined_; }
  const BucketSettings& settings() const { return settings_; }

 private:
  int round_to_steps(double x) const;
  BucketSettings settings_;
  std::vector<Size> predefined_;
  std::vector<double> aspect_ratios_;
};

// Where the resized image is cut to the bucket: centred (kohya's trim_size // 2), or a
// uniformly random offset in [0, trim] per axis when random_crop (kohya's randint).
struct CropOffset {
  int left = 0;
  int top = 0;
};
CropOffset crop_offset(Size resized, Size bucket, bool random_crop, std::mt19937_64& rng);

// kohya's get_crop_ltrb: the (left, top, right, bottom) SDXL size conditioning is computed
// from, independent of the actual (possibly random) crop. Floats as in kohya.
struct CropLtrb {
  double left, top, right, bottom;
};
CropLtrb sdxl_crop_ltrb(Size bucket, Size original);

}  // namespace sumi::datasets
