// loss_curve.h — a PNG line chart of the training loss, for runs looked at without TensorBoard.
//
// Draws axes with labelled ticks (step below, loss on the left), the raw per-step loss as a thin
// light line and a trailing moving average as a thicker dark one, optionally the learning rate
// on its own scale (ticks on the right), and the title on top; text is rendered by OpenImageIO
// (FreeType) in DejaVu Sans. The title and the ranges also go into the PNG's ImageDescription
// metadata. Written to a temp file, then renamed over.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sumi::logging {

struct LossCurveOptions {
  int width = 800;
  int height = 400;
  int window = 0;  // moving-average window in points; 0: about 1/20 of the points (at least 1)
  // The learning rate at each step (same length as the losses), drawn on its own scale with
  // ticks on the right; empty: no learning-rate curve.
  std::vector<double> lrs;
};

// Throws std::invalid_argument for empty or mismatched inputs, a non-finite loss or learning rate
// (naming its index) or a size under 64x64; std::runtime_error naming the path when writing fails
// or no font can be found (hint: the fonts-dejavu-core package).
void write_loss_curve_png(const std::string& path, const std::vector<std::int64_t>& steps,
                          const std::vector<double>& losses, const std::string& title,
                          const LossCurveOptions& options = {});

// Trailing mean over `window` points (fewer at the start), as drawn on the chart.
std::vector<double> moving_average(const std::vector<double>& values, int window);

}  // namespace sumi::logging
