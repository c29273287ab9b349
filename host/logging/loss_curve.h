// loss_curve.h — a PNG line chart of the training loss, for runs looked at without TensorBoard.
//
// Draws axes with tick marks, the raw per-step loss as a thin light line and a trailing moving
// average as a thicker dark one. There is no text rendering: the title and the axis ranges
// go into the PNG's ImageDescription metadata. Written to a temp file, then renamed over.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sumi::logging {

struct LossCurveOptions {
  int width = 800;
  int height = 400;
  int window = 0;  // moving-average window in points; 0: about 1/20 of the points (at least 1)
};

// Throws std::invalid_argument for empty or mismatched inputs, a non-finite loss (naming its
// index) or a size under 64x64; std::runtime_error naming the path when writing fails.
void write_loss_curve_png(const std::string& path, const std::vector<std::int64_t>& steps,
                          const std::vector<double>& losses, const std::string& title,
                          const LossCurveOptions& options = {});

// Trailing mean over `window` points (fewer at the start), as drawn on the chart.
std::vector<double> moving_average(const std::vector<double>& values, int window);

}  // namespace sumi::logging
