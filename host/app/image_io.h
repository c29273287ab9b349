// Image files through OpenImageIO: 8-bit PNG output with text metadata (A1111's `parameters`
// chunk), written to a temporary file and renamed.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>

namespace sumi::app {

// `hwc` is HxWx3 uint8. `text` entries become PNG text chunks (e.g. "parameters").
void write_png(const std::string& path, const at::Tensor& hwc, const std::map<std::string, std::string>& text);

// Reads an image as HxWxC uint8 plus its string metadata (for tests and img2img inputs).
at::Tensor read_image(const std::string& path, std::map<std::string, std::string>* text = nullptr);

}  // namespace sumi::app
