// NumPy's .npy / .npz files (format 1.0-3.0, little-endian, C order), enough to read and write
// kohya-ss sd-scripts' latent caches (`np.savez` of float32 latents and int/float sizes): a
// .npz is a zip of `<name>.npy` members. Files written here load with `np.load`; files
// written by NumPy load here (stored or deflated members). Plain C++17 over libzip.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sumi::datasets {

struct NpzError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One array: NumPy's dtype string ("<f4", "<f8", "<i8", "<i4", "|u1", ...), its shape and
// its bytes in C order.
struct NpyArray {
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> data;

  std::int64_t numel() const;
  static NpyArray of_floats(std::vector<std::int64_t> shape, const std::vector<float>& values);   // "<f4"
  static NpyArray of_doubles(std::vector<std::int64_t> shape, const std::vector<double>& values);  // "<f8"
  static NpyArray of_int64(std::vector<std::int64_t> shape, const std::vector<std::int64_t>& values);  // "<i8"
  // The values as float / double, converted from <f4, <f8, <i4, <i8, |u1 or |b1.
  // Throws NpzError for other dtypes.
  std::vector<float> to_floats() const;
  std::vector<double> to_doubles() const;
};

// The bytes of a .npy file (version 1.0; the header padded to 64 bytes as NumPy does).
std::vector<std::uint8_t> npy_bytes(const NpyArray& a);
// Parses a .npy file's bytes; `name` is for messages. Throws NpzError.
NpyArray parse_npy(const std::vector<std::uint8_t>& bytes, const std::string& name);

using NpzMembers = std::vector<std::pair<std::string, NpyArray>>;  // name without ".npy", file order

// Writes `<file>.tmp` and renames it over `file` (np.savez layout: stored members).
// Throws NpzError naming the file.
void write_npz(const std::filesystem::path& file, const NpzMembers& arrays);
// Every member of a .npz. Throws NpzError naming the file for a missing, non-zip or damaged
// file and for a member that is not a valid .npy.
NpzMembers read_npz(const std::filesystem::path& file);
// The member called `name`, or nullptr.
const NpyArray* find_member(const NpzMembers& members, const std::string& name);

}  // namespace sumi::datasets
