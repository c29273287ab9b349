// `sumi canny` (kohya's tools/canny.py: an edge image for ControlNet conditioning data) and
// `sumi resize_images_to_resolution` (tools/resize_images_to_resolution.py: every image of a
// folder shrunk to at most each of several areas, cascading, and centre-cropped to a multiple
// of --divisible_by). Images are read and written with OpenImageIO.
#include "app/tools/image_tools.h"
#include "app/tools/tools.h"

#include "app/tools/dataset_files.h"
#include "app/tools/tool_args.h"
#include "core/error.h"
#include "core/progress.h"

#include <OpenImageIO/imageio.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <unistd.h>

namespace fs = std::filesystem;
namespace ds = sumi::datasets;

namespace sumi::app::tools {

GrayImage to_gray(const ds::Image& rgb) {
  GrayImage g;
  g.width = rgb.width;
  g.height = rgb.height;
  g.pixels.resize(static_cast<size_t>(rgb.width) * rgb.height);
  for (size_t i = 0; i < g.pixels.size(); ++i) {
    const uint8_t* p = rgb.rgb.data() + i * 3;
    g.pixels[i] = static_cast<uint8_t>((p[0] * 9798 + p[1] * 19235 + p[2] * 3735 + 16384) >> 15);
  }
  return g;
}

GrayImage canny(const GrayImage& g, double threshold1, double threshold2) {
  if (threshold1 > threshold2) std::swap(threshold1, threshold2);
  const int low = static_cast<int>(std::floor(threshold1)), high = static_cast<int>(std::floor(threshold2));
  const int w = g.width, h = g.height;
  const auto px = [&](int x, int y) {
    x = std::clamp(x, 0, w - 1);
    y = std::clamp(y, 0, h - 1);
    return static_cast<int>(g.pixels[static_cast<size_t>(y) * w + x]);
  };
  // Magnitudes with a zero border (OpenCV's padded rows), gradients per pixel.
  const int pw = w + 2;
  std::vector<int> mag(static_cast<size_t>(pw) * (h + 2), 0), gx(static_cast<size_t>(w) * h), gy(gx.size());
  const auto m_at = [&](int x, int y) -> int& { return mag[static_cast<size_t>(y + 1) * pw + (x + 1)]; };
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const int dx = (px(x + 1, y - 1) + 2 * px(x + 1, y) + px(x + 1, y + 1)) - (px(x - 1, y - 1) + 2 * px(x - 1, y) + px(x - 1, y + 1));
      const int dy = (px(x - 1, y + 1) + 2 * px(x, y + 1) + px(x + 1, y + 1)) - (px(x - 1, y - 1) + 2 * px(x, y - 1) + px(x + 1, y - 1));
      gx[static_cast<size_t>(y) * w + x] = dx;
      gy[static_cast<size_t>(y) * w + x] = dy;
      m_at(x, y) = std::abs(dx) + std::abs(dy);
    }
  // 0: candidate, 1: not an edge, 2: edge.
  std::vector<uint8_t> map(static_cast<size_t>(w) * h, 1);
  std::vector<size_t> stack;
  constexpr int64_t kTan22 = 13573;  // tan(22.5°) in 1.15 fixed point, OpenCV's TG22
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const int m = m_at(x, y);
      if (m <= low) continue;
      const int xs = gx[static_cast<size_t>(y) * w + x], ys = gy[static_cast<size_t>(y) * w + x];
      const int64_t ax = std::abs(xs), ay = static_cast<int64_t>(std::abs(ys)) << 15;
      const int64_t tg22x = ax * kTan22;
      bool keep;
      if (ay < tg22x) {
        keep = m > m_at(x - 1, y) && m >= m_at(x + 1, y);
      } else if (ay > tg22x + (ax << 16)) {
        keep = m > m_at(x, y - 1) && m >= m_at(x, y + 1);
      } else {
        const int s = (xs ^ ys) < 0 ? -1 : 1;
        keep = m > m_at(x - s, y - 1) && m > m_at(x + s, y + 1);
      }
      if (!keep) continue;
      const size_t i = static_cast<size_t>(y) * w + x;
      if (m > high) {
        map[i] = 2;
        stack.push_back(i);
      } else {
        map[i] = 0;
      }
    }
  while (!stack.empty()) {
    const size_t i = stack.back();
    stack.pop_back();
    const int x = static_cast<int>(i % w), y = static_cast<int>(i / w);
    for (int dy = -1; dy <= 1; ++dy)
      for (int dx = -1; dx <= 1; ++dx) {
        const int nx = x + dx, ny = y + dy;
        if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
        const size_t n = static_cast<size_t>(ny) * w + nx;
        if (map[n] == 0) {
          map[n] = 2;
          stack.push_back(n);
        }
      }
  }
  GrayImage out;
  out.width = w;
  out.height = h;
  out.pixels.resize(map.size());
  for (size_t i = 0; i < map.size(); ++i) out.pixels[i] = map[i] == 2 ? 255 : 0;
  return out;
}

