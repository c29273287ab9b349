// Writes tensors as a torch.save zip checkpoint ({"state_dict": {name: tensor}}), pickled opcode by
// opcode, so the tests can make .ckpt files (good and hostile) without Python.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

namespace sumi::test {

// `extra_global`, when set ("module.name"), is called inside the state dict, as a hostile pickle would.
void write_ckpt(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                const std::string& extra_global = "");

}  // namespace sumi::test
