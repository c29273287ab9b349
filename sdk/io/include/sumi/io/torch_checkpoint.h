// torch_checkpoint.h — loading PyTorch checkpoints (.ckpt/.pt/.pth/.bin) without Python.
//
// Reads torch.save's zip format (`<archive>/data.pkl` plus raw storages under
// `<archive>/data/<key>`) through the restricted unpickler in pickle.h, so a checkpoint can
// only ever yield tensors: a pickle that names any other Python global is refused. Tensors
// keep their dtype, shape, strides and storage offset, and tensors that shared a storage
// when saved share one here too. The pre-1.6 (non-zip) torch.save format is read as well.
#pragma once

#include <string>

#include "sumi/io/safetensors_torch.h"  // NamedTensors

namespace sumi::io {

// The checkpoint's tensors on the CPU, flattened as pickle::state_dict_tensors describes
// (the "state_dict" entry when present; nested dicts become dotted names; non-tensor entries
// are dropped), in the pickle's order. Throws FormatError for malformed or refused files.
NamedTensors load_torch_checkpoint(const std::string& path);

}  // namespace sumi::io
