// OpenCV's cv::resize for 8-bit interleaved images, natively: the numbers kohya's dataset code
// and tools get from cv2.resize (train_util.trim_and_resize_if_required, prepare_buckets_latents,
// tools/resize_images_to_resolution.py), without linking OpenCV.
//
// Each interpolation follows OpenCV 4.6's CPU path for CV_8U without IPP (Debian's build; the
// goldens in tests/data/cv2_resize come from it): INTER_AREA's integer-factor block mean and
// fractional-coverage averaging when shrinking, its bilinear "area" rule when enlarging;
// INTER_LINEAR / INTER_CUBIC / INTER_LANCZOS4 as separable fixed-point filters (11-bit
// coefficients, 22-bit rounding, and the 128-bit vector loops' own rounding where OpenCV runs
// them); INTER_NEAREST and INTER_NEAREST_EXACT's source-pixel choice.
#pragma once

#include <cstdint>

namespace sumi::datasets {

enum class CvInterpolation { Nearest, NearestExact, Linear, Cubic, Area, Lanczos4 };

// Resize `src` (sw x sh pixels of `channels` interleaved 8-bit values, rows packed) into `dst`
// (dw x dh, same layout, caller-allocated). channels 1..4; sizes >= 1. Same size: a copy.
// Throws std::invalid_argument on bad sizes or channel counts.
void cv_resize(const std::uint8_t* src, int sw, int sh, int channels, std::uint8_t* dst, int dw, int dh,
               CvInterpolation how);

}  // namespace sumi::datasets
