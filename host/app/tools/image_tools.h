// The image steps of kohya's tools/canny.py and tools/resize_images_to_resolution.py, as
// functions (the commands are `sumi canny` and `sumi resize_images_to_resolution`; tests call
// these directly).
#pragma once

#include <sumi/datasets/image.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sumi::app::tools {

// One 8-bit channel, rows top to bottom.
struct GrayImage {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;
};

// cv2.cvtColor(BGR2GRAY) on 8 bits as OpenCV 4 computes it: (R*9798 + G*19235 + B*3735 + 16384) >> 15.
GrayImage to_gray(const datasets::Image& rgb);

// cv2.Canny(gray, threshold1, threshold2) with its defaults (3x3 Sobel with replicated
// borders, L1 magnitude |dx|+|dy|): non-maximum suppression in four directions (tan 22.5°
// sectors, ties broken towards the left / upper neighbour as OpenCV does), thresholds floored
// to integers and swapped when threshold1 > threshold2, a pixel is strong above the high one
// and a candidate above the low one, candidates 8-connected to strong pixels kept. 255 on edges.
GrayImage canny(const GrayImage& gray, double threshold1, double threshold2);

// resize_images_to_resolution's size for one maximum area: the image scaled by
// sqrt(max_pixels / pixels) (each side truncated) when it has more pixels, then each side
// rounded down to a multiple of divisible_by. `resized` says whether it is scaled.
struct ResizePlan {
  datasets::Size scaled;  // the size it is resized to (the original when not resized)
  datasets::Size cropped; // the centre crop of `scaled` that is saved
  bool resized = false;
};
ResizePlan resize_plan(datasets::Size image, long long max_pixels, int divisible_by);

}  // namespace sumi::app::tools
