// Fuzz harness: NumPy .npz / .npy reading (datasets/src/npz.cpp) and kohya's latent-cache
// check on top of it (read_cached_latents). An input starting with the .npy magic is parsed
// as one array (zip CRCs would otherwise keep most mutations away from the .npy parser);
// anything else is opened as a .npz by path, as the latent cache does.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "fuzz_support.h"
#include "sumi/datasets/latent_cache.h"
#include "sumi/datasets/npz.h"

namespace ds = sumi::datasets;

namespace {

// An accepted array's shape accounts for its bytes exactly (callers size tensors by it).
void check_shape(const std::vector<std::int64_t>& shape, std::size_t values) {
  unsigned __int128 n = 1;
  for (std::int64_t d : shape) {
    if (d < 0) std::abort();
    if (d == 0) n = 0;
  }
  for (std::int64_t d : shape) {
    if (n > values) break;  // keeps the product within 128 bits
    n *= static_cast<std::uint64_t>(d);
  }
  if (n != values) std::abort();
}

std::uint64_t convert_all(const ds::NpyArray& a) {
  std::uint64_t sum = a.dtype.size() + a.shape.size() + a.data.size();
  const std::size_t item = a.dtype.size() >= 3 ? static_cast<std::size_t>(a.dtype[2] - '0') : 0;
  if (a.dtype.size() == 3 && item > 0 && a.data.size() % item == 0) check_shape(a.shape, a.data.size() / item);
  try {
    sum += a.to_floats().size();
  } catch (const ds::NpzError&) {
  }
  try {
    sum += a.to_doubles().size();
  } catch (const ds::NpzError&) {
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::uint64_t sum = 0;
  if (size >= 6 && std::memcmp(data, "\x93NUMPY", 6) == 0) {
    try {
      const ds::NpyArray a = ds::parse_npy(std::vector<std::uint8_t>(data, data + size), "fuzz.npy");
      sum += convert_all(a);
    } catch (const ds::NpzError&) {
    }
    sumi::fuzz::use(sum);
    return 0;
  }
  sumi::fuzz::MemFile file(data, size, "fuzz.npz");
  try {
    for (const auto& [name, a] : ds::read_npz(file.path())) sum += name.size() + convert_all(a);
  } catch (const ds::NpzError&) {
  }
  // The latent cache's own checks on the same file: a 64x64 bucket (8x8 latents), with and
  // without flip_aug.
  for (bool flip : {false, true}) {
    ds::LatentKey key;
    key.bucket = {64, 64};
    key.original = {64, 64};
    key.crop_ltrb = {0, 0, 64, 64};
    key.flip = flip;
    std::string why;
    if (auto c = ds::read_cached_latents(file.path(), key, &why)) {
      check_shape(c->shape, c->latents.size());
      if (!c->flipped.empty()) check_shape(c->shape, c->flipped.size());
      sum += c->latents.size() + c->flipped.size();
    }
    sum += why.size();
  }
  sumi::fuzz::use(sum);
  return 0;
}
