// Fuzz harness: safetensors headers (sdk/io/src/safetensors.cpp), as SafetensorsFile::open reads
// a file. The input is the whole file: 8-byte header length, JSON header, data region.
// Besides not crashing, an accepted file must keep the promises the reader makes: every
// tensor's bytes lie inside the data region, match its shape and dtype, and do not overlap.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "fuzz_support.h"
#include "sumi/io/safetensors.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();  // an accepted header broke one of the reader's promises
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  sumi::fuzz::MemFile file(data, size, "fuzz.safetensors");
  std::shared_ptr<sumi::io::SafetensorsFile> st;
  try {
    st = sumi::io::SafetensorsFile::open(file.path());
  } catch (const sumi::io::FormatError&) {
    return 0;
  }
  check(st->file_size() == size && st->data_start() >= 8 && st->data_start() <= size);
  const std::uint64_t data_len = size - st->data_start();
  std::uint64_t sum = 0;
  for (const auto& t : st->tensors()) {
    check(st->find(t.name) == &t);
    check(t.offset <= data_len && t.nbytes <= data_len - t.offset);
    check(sumi::io::is_known_dtype(t.dtype));
    std::uint64_t n = sumi::io::dtype_size(t.dtype);
    for (std::int64_t d : t.shape) {
      check(d >= 0);
      n *= static_cast<std::uint64_t>(d);
    }
    check(n == t.nbytes);
    check(static_cast<std::uint64_t>(t.numel()) * sumi::io::dtype_size(t.dtype) == t.nbytes);
    // Read the tensor's first and last byte through the mapping, as a loader would.
    if (t.nbytes) {
      const std::uint8_t* p = st->data(t);
      sum += p[0] + p[t.nbytes - 1];
    }
  }
  for (const auto& [k, v] : st->metadata()) sum += k.size() + v.size();
  sumi::fuzz::use(sum);
  return 0;
}
