#include "model_file.h"

#include "core/error.h"
#include "io/safetensors.h"

#include <openssl/evp.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

namespace fs = std::filesystem;

namespace sumi::app {

std::string detect_family(const std::string& path) {
  if (fs::is_directory(path)) {
    if (!fs::exists(fs::path(path) / "model_index.json"))
      throw host::UserError("'" + path + "' is a folder without model_index.json: not a diffusers model folder");
    if (fs::exists(fs::path(path) / "text_encoder_2")) return "sdxl";
    std::ifstream cfg(fs::path(path) / "text_encoder" / "config.json");
    std::string s((std::istreambuf_iterator<char>(cfg)), std::istreambuf_iterator<char>());
    // OpenCLIP (SD2) uses gelu; OpenAI CLIP (SD1) quick_gelu.
    return s.find("\"gelu\"") != std::string::npos ? "sd2" : "sd1";
  }
  if (fs::path(path).extension() != ".safetensors") return "";
  auto file = io::SafetensorsFile::open(path);
  bool sd1 = false, sd2 = false, sdxl = false;
  for (const auto& t : file->tensors()) {
    if (t.name.rfind("conditioner.embedders.", 0) == 0) sdxl = true;
    else if (t.name.rfind("cond_stage_model.model.", 0) == 0) sd2 = true;
    else if (t.name.rfind("cond_stage_model.transformer.", 0) == 0) sd1 = true;
  }
  if (sdxl) return "sdxl";
  if (sd2) return "sd2";
  if (sd1) return "sd1";
  return "";
}

std::string a1111_hash(const std::string& path) {
  if (fs::is_directory(path)) return "";
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return "";
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<unsigned char> buf(1 << 20);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) EVP_DigestUpdate(ctx.get(), buf.data(), n);
  std::fclose(f);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  for (unsigned int i = 0; i < len; ++i) std::snprintf(hex + 2 * i, 3, "%02x", md[i]);
  return std::string(hex).substr(0, 10);
}

}  // namespace sumi::app
