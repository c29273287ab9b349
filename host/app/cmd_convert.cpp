// `sumi convert SRC DST`: a checkpoint from one form to another — original single file
// (.safetensors / .ckpt) <-> diffusers folder, .ckpt -> .safetensors, dtype change. The host only
// picks the model component (the one whose probe accepts SRC, or --family) and calls its convert
// slot (ABI 1.2): the formats are the model plugin's business.
#include "commands.h"

#include "app.h"
#include "core/component.h"
#include "core/error.h"
#include "core/tensor_handle.h"
#include "core/typed_plugins.h"
#include "core/plugin_manager.h"
#include "model_file.h"

#include <cstdio>
#include <iostream>
#include <optional>

namespace sumi::app {

namespace {
const char* kConvertUsage =
    "usage: sumi convert SRC DST [--dtype fp16|bf16|fp32] [--family NAME] [--overwrite] [--plugin-dir DIR]\n"
    "\n"
    "  SRC   a single-file checkpoint (.safetensors, .ckpt, .pt) or a diffusers folder\n"
    "  DST   a .safetensors file (original layout) or a folder to create (diffusers layout; a name\n"
    "        without a file extension: .ckpt / .pt are read, never written)\n"
    "  --dtype      convert floating-point tensors (default: keep each tensor's dtype)\n"
    "  --family     the model component to convert with (sd1, sd2, sdxl, ...); refuses a source of\n"
    "               another family (default: the component whose probe accepts SRC)\n"
    "  --overwrite  replace an existing DST (written beside it first, swapped in when complete)\n"
    "  --plugin-dir an extra plugin folder\n";

sumi_dtype parse_dtype(const std::string& s) {
  if (s == "fp32" || s == "float32" || s == "float") return sumi_dtype{SUMI_DTYPE_CODE_FLOAT, 32, 1};
  if (s == "fp16" || s == "float16") return sumi_dtype{SUMI_DTYPE_CODE_FLOAT, 16, 1};
  if (s == "bf16" || s == "bfloat16") return sumi_dtype{SUMI_DTYPE_CODE_BFLOAT, 16, 1};
  throw host::UserError("sumi convert: --dtype '" + s + "' is not one of fp16, bf16, fp32");
}
}  // namespace

int cmd_convert(const std::vector<std::string>& args) {
  std::vector<std::string> pos;
  std::optional<sumi_dtype> dtype;
  std::string family;
  bool overwrite = false;
  CommonOptions common;
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
    if (a == "--dtype") dtype = parse_dtype(value());
    else if (a == "--family") family = value();
    else if (a == "--overwrite") overwrite = true;
    else if (a == "--plugin-dir") common.plugin_dirs.push_back(value());
    else if (a.rfind("--", 0) == 0) throw host::UserError("sumi convert: unknown option '" + a + "'\n\n" + kConvertUsage);
    else pos.push_back(a);
  }
  if (pos.size() != 2) throw host::UserError(std::string("sumi convert: expected SRC and DST\n\n") + kConvertUsage);
  auto pm = make_plugin_manager(common);
  if (family.empty()) family = find_model_component(pm, pos[0]);
  host::Registry registry;
  const auto ref = pm.find(SUMI_KIND_MODEL, family);
  host::Component model(ref, "model", registry, host::make_config(*ref.component, {}));
  host::ModelPlugin(model).convert(pos[0], pos[1],
                                   dtype ? std::optional<at::ScalarType>(host::to_scalar_type(*dtype)) : std::nullopt, overwrite);
  std::printf("wrote %s\n", pos[1].c_str());
  return 0;
}

}  // namespace sumi::app
