// Fuzz harness: whole PyTorch checkpoints (sdk/io/src/torch_checkpoint.cpp) as
// load_torch_checkpoint reads them: torch.save's zip format (libzip, then the unpickler) and
// the legacy format (pickles back to back, then raw storages). Every tensor it returns is
// read end to end, so a view reaching past its storage shows up under ASan. Needs ATen.
#include <ATen/ATen.h>

#include <cstdint>

#include "fuzz_support.h"
#include "sumi/io/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  sumi::fuzz::MemFile file(data, size, "fuzz.ckpt");
  sumi::io::NamedTensors tensors;
  try {
    tensors = sumi::io::load_torch_checkpoint(file.path());
  } catch (const sumi::io::FormatError&) {
    return 0;
  }
  double sum = 0;
  for (const auto& [name, t] : tensors) {
    if (t.numel() > 0 && t.numel() < (1 << 20))  // contiguous() copies every element of the view
      sum += t.contiguous().to(at::kDouble).nan_to_num(0, 0, 0).sum().item<double>();
    sum += static_cast<double>(name.size());
  }
  sumi::fuzz::use(sum);
  return 0;
}
