#include "embedding_file.h"

#include <algorithm>
#include <filesystem>
#include <stdexcept>

#include "sumi/io/safetensors_torch.h"
#include "sumi/io/torch_checkpoint.h"

namespace sumi::sd {

namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string shape_text(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

std::string key_list(const io::NamedTensors& tensors) {
  std::string s;
  for (const auto& [k, t] : tensors) s += (s.empty() ? "" : ", ") + k;
  return s.empty() ? "none" : s;
}

const at::Tensor* find(const io::NamedTensors& tensors, const std::string& key) {
  for (const auto& [k, t] : tensors)
    if (k == key) return &t;
  return nullptr;
}

at::Tensor checked(const std::string& path, const std::string& key, const at::Tensor& t, int64_t width) {
  if (t.dim() != 2 || t.size(1) != width || t.size(0) < 1)
    throw std::runtime_error(path + ": '" + key + "' has shape " + shape_text(t) + "; expected [vectors, " +
                             std::to_string(width) + "] for this model's text encoder (an embedding made for another model?)");
  if (!at::isFloatingType(t.scalar_type()))
    throw std::runtime_error(path + ": '" + key + "' is not floating point");
  return t.to(at::kFloat).contiguous();
}

}  // namespace

EmbeddingFile read_embedding_file(const std::string& path, nn::ModelFamily family, int64_t width, int64_t width2) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw std::runtime_error("textual inversion embedding " + path + ": no such file");
  const std::string ext = lower(fs::path(path).extension().string());
  io::NamedTensors all;
  try {
    if (ext == ".safetensors") all = io::load_all(path);
    else if (ext == ".pt" || ext == ".bin" || ext == ".ckpt" || ext == ".pth") all = io::load_torch_checkpoint(path);
    else
      throw std::runtime_error("unknown embedding file type '" + ext + "'; expected .safetensors, .pt or .bin");
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    throw std::runtime_error(msg.find(path) != std::string::npos ? msg : path + ": " + msg);
  }
  // A1111's .pt: {"string_to_param": {"*": vectors}, "name", "step", ...}; the unpickler
  // flattens nested dicts to dotted names.
  io::NamedTensors tensors;
  for (const auto& [k, t] : all)
    if (k.rfind("string_to_param.", 0) == 0) tensors.emplace_back(k.substr(16), t);
  if (tensors.empty()) tensors = all;

  EmbeddingFile out;
  out.token = fs::path(path).stem().string();
  const at::Tensor* l = find(tensors, "clip_l");
  const at::Tensor* g = find(tensors, "clip_g");
  if (family == nn::ModelFamily::sdxl) {
    if (!l || !g)
      throw std::runtime_error(path + ": an SDXL embedding needs 'clip_l' and 'clip_g' vectors, found " + key_list(tensors) +
                               (find(tensors, "emb_params") ? " (an SD 1.x/2.x embedding; it does not fit SDXL)" : ""));
    out.rows = checked(path, "clip_l", *l, width);
    out.rows2 = checked(path, "clip_g", *g, width2);
    if (out.rows.size(0) != out.rows2.size(0))
      throw std::runtime_error(path + ": 'clip_l' has " + std::to_string(out.rows.size(0)) + " vectors but 'clip_g' " +
                               std::to_string(out.rows2.size(0)) + "; both encoders need the same count");
    return out;
  }
  const at::Tensor* e = find(tensors, "emb_params");
  if (!e && l && g)
    throw std::runtime_error(path + ": an SDXL embedding (clip_l / clip_g); it does not fit an SD 1.x/2.x model");
  if (!e && tensors.size() == 1) e = &tensors.front().second;
  if (!e)
    throw std::runtime_error(path + ": expected the vectors under 'emb_params' (kohya) or 'string_to_param' (A1111), found " +
                             key_list(all));
  out.rows = checked(path, e == find(tensors, "emb_params") ? "emb_params" : tensors.front().first, *e, width);
  return out;
}

void write_embedding_file(const std::string& path, nn::ModelFamily family, const at::Tensor& rows, const at::Tensor& rows2,
                          std::optional<at::ScalarType> dtype, bool overwrite) {
  if (lower(fs::path(path).extension().string()) != ".safetensors")
    throw std::runtime_error(path + ": embeddings are written as .safetensors only (kohya and A1111 read them); "
                             "give the file that extension");
  std::error_code ec;
  if (!overwrite && fs::exists(path, ec))
    throw std::runtime_error(path + " already exists; choose another name or allow overwriting");
  const at::ScalarType dt = dtype.value_or(at::kFloat);
  auto prep = [&](const at::Tensor& t) { return t.detach().to(at::kCPU).to(dt).contiguous(); };
  io::NamedTensors out;
  if (family == nn::ModelFamily::sdxl) {
    if (!rows2.defined()) throw std::logic_error("write_embedding_file: SDXL needs the second encoder's vectors");
    // kohya's SDXL order: clip_g (text encoder 2) and clip_l (text encoder 1).
    out.emplace_back("clip_g", prep(rows2));
    out.emplace_back("clip_l", prep(rows));
  } else {
    out.emplace_back("emb_params", prep(rows));
  }
  io::save_tensors(path, out);
}

}  // namespace sumi::sd
