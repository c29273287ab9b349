#include "app/tools/kohya_files.h"

#include "core/error.h"
#include "sumi/io/torch_checkpoint.h"
#include "app/train/network_file.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <unistd.h>

namespace fs = std::filesystem;

namespace sumi::app::tools {

const at::Tensor* StateDict::find(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : &it->second;
}

namespace {
bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}
std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
}  // namespace

StateDict read_state_dict(const std::string& path, const std::string& what, at::ScalarType dtype) {
  if (!fs::exists(path)) throw host::UserError(what + " '" + path + "' does not exist");
  if (fs::is_directory(path)) throw host::UserError(what + " '" + path + "' is a folder; expected a .safetensors or .ckpt file");
  StateDict sd;
  sd.path = path;
  io::NamedTensors loaded;
  try {
    if (ends_with(lower(path), ".safetensors")) {
      auto file = io::SafetensorsFile::open(path);
      sd.metadata = file->metadata();
      for (const auto& info : file->tensors()) loaded.emplace_back(info.name, io::load_tensor(file, info));
    } else {
      loaded = io::load_torch_checkpoint(path);
    }
  } catch (const host::UserError&) {
    throw;
  } catch (const std::exception& e) {
    throw host::UserError(what + " '" + path + "' cannot be read: " + e.what());
  }
  for (auto& [k, t] : loaded) {
    at::Tensor v = at::isFloatingType(t.scalar_type()) ? t.to(dtype) : t;
    sd.tensors[k] = v;
  }
  return sd;
}

std::vector<LoraModule> lora_modules(const StateDict& sd) {
  std::vector<LoraModule> out;
  const std::string tail = ".lora_down.weight";
  for (const auto& [k, t] : sd.tensors) {
    if (!ends_with(k, tail)) continue;
    LoraModule m;
    m.name = k.substr(0, k.size() - tail.size());
    const at::Tensor* up = sd.find(m.name + ".lora_up.weight");
    if (!up)
      throw host::UserError("'" + sd.path + "': tensor '" + k + "' has no '" + m.name +
                            ".lora_up.weight'; the file is not a complete kohya LoRA");
    m.down = t;
    m.up = *up;
    if (m.down.dim() != m.up.dim() || (m.down.dim() != 2 && m.down.dim() != 4) || m.up.size(1) != m.down.size(0))
      throw host::UserError("'" + sd.path + "': module '" + m.name + "' has lora_down " + c10::str(m.down.sizes()) +
                            " and lora_up " + c10::str(m.up.sizes()) +
                            " (expected [r, in(, kh, kw)] and [out, r(, 1, 1)])");
    if (const at::Tensor* a = sd.find(m.name + ".alpha")) m.alpha = a->reshape({});
    out.push_back(std::move(m));
  }
  if (out.empty())
    throw host::UserError("'" + sd.path + "' has no '*.lora_down.weight' tensors: not a kohya LoRA file (" +
                          std::to_string(sd.tensors.size()) + " tensors)");
  return out;
}

std::optional<at::ScalarType> precision_type(const std::string& name) {
  if (name.empty()) return std::nullopt;
  if (name == "float" || name == "fp32" || name == "float32") return at::kFloat;
  if (name == "fp16" || name == "float16") return at::kHalf;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  throw host::UserError("precision '" + name + "' is not one of float, fp16, bf16");
}

void check_output(const std::string& out, const std::vector<std::string>& inputs, const std::string& flag) {
  if (out.empty()) throw host::UserError(flag + " is required: the file to write");
  if (!ends_with(lower(out), ".safetensors"))
    throw host::UserError(flag + " '" + out + "': sumi writes .safetensors files; name the output *.safetensors");
  std::error_code ec;
  for (const auto& in : inputs)
    if (fs::exists(out) && fs::equivalent(out, in, ec))
      throw host::UserError(flag + " '" + out + "' is one of the inputs; write to another file");
  const fs::path parent = fs::path(out).parent_path();
  if (!parent.empty() && !fs::is_directory(parent))
    throw host::UserError(flag + " '" + out + "': the folder '" + parent.string() + "' does not exist");
}

namespace {
// The safetensors library's dtype order (its Dtype enum); files list tensors by it, descending.
int dtype_rank(const std::string& d) {
  static const char* order[] = {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16",
                                "BF16", "I32", "U32", "F32", "F64", "I64", "U64"};
  for (int i = 0; i < static_cast<int>(sizeof order / sizeof *order); ++i)
    if (d == order[i]) return i;
  return -1;
}
io::NamedTensors library_order(std::vector<std::pair<std::string, at::Tensor>> tensors) {
  std::vector<std::pair<int, size_t>> keys;
  for (size_t i = 0; i < tensors.size(); ++i)
    keys.emplace_back(dtype_rank(io::dtype_from_scalar_type(tensors[i].second.scalar_type())), i);
  std::stable_sort(keys.begin(), keys.end(), [&](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first > b.first;
    return tensors[a.second].first < tensors[b.second].first;
  });
  io::NamedTensors out;
  out.reserve(tensors.size());
  for (const auto& k : keys) out.push_back(std::move(tensors[k.second]));
  return out;
}
}  // namespace

Hashes kohya_hashes(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const Metadata& metadata) {
  Metadata ss;
  for (const auto& [k, v] : metadata)
    if (k.rfind("ss_", 0) == 0) ss[k] = v;
  const auto ordered = library_order(tensors);
  const std::string probe = (fs::temp_directory_path() / ("sumi-hash-" + std::to_string(::getpid()) + ".safetensors")).string();
  io::save_tensors(probe, ordered, ss);
  SafetensorsHashes h;
  try {
    h = safetensors_hashes(probe);
  } catch (...) {
    fs::remove(probe);
    throw;
  }
  fs::remove(probe);
  return {h.model_hash, h.legacy_hash};
}

void write_kohya(const std::string& path, std::vector<std::pair<std::string, at::Tensor>> tensors, const Metadata& metadata) {
  io::save_tensors(path, library_order(std::move(tensors)), metadata);
}

std::string py_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string s(buf, r.ptr);
  std::string sign;
  if (s[0] == '-') {
    sign = "-";
    s.erase(0, 1);
  }
  const auto e = s.find('e');
  const int exp = std::stoi(s.substr(e + 1));
  std::string digits;
  for (char c : s.substr(0, e))
    if (c != '.') digits += c;
  std::string out;
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      const size_t int_len = static_cast<size_t>(exp) + 1;
      if (digits.size() <= int_len) out = digits + std::string(int_len - digits.size(), '0') + ".0";
      else out = digits.substr(0, int_len) + "." + digits.substr(int_len);
    } else {
      out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ex[16];
    std::snprintf(ex, sizeof ex, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += ex;
  }
  return sign + out;
}

std::string py_fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string py_percent(double v, int decimals) { return py_fixed(v * 100.0, decimals) + "%"; }

std::string file_stem(const std::string& path) { return fs::path(path).stem().string(); }

std::string merged_from_titles(const std::vector<std::string>& files) {
  std::string out;
  for (const auto& f : files) {
    std::string title;
    try {
      if (ends_with(lower(f), ".safetensors")) {
        auto file = io::SafetensorsFile::open(f);
        auto it = file->metadata().find("modelspec.title");
        if (it != file->metadata().end()) title = it->second;
      }
    } catch (const std::exception&) {
      // unreadable here means unreadable later, with a proper error; the name will do
    }
    if (title.empty()) title = file_stem(f);
    out += (out.empty() ? "" : ", ") + title;
  }
  return out;
}

}  // namespace sumi::app::tools
