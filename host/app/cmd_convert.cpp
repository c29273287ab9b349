// `sumi convert SRC DST`: a Stable Diffusion checkpoint from one form to another — original
// single file (.safetensors / .ckpt) <-> diffusers folder, .ckpt -> .safetensors, dtype change.
// The work is sumi::sd::convert_model (plugins/sd/model_files.h), shared with the model plugin.
#include "commands.h"

#include "core/error.h"
#include "model_files.h"

#include <cstdio>
#include <iostream>

namespace sumi::app {

namespace {
const char* kConvertUsage =
    "usage: sumi convert SRC DST [--dtype fp16|bf16|fp32] [--family sd1|sd2|sdxl] [--overwrite]\n"
    "\n"
    "  SRC   a single-file checkpoint (.safetensors, .ckpt, .pt) or a diffusers folder\n"
    "  DST   a .safetensors file (original layout) or a folder to create (diffusers layout)\n"
    "  --dtype      convert floating-point tensors (default: keep each tensor's dtype)\n"
    "  --family     refuse a source that is not of this family\n"
    "  --overwrite  replace an existing DST (written beside it first, swapped in when complete)\n";

at::ScalarType parse_dtype(const std::string& s) {
  if (s == "fp32" || s == "float32") return at::kFloat;
  if (s == "fp16" || s == "float16") return at::kHalf;
  if (s == "bf16" || s == "bfloat16") return at::kBFloat16;
  throw host::UserError("sumi convert: --dtype '" + s + "' is not one of fp16, bf16, fp32");
}
}  // namespace

int cmd_convert(const std::vector<std::string>& args) {
  std::vector<std::string> pos;
  sd::ConvertOptions o;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw host::UserError("sumi convert: " + a + " needs a value");
      return args[++i];
    };
    if (a == "--help" || a == "-h") {
      std::cout << kConvertUsage;
      return 0;
    }
    if (a == "--dtype") o.dtype = parse_dtype(value());
    else if (a == "--family") {
      try {
        o.family = sd::family_from_string(value());
      } catch (const std::exception& e) {
        throw host::UserError(std::string("sumi convert: --family: ") + e.what());
      }
    } else if (a == "--overwrite") o.overwrite = true;
    else if (a.rfind("--", 0) == 0) throw host::UserError("sumi convert: unknown option '" + a + "'\n\n" + kConvertUsage);
    else pos.push_back(a);
  }
  if (pos.size() != 2) throw host::UserError(std::string("sumi convert: expected SRC and DST\n\n") + kConvertUsage);
  sd::convert_model(pos[0], pos[1], o);
  std::printf("wrote %s\n", pos[1].c_str());
  return 0;
}

}  // namespace sumi::app
