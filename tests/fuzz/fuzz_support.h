// fuzz_support.h — shared helpers of the parser fuzz harnesses (docs/fuzzing.md).
//
// Each harness defines LLVMFuzzerTestOneInput. Built with clang and -DSUMI_FUZZ=ON it links
// libFuzzer (plus ASan/UBSan); in the normal build it links replay_main.cpp, which feeds it
// every file of a seed corpus, so CI replays the corpora without clang.
//
// A harness catches only the exceptions its parser documents for bad input (FormatError,
// NpzError, RecipeError, ...). Anything else escaping — std::out_of_range, std::length_error,
// std::bad_alloc from a size taken on trust — is a finding, reported as a crash.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace sumi::fuzz {

// The input as a file the parser can open by path, without touching the disk: an anonymous
// memory file named by /proc/self/fd/<n>. Closed when this goes out of scope.
class MemFile {
 public:
  MemFile(const std::uint8_t* data, std::size_t size, const char* name = "sumi-fuzz") {
    fd_ = ::memfd_create(name, MFD_CLOEXEC);
    if (fd_ < 0) throw std::runtime_error("fuzz harness: memfd_create failed");
    std::size_t done = 0;
    while (done < size) {
      const ssize_t w = ::write(fd_, data + done, size - done);
      if (w <= 0) throw std::runtime_error("fuzz harness: writing the memory file failed");
      done += static_cast<std::size_t>(w);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

inline std::string_view text(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Keeps a computed value alive so the optimizer cannot drop the reads that produced it.
template <class T>
inline void use(const T& value) {
  asm volatile("" : : "g"(&value) : "memory");
}

}  // namespace sumi::fuzz
