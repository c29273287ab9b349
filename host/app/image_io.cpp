#include "image_io.h"

#include "core/error.h"

#include <OpenImageIO/imageio.h>

#include <filesystem>
#include <unistd.h>

namespace sumi::app {

void write_png(const std::string& path, const at::Tensor& hwc, const std::map<std::string, std::string>& text) {
  if (hwc.dim() != 3 || hwc.size(2) != 3 || hwc.scalar_type() != at::kByte)
    throw host::UserError("write_png: expected an HxWx3 uint8 image for " + path);
  const at::Tensor img = hwc.contiguous();
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + ".png";
  auto out = OIIO::ImageOutput::create(tmp);
  if (!out) throw host::UserError("cannot create PNG writer for " + path + ": " + OIIO::geterror());
  OIIO::ImageSpec spec(static_cast<int>(img.size(1)), static_cast<int>(img.size(0)), 3, OIIO::TypeDesc::UINT8);
  for (const auto& [k, v] : text) spec.attribute(k, v);
  if (!out->open(tmp, spec) || !out->write_image(OIIO::TypeDesc::UINT8, img.data_ptr()) || !out->close()) {
    const std::string err = out->geterror();
    std::filesystem::remove(tmp);
    throw host::UserError("cannot write " + path + ": " + err);
  }
  std::filesystem::rename(tmp, path);
}

at::Tensor read_image(const std::string& path, std::map<std::string, std::string>* text) {
  auto in = OIIO::ImageInput::open(path);
  if (!in) throw host::UserError("cannot read image " + path + ": " + OIIO::geterror());
  const auto& spec = in->spec();
  at::Tensor img = at::empty({spec.height, spec.width, spec.nchannels}, at::kByte);
  if (!in->read_image(0, 0, 0, spec.nchannels, OIIO::TypeDesc::UINT8, img.data_ptr()))
    throw host::UserError("cannot decode image " + path + ": " + in->geterror());
  if (text) {
    for (const auto& p : spec.extra_attribs)
      if (p.type() == OIIO::TypeDesc::STRING) (*text)[p.name().string()] = p.get_string();
  }
  in->close();
  return img;
}

}  // namespace sumi::app
