// cv_resize against cv2.resize: goldens written by OpenCV 4.6 (tests/data/cv2_resize/
// make_goldens.py) for noise / gradient / hard-edge images, integer and non-integer factors,
// up and down, one side up and the other down, widths that leave every tail length of
// OpenCV's vector loops, and all interpolations. The outputs must be bit-identical.
#include <doctest/doctest.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "sumi/datasets/cv_resize.h"


using namespace sumi::datasets;

namespace {
std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "cannot open " << path);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
CvInterpolation interpolation(const std::string& name) {
  static const std::map<std::string, CvInterpolation> names = {
      {"area", CvInterpolation::Area},         {"linear", CvInterpolation::Linear},
      {"cubic", CvInterpolation::Cubic},       {"lanczos4", CvInterpolation::Lanczos4},
      {"nearest", CvInterpolation::Nearest},   {"nearest_exact", CvInterpolation::NearestExact}};
  const auto it = names.find(name);
  REQUIRE_MESSAGE(it != names.end(), "unknown interpolation " << name);
  return it->second;
}
}  // namespace

TEST_CASE("cv_resize equals cv2.resize bit for bit on the goldens") {
  const std::string dir = std::string(SUMI_TEST_DATA) + "/cv2_resize/";
  const auto goldens = read_bytes(dir + "goldens.rgb");
  std::ifstream cases(dir + "cases.txt");
  REQUIRE(cases.good());
  std::map<std::string, std::vector<std::uint8_t>> sources;
  std::map<std::string, int> worst;  // per interpolation: the largest difference seen
  int count = 0;
  for (std::string line; std::getline(cases, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    std::string src_name, interp;
    int dw = 0, dh = 0;
    std::size_t offset = 0;
    in >> src_name >> dw >> dh >> interp >> offset;
    int sw = 0, sh = 0;  // src_<name>_<W>x<H>.rgb
    REQUIRE(std::sscanf(src_name.substr(src_name.rfind('_') + 1).c_str(), "%dx%d", &sw, &sh) == 2);
    if (!sources.count(src_name)) sources[src_name] = read_bytes(dir + src_name);
    const auto& src = sources[src_name];
    REQUIRE(src.size() == static_cast<std::size_t>(sw) * sh * 3);
    const std::size_t n = static_cast<std::size_t>(dw) * dh * 3;
    REQUIRE(offset + n <= goldens.size());
    std::vector<std::uint8_t> out(n);
    cv_resize(src.data(), sw, sh, 3, out.data(), dw, dh, interpolation(interp));
    int diff = 0, where = -1;
    for (std::size_t i = 0; i < n; ++i) {
      const int dd = std::abs(int(out[i]) - int(goldens[offset + i]));
      if (dd > diff) diff = dd, where = static_cast<int>(i);
    }
    worst[interp] = std::max(worst[interp], diff);
    INFO(src_name << " -> " << dw << "x" << dh << " " << interp << ": max difference " << diff << " at value " << where
                  << " (pixel " << where / 3 % dw << "," << where / 3 / dw << ")");
    CHECK(diff == 0);
    ++count;
  }
  CHECK(count == 25 * 6);
  for (const auto& [name, d] : worst) MESSAGE(name << ": largest difference from cv2 " << d);
}

TEST_CASE("cv_resize refuses empty sizes and unsupported channel counts") {
  std::vector<std::uint8_t> px(12, 7), out(12);
  CHECK_THROWS_AS(cv_resize(px.data(), 0, 2, 3, out.data(), 2, 2, CvInterpolation::Area), std::invalid_argument);
  CHECK_THROWS_AS(cv_resize(px.data(), 2, 2, 3, out.data(), 2, 0, CvInterpolation::Area), std::invalid_argument);
  CHECK_THROWS_AS(cv_resize(px.data(), 2, 2, 5, out.data(), 1, 1, CvInterpolation::Area), std::invalid_argument);
  cv_resize(px.data(), 2, 2, 3, out.data(), 2, 2, CvInterpolation::Cubic);  // same size: a copy
  CHECK(out == px);
}
