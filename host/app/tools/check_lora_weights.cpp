// `sumi check_lora_weights FILE`: kohya's networks/check_lora_weights.py — for each lora_up /
// lora_down tensor (sorted), its shape, mean |w| and min |w| in float32, printed as kohya
// prints them (`KEY,(4-32),MEAN,MIN`, numbers as Python's repr), so an all-zero or tiny
// module stands out. -s / --show_all_keys then lists every tensor of the file as kohya does
// (its list repeats the LoRA tensors: kohya's filter compares names with (name, tensor) pairs).
#include "app/tools/tools.h"

#include "app/tools/kohya_files.h"
#include "app/tools/tool_args.h"

#include <ATen/ATen.h>

#include <iostream>

namespace sumi::app::tools {

int cmd_check_lora_weights(const std::vector<std::string>& argv) {
  ToolArgs args("check_lora_weights",
                "Prints mean and min |w| of every LoRA tensor (kohya networks/check_lora_weights.py).");
  args.positional("file", "the LoRA file (.safetensors, .ckpt, .pt)")
      .flag("show_all_keys", "also list every tensor of the file (-s)");
  std::vector<std::string> a = argv;
  for (auto& x : a)
    if (x == "-s") x = "--show_all_keys";
  if (!args.parse(a)) return 0;
  const std::string file = args.str("file");
  std::cout << "loading: " << file << std::endl;
  // Loaded as stored; each tensor goes to float32 for its numbers.
  StateDict sd = read_state_dict(file, "file", at::kFloat);
  std::vector<std::pair<std::string, at::Tensor>> values;
  for (const auto& [k, t] : sd.tensors)
    if (k.find("lora_up") != std::string::npos || k.find("lora_down") != std::string::npos) values.emplace_back(k, t);
  std::cout << "number of LoRA modules: " << values.size() << "\n";
  if (args.on("show_all_keys")) {
    for (const auto& [k, t] : sd.tensors) values.emplace_back(k, t);
    std::cout << "number of all modules: " << values.size() << "\n";
  }
  for (const auto& [k, t] : values) {
    const at::Tensor v = t.to(at::kFloat).abs();
    std::string shape = "(";
    for (int64_t i = 0; i < v.dim(); ++i) shape += (i ? "-" : "") + std::to_string(v.size(i));
    shape += v.dim() == 1 ? ",)" : ")";
    std::cout << k << "," << shape << "," << py_float(v.mean().item<double>()) << ","
              << py_float(v.numel() ? v.min().item<double>() : 0.0) << "\n";
  }
  return 0;
}

}  // namespace sumi::app::tools
