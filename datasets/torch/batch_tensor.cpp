#include "batch_tensor.h"

#include <ATen/ATen.h>

#include <stdexcept>

namespace sumi::datasets {

at::Tensor images_to_tensor(const std::vector<const Image*>& images) {
  if (images.empty()) throw std::invalid_argument("images_to_tensor: no images");
  const int w = images[0]->width, h = images[0]->height;
  at::Tensor out = at::empty({static_cast<int64_t>(images.size()), 3, h, w}, at::kFloat);
  for (std::size_t i = 0; i < images.size(); ++i) {
    const Image& img = *images[i];
    if (img.width != w || img.height != h || img.rgb.size() != static_cast<std::size_t>(w) * h * 3)
      throw std::invalid_argument("images_to_tensor: image " + std::to_string(i) + " is " + std::to_string(img.width) +
                                  "x" + std::to_string(img.height) + ", expected " + std::to_string(w) + "x" +
                                  std::to_string(h) + " like the first (one batch is one bucket)");
    // from_blob does not own the pixels; the copy into `out` happens before this returns.
    at::Tensor hwc = at::from_blob(const_cast<std::uint8_t*>(img.rgb.data()), {h, w, 3}, at::kByte);
    out[static_cast<int64_t>(i)].copy_(hwc.permute({2, 0, 1}).to(at::kFloat).div_(127.5).sub_(1.0));
  }
  return out;
}

void sdxl_size_conditioning(const std::vector<const TrainingImage*>& samples, const SdxlSizes& out) {
  const auto n = static_cast<int64_t>(samples.size());
  at::Tensor orig = at::empty({n, 2}, at::kLong), crop = at::empty({n, 2}, at::kLong), target = at::empty({n, 2}, at::kLong);
  auto o = orig.accessor<int64_t, 2>(), c = crop.accessor<int64_t, 2>(), t = target.accessor<int64_t, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const TrainingImage& s = *samples[static_cast<std::size_t>(i)];
    o[i][0] = s.original.height;
    o[i][1] = s.original.width;
    c[i][0] = static_cast<int64_t>(s.crop_ltrb.top);
    c[i][1] = static_cast<int64_t>(s.crop_ltrb.left);
    t[i][0] = s.image.height;
    t[i][1] = s.image.width;
  }
  if (out.original_hw) *out.original_hw = orig;
  if (out.crop_top_left) *out.crop_top_left = crop;
  if (out.target_hw) *out.target_hw = target;
}

}  // namespace sumi::datasets