ResizePlan resize_plan(ds::Size image, long long max_pixels, int divisible_by) {
  ResizePlan p;
  const long long pixels = static_cast<long long>(image.width) * image.height;
  p.scaled = image;
  if (pixels > max_pixels) {
    const double s = std::sqrt(static_cast<double>(max_pixels) / static_cast<double>(pixels));
    p.scaled = {static_cast<int>(image.width * s), static_cast<int>(image.height * s)};
    p.resized = true;
  }
  p.cropped = {p.scaled.width - p.scaled.width % divisible_by, p.scaled.height - p.scaled.height % divisible_by};
  return p;
}

namespace {

// Writes 8-bit pixels (1 or 3 channels) through a temporary file and a rename; the format is
// the extension's. `jpeg_quality`: the quality the kohya script saves JPEGs with.
void write_image_atomic(const fs::path& path, int width, int height, int channels, const uint8_t* data, int jpeg_quality) {
  const std::string ext = path.extension().string();
  const fs::path tmp = path.string() + ".tmp-" + std::to_string(::getpid()) + ext;
  auto out = OIIO::ImageOutput::create(tmp.string());
  if (!out) throw host::UserError("cannot write " + path.string() + ": no image writer for '" + ext + "' (" + OIIO::geterror() + ")");
  OIIO::ImageSpec spec(width, height, channels, OIIO::TypeDesc::UINT8);
  spec.attribute("Compression", "jpeg:" + std::to_string(jpeg_quality));
  spec.attribute("jpeg:subsampling", "4:2:0");
  if (!out->open(tmp.string(), spec) || !out->write_image(OIIO::TypeDesc::UINT8, data) || !out->close()) {
    const std::string err = out->geterror();
    std::error_code ec;
    fs::remove(tmp, ec);
    throw host::UserError("cannot write " + path.string() + ": " + err);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw host::UserError("cannot write " + path.string() + ": " + ec.message());
}

ds::Image read_rgb(const fs::path& p) {
  try {
    return ds::read_image(p);
  } catch (const std::exception& e) {
    throw host::UserError(std::string(e.what()) + " (expected an image OpenImageIO can read)");
  }
}

void copy_atomic(const fs::path& from, const fs::path& to) {
  const fs::path tmp = to.string() + ".tmp-" + std::to_string(::getpid());
  std::error_code ec;
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, ec);
  if (!ec) fs::rename(tmp, to, ec);
  if (ec) {
    std::error_code ignore;
    fs::remove(tmp, ignore);
    throw host::UserError("cannot copy " + from.string() + " to " + to.string() + ": " + ec.message());
  }
}

// os.path.splitext: the last dot of the name, leading dots not counting.
std::pair<std::string, std::string> splitext(const std::string& name) {
  size_t first = name.find_first_not_of('.');
  if (first == std::string::npos) return {name, ""};
  const size_t dot = name.rfind('.');
  if (dot == std::string::npos || dot < first) return {name, ""};
  return {name.substr(0, dot), name.substr(dot)};
}

bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

// kohya's img_exts of this script: lower case only (str.endswith).
bool script_image_name(const std::string& name) {
  for (const char* e : {".png", ".jpg", ".jpeg", ".webp", ".bmp"})
    if (ends_with(name, e)) return true;
  return false;
}

}  // namespace

