// pickle.h — a restricted, non-executing reader for the pickles inside PyTorch checkpoints.
//
// torch.save pickles a state dict as calls to a handful of torch functions plus plain
// containers. This reader interprets the opcode stream as data only: nothing is imported or
// called. Globals are checked against a fixed allowlist as soon as they are named:
//  - tensor rebuilders (torch._utils._rebuild_tensor_v2/_v3, _rebuild_parameter[_with_state],
//    torch._tensor._rebuild_from_type_v2) become TensorRef descriptions;
//  - collections.OrderedDict becomes a Dict; _codecs.encode (how protocol 2 stores bytes)
//    becomes Bytes; torch.*Storage classes and torch dtypes become their dtype strings;
//  - a few harmless objects SD checkpoints carry next to the state dict (numpy scalars and
//    dtypes used for `global_step`, pytorch_lightning's ModelCheckpoint callback key, sets,
//    torch.Size/device) become inert Opaque values that are never interpreted and are
//    dropped from the result.
// Any other global is refused with a FormatError naming it. No torch dependency: the ATen
// side lives in torch_checkpoint.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace sumi::io::pickle {

// A storage named by a checkpoint's persistent id ('storage', type, key, location, numel),
// with a sixth element (view metadata) in legacy files.
struct StorageRef {
  std::string key;       // zip format: the member `<archive>/data/<key>`; legacy: the key list
  std::string dtype;     // safetensors dtype spelling; U8 for torch.UntypedStorage
  std::string location;  // "cpu", "cuda:0", ... (informational; everything loads to CPU)
  std::int64_t numel = 0;
  // Legacy (pre-zip) checkpoints may refer to a slice of a storage: elements
  // [view_offset, view_offset + view_numel). view_numel < 0 means the whole storage.
  std::int64_t view_offset = 0;
  std::int64_t view_numel = -1;
};

// A tensor as torch._utils._rebuild_tensor_v2/_v3 describe it. `offset` counts elements of
// `dtype`, like Tensor.set_.
struct TensorRef {
  std::shared_ptr<const StorageRef> storage;
  std::string dtype;
  std::int64_t offset = 0;
  std::vector<std::int64_t> size;
  std::vector<std::int64_t> stride;
};

struct Value;
using ValuePtr = std::shared_ptr<Value>;

struct Value {
  enum class Kind { None, Bool, Int, Float, String, Bytes, Tuple, List, Dict, Tensor, Storage,
                    Global, Opaque };
  Kind kind = Kind::None;
  bool b = false;
  std::int64_t i = 0;
  double f = 0;
  std::string s;  // String/Bytes contents; "module.name" for Global; a description for Opaque
  std::vector<ValuePtr> items;                           // Tuple, List
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;    // Dict, in insertion order
  std::shared_ptr<const TensorRef> tensor;
  std::shared_ptr<const StorageRef> storage;
};

// The result of unpickling. `arena` holds every value the pickle created; the destructor
// empties all containers first, so memo-built reference cycles cannot leak and hostile deep
// nesting is released without recursion. Values under `root` are valid while this lives.
struct Unpickled {
  ValuePtr root;
  std::vector<ValuePtr> arena;
  std::vector<std::shared_ptr<const StorageRef>> storages;  // every persistent id, in order

  Unpickled() = default;
  Unpickled(Unpickled&&) = default;
  Unpickled& operator=(Unpickled&&) = delete;
  Unpickled(const Unpickled&) = delete;
  Unpickled& operator=(const Unpickled&) = delete;
  ~Unpickled();
};

// Interprets one pickle (protocols 2-5) from the start of `data`; `consumed`, when given,
// receives the number of bytes up to and including its STOP opcode (several pickles may
// follow each other, as in legacy torch files). `source` names the file in error messages.
Unpickled unpickle(const std::uint8_t* data, std::size_t size, const std::string& source,
                   std::size_t* consumed = nullptr);

// The checkpoint's tensors, flattened: uses the top-level "state_dict" when there is one;
// nested dicts with string keys become dotted names ("model.w"); entries that are not
// tensors (step counters, hyper-parameters, inert values) are dropped. Order is the pickle's.
std::vector<std::pair<std::string, std::shared_ptr<const TensorRef>>> state_dict_tensors(
    const ValuePtr& root, const std::string& source);

}  // namespace sumi::io::pickle
