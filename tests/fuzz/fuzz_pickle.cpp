// Fuzz harness: the restricted unpickler (sdk/io/src/pickle.cpp) behind torch .ckpt loading.
// The input is a byte stream of pickles read back to back, as the legacy torch.save format
// stores them; each one's root is then flattened into a state dict as a checkpoint loader
// would. Anything but FormatError escaping is a finding.
#include <cstdint>
#include <cstdlib>

#include "fuzz_support.h"
#include "sumi/io/pickle.h"
#include "sumi/io/safetensors.h"  // FormatError

namespace pk = sumi::io::pickle;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::size_t pos = 0;
  std::uint64_t sum = 0;
  for (int round = 0; round < 8 && pos < size; ++round) {
    std::size_t used = 0;
    try {
      pk::Unpickled u = pk::unpickle(data + pos, size - pos, "fuzz.ckpt", &used);
      if (used == 0 || used > size - pos) std::abort();  // a pickle ends at its STOP opcode
      pos += used;
      for (const auto& s : u.storages) sum += s->key.size() + static_cast<std::uint64_t>(s->numel);
      for (const auto& [name, t] : pk::state_dict_tensors(u.root, "fuzz.ckpt")) {
        if (!t || !t->storage || t->size.size() != t->stride.size()) std::abort();
        sum += name.size() + static_cast<std::uint64_t>(t->offset) + t->size.size();
      }
    } catch (const sumi::io::FormatError&) {
      break;
    }
  }
  sumi::fuzz::use(sum);
  return 0;
}