int cmd_canny(const std::vector<std::string>& argv) {
  ToolArgs args("canny", "Writes the Canny edge image of an image, as cv2.Canny (kohya tools/canny.py).");
  args.value("input", "image to read")
      .value("output", "edge image to write (format from the extension)")
      .value("thres1", "lower hysteresis threshold", "32")
      .value("thres2", "upper hysteresis threshold", "224");
  if (!args.parse(argv)) return 0;
  const std::string input = args.required("input"), output = args.required("output");
  const int64_t t1 = args.integer("thres1"), t2 = args.integer("thres2");
  std::error_code ec;
  if (fs::exists(output, ec) && fs::equivalent(input, output, ec))
    args.fail("--output '" + output + "' is the input image; write the edges to another file");
  const GrayImage edges = canny(to_gray(read_rgb(input)), static_cast<double>(t1), static_cast<double>(t2));
  write_image_atomic(output, edges.width, edges.height, 1, edges.pixels.data(), 95);  // cv2.imwrite's JPEG quality
  std::cout << "done!\n";
  return 0;
}

int cmd_resize_images_to_resolution(const std::vector<std::string>& argv) {
  ToolArgs args("resize_images_to_resolution",
                "Shrinks every image of a folder to at most the given areas, keeping the aspect ratio "
                "(kohya tools/resize_images_to_resolution.py).");
  args.positional("src_img_folder", "folder of the images")
      .positional("dst_img_folder", "folder to write to (created if missing)")
      .value("max_resolution", "maximum areas as WxH, comma-separated; each is applied to the previous one's result",
             "512x512,384x384,256x256,128x128")
      .value("divisible_by", "crop each side (centred) to a multiple of this", "1")
      .value("interpolation", "resampling filter", "area", {"area", "cubic", "lanczos4"})
      .flag("save_as_png", "save .png files (default .jpg, quality 100)")
      .flag("copy_associated_files", "also copy the files with an image's name and another extension (captions), "
                                     "renamed like the images");
  if (!args.parse(argv)) return 0;
  const fs::path src = args.str("src_img_folder"), dst = args.str("dst_img_folder");
  const int64_t divisible_by = args.integer("divisible_by");
  if (divisible_by < 1) args.fail("--divisible_by must be at least 1 (got " + std::to_string(divisible_by) + ")");
  struct Resolution {
    std::string name;
    long long pixels;
  };
  std::vector<Resolution> resolutions;
  {
    const std::string list = args.str("max_resolution");
    size_t from = 0;
    while (true) {
      const size_t comma = list.find(',', from);
      const std::string item = py_strip(list.substr(from, comma == std::string::npos ? std::string::npos : comma - from));
      const size_t x = item.find('x');
      long long wh[2] = {0, 0};
      bool ok = x != std::string::npos && item.find('x', x + 1) == std::string::npos;
      for (int k = 0; ok && k < 2; ++k) {
        const std::string part = py_strip(k == 0 ? item.substr(0, x) : item.substr(x + 1));
        ok = !part.empty() && part.find_first_not_of("0123456789") == std::string::npos && part.size() < 10;
        if (ok) wh[k] = std::stoll(part);
      }
      if (!ok || wh[0] * wh[1] <= 0)
        args.fail("--max_resolution '" + list + "': '" + item + "' is not WIDTHxHEIGHT (e.g. 512x512,768x768)");
      resolutions.push_back({item, wh[0] * wh[1]});
      if (comma == std::string::npos) break;
      from = comma + 1;
    }
  }
  std::error_code ec;
  if (!fs::is_directory(src, ec)) args.fail("src_img_folder '" + src.string() + "' is not a folder");
  if (fs::exists(dst, ec) && fs::equivalent(src, dst, ec))
    args.fail("dst_img_folder '" + dst.string() + "' is the source folder; write to another folder");
  fs::create_directories(dst, ec);
  if (ec) args.fail("cannot create dst_img_folder '" + dst.string() + "': " + ec.message());
  const std::string interpolation = args.str("interpolation");
  // cv2.INTER_CUBIC / INTER_LANCZOS4 / INTER_AREA, as the script passes them to cv2.resize.
  const ds::CvInterpolation how = interpolation == "cubic"      ? ds::CvInterpolation::Cubic
                                  : interpolation == "lanczos4" ? ds::CvInterpolation::Lanczos4
                                                                : ds::CvInterpolation::Area;
  const std::string out_ext = args.on("save_as_png") ? ".png" : ".jpg";

  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(src, ec)) names.push_back(e.path().filename().string());
  if (ec) args.fail("cannot list src_img_folder '" + src.string() + "': " + ec.message());
  std::sort(names.begin(), names.end());
  sumi_progress* bar = host::progress_begin("resizing", static_cast<int64_t>(names.size()));
  try {
    for (const std::string& name : names) {
      host::progress_update(bar, 1, nullptr);
      const fs::path from = src / name;
      if (!script_image_name(name)) {
        if (fs::is_directory(from, ec)) {
          std::cout << "Skipping folder " << from.string() << " (only the files of src_img_folder are processed)\n";
          continue;
        }
        copy_atomic(from, dst / name);
        continue;
      }
      ds::Image img = read_rgb(from);
      const std::string base = splitext(name).first;
      for (const Resolution& r : resolutions) {
        const ResizePlan plan = resize_plan({img.width, img.height}, r.pixels, static_cast<int>(divisible_by));
        if (plan.cropped.width <= 0 || plan.cropped.height <= 0)
          throw host::UserError(from.string() + ": " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                                " would become empty at " + r.name + " with --divisible_by " + std::to_string(divisible_by));
        if (plan.resized) img = ds::resize_image(img, plan.scaled, how);
        const ds::CropOffset at{(img.width - plan.cropped.width) / 2, (img.height - plan.cropped.height) / 2};
        img = ds::crop_image(img, at, plan.cropped);
        const std::string out_name = base + "+" + r.name + out_ext;
        write_image_atomic(dst / out_name, img.width, img.height, 3, img.rgb.data(), 100);
        std::cout << (plan.resized ? "Resized" : "Saved") << " image: " << name << " with size " << img.height << "x"
                  << img.width << " as " << out_name << "\n";
      }
      if (args.on("copy_associated_files")) {
        // glob(base + ".*"): every other file of that name, whatever its extension.
        std::vector<std::string> assoc;
        for (const std::string& other : names)
          if (other.size() > base.size() + 1 && other.compare(0, base.size() + 1, base + ".") == 0)
            assoc.push_back(other);
        for (const std::string& other : assoc) {
          const std::string ext = splitext(other).second;
          if (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".webp" || ext == ".bmp") continue;
          if (fs::is_directory(src / other, ec)) continue;
          for (const Resolution& r : resolutions) {
            const std::string to = base + "+" + r.name + ext;
            std::cout << "Copy " << (src / other).string() << " as " << to << "\n";
            copy_atomic(src / other, dst / to);
          }
        }
      }
    }
  } catch (...) {
    host::progress_end(bar);
    throw;
  }
  host::progress_end(bar);
  return 0;
}

}  // namespace sumi::app::tools
