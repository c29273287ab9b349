#include "network_file.h"

#include "core/error.h"
#include "sumi/io/safetensors_torch.h"

#include <openssl/evp.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <unistd.h>
#include <vector>

namespace sumi::app {

namespace {

std::string sha256_hex(const unsigned char* data, size_t n) {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  EVP_DigestUpdate(ctx.get(), data, n);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  std::string hex;
  char b[3];
  for (unsigned int i = 0; i < len; ++i) {
    std::snprintf(b, sizeof b, "%02x", md[i]);
    hex += b;
  }
  return hex;
}

at::ScalarType save_type(const std::string& dtype) {
  if (dtype.empty() || dtype == "float" || dtype == "fp32") return at::kFloat;
  if (dtype == "fp16") return at::kHalf;
  if (dtype == "bf16") return at::kBFloat16;
  throw host::UserError("save_precision: expected float, fp16 or bf16, got '" + dtype + "'");
}

}  // namespace

SafetensorsHashes safetensors_hashes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.size() < 8) throw host::UserError(path + ": too short to be a safetensors file");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[static_cast<size_t>(i)];
  SafetensorsHashes h;
  const size_t off = static_cast<size_t>(8 + n);
  h.model_hash = sha256_hex(bytes.data() + off, bytes.size() - off);
  const size_t lo = std::min<size_t>(0x100000, bytes.size());
  const size_t hi = std::min<size_t>(0x110000, bytes.size());
  h.legacy_hash = sha256_hex(bytes.data() + lo, hi - lo).substr(0, 8);
  return h;
}

void save_network(const std::string& path, const host::Registry& registry, const std::string& component,
                  const std::string& dtype, std::map<std::string, std::string> metadata) {
  const auto st = save_type(dtype);
  io::NamedTensors tensors;
  for (const auto& e : registry.entries()) {
    if (e.component != component) continue;
    at::Tensor t = e.tensor.detach().to(at::kCPU);
    if (at::isFloatingType(t.scalar_type())) t = t.to(st);
    tensors.emplace_back(e.name, t.contiguous());
  }
  if (tensors.empty()) throw host::UserError("nothing to save: the network '" + component + "' has no parameters");
  // kohya hashes the file as written with only its ss_* metadata, so the hashes stay the same
  // whatever other metadata a user adds later.
  std::map<std::string, std::string> ss_only;
  for (const auto& [k, v] : metadata)
    if (k.rfind("ss_", 0) == 0) ss_only[k] = v;
  const std::string probe = path + ".hash-" + std::to_string(::getpid());
  io::save_tensors(probe, tensors, ss_only);
  const auto hashes = safetensors_hashes(probe);
  std::filesystem::remove(probe);
  metadata["sshs_model_hash"] = hashes.model_hash;
  metadata["sshs_legacy_hash"] = hashes.legacy_hash;
  io::save_tensors(path, tensors, metadata);
}

}  // namespace sumi::app
