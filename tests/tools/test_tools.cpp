// kohya's tool scripts as sumi commands, checked against what sd-scripts v0.7.0 wrote for the
// same command lines (tests/data/fixtures/tools, copied from the shared kohya tool goldens;
// their README gives the tolerances used here). Each command runs in-process with its stdout
// captured, writing into a scratch folder.
#include <doctest/doctest.h>

#include "../common/test_data.h"
#include "tool_run.h"

#include "app/tools/kohya_files.h"
#include "app/tools/tools.h"
#include "core/error.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <cstring>
#include <map>
#include <sstream>

namespace fs = std::filesystem;
using sumi::test::fixture;

namespace {

std::string tools(const std::string& name) { return fixture("tools/" + name); }

std::string scratch(const std::string& name) { return sumi::test::tools_scratch(name); }

// Runs `sumi <tool> args...` in-process; returns its stdout.
std::string run(const std::string& tool, const std::vector<std::string>& args) { return sumi::test::run_tool(tool, args); }

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> v;
  std::istringstream s(text);
  for (std::string l; std::getline(s, l);) v.push_back(l);
  return v;
}

std::map<std::string, at::Tensor> load(const std::string& path) {
  std::map<std::string, at::Tensor> m;
  for (auto& [k, t] : sumi::io::load_all(path)) m[k] = t;
  return m;
}

std::map<std::string, std::string> metadata(const std::string& path) {
  return sumi::io::SafetensorsFile::open(path)->metadata();
}

// Metadata equal to the golden's, except the date (and keys the caller names).
// kohya's metadata exactly; "sumi." keys are sumi's own additions (a checkpoint's part configs).
void check_metadata(const std::string& ours, const std::map<std::string, std::string>& golden) {
  auto mine = metadata(ours);
  for (auto it = mine.begin(); it != mine.end();) it = it->first.rfind("sumi.", 0) == 0 ? mine.erase(it) : std::next(it);
  for (const auto& [k, v] : golden) {
    if (k == "modelspec.date") continue;
    INFO("metadata key " << k);
    REQUIRE(mine.count(k) == 1);
    CHECK(mine[k] == v);
  }
  for (const auto& [k, v] : mine) {
    INFO("extra metadata key " << k);
    CHECK(golden.count(k) == 1);
  }
}

double rel(const at::Tensor& a, const at::Tensor& b) {
  const double nb = b.to(at::kDouble).norm().item<double>();
  const double d = (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>();
  return nb == 0 ? d : d / nb;
}

at::Tensor product(const at::Tensor& down, const at::Tensor& up) {
  return at::matmul(up.to(at::kFloat).reshape({up.size(0), -1}), down.to(at::kFloat).reshape({down.size(0), -1}));
}

std::vector<std::string> modules_of(const std::map<std::string, at::Tensor>& sd) {
  std::vector<std::string> v;
  const std::string tail = ".lora_down.weight";
  for (const auto& [k, t] : sd)
    if (k.size() > tail.size() && k.compare(k.size() - tail.size(), tail.size(), tail) == 0)
      v.push_back(k.substr(0, k.size() - tail.size()));
  return v;
}

// Same keys, shapes, dtypes, alphas; every module's dW = alpha/r * up @ down within
// `tol(module)` relative of the golden's.
template <class Tol>
void check_lora(const std::string& ours, const std::string& golden, Tol tol) {
  auto a = load(ours), b = load(golden);
  REQUIRE(a.size() == b.size());
  for (const auto& [k, t] : b) {
    INFO("tensor " << k);
    REQUIRE(a.count(k) == 1);
    CHECK(std::string(c10::toString(a[k].scalar_type())) == c10::toString(t.scalar_type()));
    CHECK(a[k].sizes().vec() == t.sizes().vec());
  }
  for (const auto& m : modules_of(b)) {
    INFO("module " << m);
    const double alpha_a = a[m + ".alpha"].item<double>(), alpha_b = b[m + ".alpha"].item<double>();
    CHECK(alpha_a == alpha_b);
    const int64_t r = b[m + ".lora_down.weight"].size(0);
    const at::Tensor pa = product(a[m + ".lora_down.weight"], a[m + ".lora_up.weight"]) * (alpha_a / r);
    const at::Tensor pb = product(b[m + ".lora_down.weight"], b[m + ".lora_up.weight"]) * (alpha_b / r);
    CHECK(rel(pa, pb) <= tol(m, a));
  }
}

// The README's resize tolerance: 1e-5 + 1e-5 / (gap - 1), gap = S_k / S_k+1 of the module's
// input product (no gap term where nothing is dropped).
double resize_tol(const std::map<std::string, at::Tensor>& input, const std::string& m, int64_t k) {
  const at::Tensor S = at::linalg_svdvals(product(input.at(m + ".lora_down.weight"), input.at(m + ".lora_up.weight")));
  if (k >= S.size(0) || S[k].item<double>() <= 1e-6 * S[0].item<double>()) return 1e-5;
  const double gap = S[k - 1].item<double>() / S[k].item<double>();
  return 1e-5 + 1e-5 / (gap - 1);
}

// Report lines equal, field by field: a percentage's last digit may differ where the value sits
// on a rounding boundary, and `max(S) ratio` is noise where the last kept singular value is
// numerically zero (kohya's v0.7.0 keeps one beyond a rank-2 conv's two: ratios of ~1e6..1e7).
void check_report(const std::string& ours, const std::string& golden_file, const std::string& golden_save_to,
                  const std::string& our_save_to) {
  auto a = lines(ours), b = lines(read_text(golden_file));
  REQUIRE(a.size() == b.size());
  auto fields = [](const std::string& l) {
    std::vector<std::string> f;
    size_t start = 0;
    for (size_t p; (p = l.find(", ", start)) != std::string::npos; start = p + 2) f.push_back(l.substr(start, p - start));
    f.push_back(l.substr(start));
    return f;
  };
  for (size_t i = 0; i < b.size(); ++i) {
    std::string want = b[i];
    if (want == "saving model to: " + golden_save_to) want = "saving model to: " + our_save_to;
    if (a[i] == want) continue;
    INFO("report line " << i << "\n ours:   " << a[i] << "\n kohya:  " << want);
    auto fa = fields(a[i]), fb = fields(want);
    REQUIRE(fa.size() == fb.size());
    for (size_t j = 0; j < fb.size(); ++j) {
      if (fa[j] == fb[j]) continue;
      const std::string ratio = "max(S) ratio: ";
      if (fb[j].rfind(ratio, 0) == 0 && fa[j].rfind(ratio, 0) == 0) {
        CHECK(std::stod(fa[j].substr(ratio.size())) > 1e4);
        CHECK(std::stod(fb[j].substr(ratio.size())) > 1e4);
        continue;
      }
      REQUIRE(fa[j].size() == fb[j].size());
      int differing = 0;
      for (size_t c = 0; c < fb[j].size(); ++c)
        if (fa[j][c] != fb[j][c]) {
          CHECK(std::isdigit(static_cast<unsigned char>(fb[j][c])));
          ++differing;
        }
      CHECK(differing == 1);
    }
  }
}

std::string sha256_16(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(c.data_ptr(), static_cast<size_t>(c.nbytes()), md, &len, EVP_sha256(), nullptr);
  char hex[17];
  for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", md[i]);
  return hex;
}

std::string sha256_hex(const unsigned char* p, size_t n) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(p, n, md, &len, EVP_sha256(), nullptr);
  std::string hex;
  char b[3];
  for (unsigned int i = 0; i < len; ++i) {
    std::snprintf(b, sizeof b, "%02x", md[i]);
    hex += b;
  }
  return hex;
}

// kohya's sshs_* of a file whose layout is the safetensors library's: sha256 of its data
// section; the legacy hash is recomputed for files under 1 MiB only (that of nothing), larger
// ones hash a serialisation with other metadata than the file's.
std::pair<std::string, std::string> own_hashes(const std::string& path) {
  const std::string bytes = read_text(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  return {sha256_hex(p + 8 + n, bytes.size() - 8 - n), bytes.size() < 0x100000 ? "e3b0c442" : metadata(path)["sshs_legacy_hash"]};
}

}  // namespace

TEST_CASE("show_metadata prints the header and kohya's metadata dump") {
  const std::string file = tools("tiny-sd1.lora2.safetensors");
  const std::string text = run("show_metadata", {"--model", file});
  CHECK(text.find("tensors: 885") != std::string::npos);
  CHECK(text.find("lora_unet_up_blocks_3_resnets_2_conv2.lora_down.weight") != std::string::npos);
  // kohya: json.dumps(metadata, indent=4, sort_keys=True)
  const std::string kohya = run("show_metadata", {file, "--metadata_only"});
  CHECK(kohya.rfind("{\n    \"ref_note\": ", 0) == 0);
  CHECK(kohya.find("\n    \"ss_network_args\": \"{\\\"conv_dim\\\": \\\"2\\\", \\\"conv_alpha\\\": \\\"1.0\\\"}\",\n") !=
        std::string::npos);
  auto doc = nlohmann::json::parse(run("show_metadata", {"--model", file, "--json"}));
  CHECK(doc["tensors"].size() == 885);
  CHECK(doc["__metadata__"]["ss_base_model_version"] == "sd_v1");
  CHECK(doc["tensors"]["lora_unet_up_blocks_3_resnets_2_conv2.alpha"]["dtype"] == "F16");
  CHECK_THROWS_AS(run("show_metadata", {"--model", tools("missing.safetensors")}), sumi::host::UserError);
  CHECK_THROWS_WITH_AS(run("show_metadata", {"--modle", file}), doctest::Contains("did you mean '--model'"),
                       sumi::host::UserError);
}

TEST_CASE("resize_lora --new_rank 2 matches kohya's file, report and metadata") {
  at::set_num_threads(1);
  const std::string in = fixture("tiny-sd1.lora.safetensors");
  const std::string out = scratch("tiny-sd1.lora.resize-r2.safetensors");
  const std::string text = run("resize_lora", {"--model", in, "--save_to", out, "--new_rank", "2", "--verbose"});
  check_report(text, tools("tiny-sd1.lora.resize-r2.txt"), "tiny-sd1.lora.resize-r2.safetensors", out);
  const auto input = load(in);
  check_lora(out, tools("tiny-sd1.lora.resize-r2.safetensors"),
             [&](const std::string& m, auto&) { return resize_tol(input, m, 2); });
  // The hashes are of our factors, which equal kohya's to LAPACK rounding, not bitwise.
  auto meta = metadata(tools("tiny-sd1.lora.resize-r2.safetensors"));
  meta["sshs_model_hash"] = own_hashes(out).first;
  meta["sshs_legacy_hash"] = own_hashes(out).second;
  check_metadata(out, meta);
}

TEST_CASE("resize_lora dynamic methods pick kohya's ranks and alphas") {
  at::set_num_threads(1);
  const std::string in = tools("tiny-sd1.lora2.safetensors");
  const auto input = load(in);
  const auto golden_meta = metadata(tools("tiny-sd1.lora2.resize-sv_ratio2.safetensors"));
  struct Case {
    const char* method;
    const char* param;
    const char* name;
    const char* hash;
    const char* legacy;
  } cases[] = {
      {"sv_ratio", "2", "sv_ratio2", "118500c1797319d5dd85cae4bba3ab6634a1e5b0a4c3a33d46c6de8fbfda84bf", "e3b0c442"},
      {"sv_fro", "0.9", "sv_fro0.9", "118500c1797319d5dd85cae4bba3ab6634a1e5b0a4c3a33d46c6de8fbfda84bf", "e3b0c442"},
      {"sv_cumulative", "0.9", "sv_cumulative0.9", "55f1e29726e1c006d21eb4ca24e71b07370cedb05b6b02cc1ea463a241389f02",
       "2669b0b6"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.method);
    const std::string golden_name = std::string("tiny-sd1.lora2.resize-") + c.name + ".safetensors";
    const std::string out = scratch(golden_name);
    const std::string text = run("resize_lora", {"--model", in, "--save_to", out, "--new_rank", "4", "--dynamic_method",
                                                 c.method, "--dynamic_param", c.param, "--verbose"});
    check_report(text, tools(std::string("tiny-sd1.lora2.resize-") + c.name + ".txt"), golden_name, out);
    auto meta = golden_meta;
    meta["ss_training_comment"] = std::string("Dynamic resize with ") + c.method + ": " +
                                  (std::string(c.param) == "2" ? "2.0" : c.param) + " from 4; ";
    (void)c.hash;
    (void)c.legacy;
    meta["sshs_model_hash"] = own_hashes(out).first;
    meta["sshs_legacy_hash"] = own_hashes(out).second;
    check_metadata(out, meta);
    if (std::string(c.method) == "sv_ratio")
      check_lora(out, tools(golden_name), [&](const std::string& m, const std::map<std::string, at::Tensor>& ours) {
        return resize_tol(input, m, ours.at(m + ".lora_down.weight").size(0));
      });
  }
}

TEST_CASE("resize_lora refuses bad flags by name") {
  const std::string in = tools("tiny-sd1.lora2.safetensors");
  CHECK_THROWS_WITH_AS(run("resize_lora", {"--model", in, "--save_to", scratch("x.safetensors"), "--dynamic_method", "sv_fro"}),
                       doctest::Contains("needs --dynamic_param"), sumi::host::UserError);
  CHECK_THROWS_WITH_AS(run("resize_lora", {"--model", in, "--save_to", in}), doctest::Contains("is one of the inputs"),
                       sumi::host::UserError);
  CHECK_THROWS_WITH_AS(run("resize_lora", {"--model", in, "--save_to", scratch("x.safetensors"), "--dynamic_method", "svd"}),
                       doctest::Contains("not one of sv_ratio, sv_fro, sv_cumulative"), sumi::host::UserError);
  CHECK_THROWS_WITH_AS(run("resize_lora", {"--model", fixture("tiny-sd1.safetensors"), "--save_to", scratch("x.safetensors")}),
                       doctest::Contains("not a kohya LoRA"), sumi::host::UserError);
}

TEST_CASE("check_lora_weights prints kohya's lines") {
  for (const char* name : {"tiny-sd1.lora", "tiny-sd1.lora2"}) {
    CAPTURE(name);
    const std::string file = std::string(name) == "tiny-sd1.lora" ? fixture("tiny-sd1.lora.safetensors")
                                                                  : tools("tiny-sd1.lora2.safetensors");
    auto ours = lines(run("check_lora_weights", {file}));
    auto golden = lines(read_text(tools(std::string(name) + ".check.txt")));
    REQUIRE(ours.size() == golden.size());
    CHECK(ours[0] == "loading: " + file);
    size_t exact = 0;
    for (size_t i = 1; i < golden.size(); ++i) {
      if (ours[i] == golden[i]) {
        ++exact;
        continue;
      }
      // A float32 mean may round differently with another summation order: compare the numbers.
      auto split = [](const std::string& l) {
        std::vector<std::string> f;
        std::istringstream s(l);
        for (std::string x; std::getline(s, x, ',');) f.push_back(x);
        return f;
      };
      auto a = split(ours[i]), b = split(golden[i]);
      INFO(ours[i] << "\n" << golden[i]);
      REQUIRE(a.size() == 4);
      REQUIRE(b.size() == 4);
      CHECK(a[0] == b[0]);
      CHECK(a[1] == b[1]);
      CHECK(std::stod(a[2]) == doctest::Approx(std::stod(b[2])).epsilon(1e-6));
      CHECK(a[3] == b[3]);
    }
    MESSAGE(std::string(name) << ": " << exact << " of " << golden.size() - 1 << " lines identical");
  }
}

TEST_CASE("merge_lora merges LoRAs into one LoRA as kohya does (plain and --concat)") {
  for (const char* mode : {"plain", "concat"}) {
    CAPTURE(mode);
    const std::string golden = tools(std::string("tiny-sd1.merge_lora-") + mode + ".safetensors");
    const std::string out = scratch(std::string("tiny-sd1.merge_lora-") + mode + ".safetensors");
    std::vector<std::string> args{"--models", fixture("tiny-sd1.lora.safetensors"), tools("tiny-sd1.lora2.safetensors"),
                                  "--ratios", "0.7", "0.5", "--save_to", out, "--plugin-dir", SUMI_PLUGIN_DIR};
    if (std::string(mode) == "concat") args.push_back("--concat");
    run("merge_lora", args);
    auto a = load(out), b = load(golden);
    REQUIRE(a.size() == b.size());
    for (const auto& [k, t] : b) {
      INFO("tensor " << k);
      REQUIRE(a.count(k) == 1);
      CHECK(std::string(c10::toString(a[k].scalar_type())) == c10::toString(t.scalar_type()));
      REQUIRE(a[k].sizes().vec() == t.sizes().vec());
      CHECK(at::equal(a[k], t));  // the same float32 operations: bitwise
    }
    check_metadata(out, metadata(golden));
  }
}

// kohya's split of W at rank k plus its 0.99-quantile clamp, with each singular pair's sign
// chosen so that U[:, j] points along ref_up[:, j] (the README's way to compare clamped SVD
// factors across LAPACKs that pick other signs). Returns up @ down.
at::Tensor clamped_product(const at::Tensor& W, int64_t k, const at::Tensor& ref_up) {
  auto [U, S, Vh] = at::linalg_svd(W, false);
  at::Tensor u = U.narrow(1, 0, k).clone(), vh = Vh.narrow(0, 0, k).clone();
  const at::Tensor ref = ref_up.reshape({ref_up.size(0), -1});
  for (int64_t j = 0; j < k; ++j)
    if ((u.select(1, j) * ref.select(1, j)).sum().item<double>() < 0) {
      u.select(1, j).mul_(-1);
      vh.select(0, j).mul_(-1);
    }
  at::Tensor up = u.matmul(at::diag(S.narrow(0, 0, k))), down = vh;
  const at::Tensor q = at::quantile(at::cat({up.flatten(), down.flatten()}), 0.99);
  return at::clamp(up, -q, q).matmul(at::clamp(down, -q, q));
}

double gap_tol(const at::Tensor& W, int64_t k) {
  const at::Tensor S = at::linalg_svdvals(W);
  if (k >= S.size(0) || S[k].item<double>() <= 1e-6 * S[0].item<double>()) return 1e-4;
  return 1e-4 + 1e-5 / (S[k - 1].item<double>() / S[k].item<double>() - 1);
}

TEST_CASE("svd_merge_lora matches kohya within the README's tolerance") {
  at::set_num_threads(1);
  const std::string golden = tools("tiny-sd1.svd_merge.safetensors");
  const std::string out = scratch("tiny-sd1.svd_merge.safetensors");
  const std::string in1 = fixture("tiny-sd1.lora.safetensors"), in2 = tools("tiny-sd1.lora2.safetensors");
  run("svd_merge_lora", {"--models", in1, in2, "--ratios", "0.7", "0.5", "--new_rank", "4", "--new_conv_rank", "2",
                         "--save_to", out, "--plugin-dir", SUMI_PLUGIN_DIR});
  // The hash is of our factors (and kohya's quirk: int64 alphas); the rest is kohya's.
  auto meta = metadata(golden);
  meta["sshs_model_hash"] = metadata(out)["sshs_model_hash"];
  CHECK(meta["sshs_model_hash"].size() == 64);
  check_metadata(out, meta);

  auto a = load(out), b = load(golden);
  const auto l1 = load(in1), l2 = load(in2);
  REQUIRE(a.size() == b.size());
  size_t same = 0, flipped = 0;
  for (const auto& m : modules_of(b)) {
    INFO("module " << m);
    const at::Tensor &da = a[m + ".lora_down.weight"], &ua = a[m + ".lora_up.weight"];
    const at::Tensor &db = b[m + ".lora_down.weight"], &ub = b[m + ".lora_up.weight"];
    REQUIRE(da.sizes().vec() == db.sizes().vec());
    REQUIRE(ua.sizes().vec() == ub.sizes().vec());
    CHECK(a[m + ".alpha"].item<double>() == b[m + ".alpha"].item<double>());
    CHECK(std::string(c10::toString(da.scalar_type())) == "Float");
    // The merged change, as the README states it.
    at::Tensor W;
    for (const auto& [lora, ratio] : {std::make_pair(&l1, 0.7), std::make_pair(&l2, 0.5)}) {
      if (!lora->count(m + ".lora_down.weight")) continue;
      const at::Tensor& d = lora->at(m + ".lora_down.weight");
      const double scale = lora->at(m + ".alpha").item<double>() / static_cast<double>(d.size(0));
      const at::Tensor part = product(d, lora->at(m + ".lora_up.weight")) * ratio * scale;
      W = W.defined() ? W + part : part;
    }
    const int64_t k = db.size(0);
    const double tol = gap_tol(W, k);
    const at::Tensor pa = product(da, ua), pb = product(db, ub);
    if (rel(pa, pb) <= tol) {
      ++same;
      continue;
    }
    // Other singular vector signs than the reference's LAPACK: with kohya's signs the same
    // matrix gives kohya's factors, and with ours it gives ours.
    ++flipped;
    CHECK(rel(clamped_product(W, k, ub), pb) <= tol);
    CHECK(rel(clamped_product(W, k, ua), pa) <= tol);
  }
  MESSAGE(same << " modules equal to kohya's, " << flipped << " equal after aligning SVD signs");
  CHECK(flipped * 10 < same);
}

TEST_CASE("merge_lora --sd_model merges into the checkpoint as kohya's merge_lora.py") {
  at::set_num_threads(1);
  const std::string out = scratch("tiny-sd1.merged.safetensors");
  run("merge_lora", {"--sd_model", fixture("tiny-sd1.safetensors"), "--models", fixture("tiny-sd1.lora.safetensors"),
                     "--ratios", "0.8", "--save_precision", "float", "--save_to", out, "--plugin-dir", SUMI_PLUGIN_DIR});
  const auto golden = nlohmann::json::parse(read_text(tools("tiny-sd1.merged.json")))["analysis"];
  const auto merged = load(out);
  const auto input = load(fixture("tiny-sd1.safetensors"));
  std::map<std::string, std::string> meta;
  for (auto& [k, v] : golden["metadata"].items()) meta[k] = v.get<std::string>();
  check_metadata(out, meta);
  // The model's configs ride along (the tiny model's head counts are not SD 1.5's defaults): the
  // merged file reloads as the model it came from, without the .yaml that sits beside the input.
  CHECK(metadata(out).count("sumi.unet_config") == 1);
  size_t changed = 0;
  // kohya's text encoder (transformers 4.30) saves CLIP's position_ids buffer, a key the input
  // checkpoint does not have; sumi's model writes the checkpoint's tensors only.
  const std::string position_ids = "cond_stage_model.transformer.text_model.embeddings.position_ids";
  for (auto& [key, row] : golden["tensors"].items()) {
    INFO("tensor " << key);
    if (key == position_ids && !merged.count(key)) continue;
    REQUIRE(merged.count(key) == 1);
    const at::Tensor& t = merged.at(key);
    CHECK(std::string(c10::toString(t.scalar_type())) == "Float");
    if (row[3].get<int>() == 0) {
      CHECK(sha256_16(t) == row[2].get<std::string>());  // unchanged: the input converted, bitwise
      continue;
    }
    if (!input.count(key)) {  // a new key (CLIP position_ids)
      CHECK(sha256_16(t) == row[2].get<std::string>());
      continue;
    }
    ++changed;
    const at::Tensor delta = t.to(at::kDouble) - input.at(key).to(at::kDouble);
    const double maxw = t.abs().max().item<double>();
    CHECK(std::abs(delta.abs().max().item<double>() - row[6].get<double>()) <= 1e-6 * maxw);
    CHECK(delta.norm().item<double>() == doctest::Approx(row[4].get<double>()).epsilon(1e-5));
  }
  CHECK(changed == golden["n_changed"].get<size_t>() - golden["new_keys"].size());
  CHECK(merged.size() + 1 == golden["tensors"].size());
}

TEST_CASE("extract_lora_from_models recovers kohya's LoRA from a merged checkpoint") {
  at::set_num_threads(1);
  // The tuned model is merge_lora's output (tiny-sd1 + 0.8 x the fixture LoRA), as the
  // fixtures' extract-merged case; the previous test checks it against kohya's merge.
  const std::string merged = scratch("tiny-sd1.merged-for-extract.safetensors");
  run("merge_lora", {"--sd_model", fixture("tiny-sd1.safetensors"), "--models", fixture("tiny-sd1.lora.safetensors"),
                     "--ratios", "0.8", "--save_precision", "float", "--save_to", merged, "--plugin-dir", SUMI_PLUGIN_DIR});
  const std::string golden = tools("tiny-sd1.extract-merged.safetensors");
  const std::string out = scratch("tiny-sd1.extract-merged.safetensors");
  const std::string text = run("extract_lora_from_models", {"--model_org", fixture("tiny-sd1.safetensors"), "--model_tuned",
                                                            merged, "--save_to", out, "--dim", "4", "--conv_dim", "2",
                                                            "--plugin-dir", SUMI_PLUGIN_DIR});
  // v0.7.0 extracts the text encoder only if a weight there changed by more than 0.1.
  CHECK(text.find("Text encoder is same. Extract U-Net only.\n") != std::string::npos);
  CHECK(read_text(tools("tiny-sd1.extract-merged.txt")).find("Text encoder is same. Extract U-Net only.") != std::string::npos);
  auto meta = metadata(golden);
  meta["sshs_model_hash"] = own_hashes(out).first;
  meta["sshs_legacy_hash"] = own_hashes(out).second;
  check_metadata(out, meta);

  auto a = load(out), b = load(golden);
  const auto lora = load(fixture("tiny-sd1.lora.safetensors"));
  REQUIRE(a.size() == b.size());
  size_t same = 0, flipped = 0, zero = 0;
  for (const auto& m : modules_of(b)) {
    INFO("module " << m);
    REQUIRE(a.count(m + ".lora_down.weight") == 1);
    const at::Tensor &da = a[m + ".lora_down.weight"], &ua = a[m + ".lora_up.weight"];
    const at::Tensor &db = b[m + ".lora_down.weight"], &ub = b[m + ".lora_up.weight"];
    REQUIRE(da.sizes().vec() == db.sizes().vec());
    REQUIRE(ua.sizes().vec() == ub.sizes().vec());
    CHECK(a[m + ".alpha"].item<double>() == b[m + ".alpha"].item<double>());
    const at::Tensor pa = product(da, ua), pb = product(db, ub);
    if (pb.abs().max().item<double>() == 0) {  // a module the LoRA does not touch
      ++zero;
      CHECK(pa.abs().max().item<double>() == 0);
      continue;
    }
    REQUIRE(lora.count(m + ".lora_down.weight") == 1);
    const at::Tensor& d = lora.at(m + ".lora_down.weight");
    const at::Tensor W = product(d, lora.at(m + ".lora_up.weight")) * (0.8 * lora.at(m + ".alpha").item<double>() / d.size(0));
    const int64_t k = db.size(0);
    if (rel(pa, pb) <= gap_tol(W, k)) {
      ++same;
      continue;
    }
    // Other SVD signs: W here is 0.8 x the LoRA's change, which the merged model holds to
    // float32 rounding of its weights, hence the looser bound.
    ++flipped;
    CHECK(rel(clamped_product(W, k, ub), pb) <= 1e-3);
    CHECK(rel(clamped_product(W, k, ua), pa) <= 1e-3);
  }
  MESSAGE(same << " modules equal to kohya's, " << flipped << " after aligning SVD signs, " << zero << " zero");
  CHECK(zero == 85);
}

TEST_CASE("merge_lora and extract refuse checkpoints of another family by name") {
  const std::string sd1 = fixture("tiny-sd1.safetensors");
  CHECK_THROWS_WITH_AS(run("sdxl_merge_lora", {"--sd_model", sd1, "--models", fixture("tiny-sd1.lora.safetensors"), "--ratios",
                                               "1", "--save_to", scratch("x.safetensors"), "--plugin-dir", SUMI_PLUGIN_DIR}),
                       doctest::Contains(("--sd_model '" + sd1 + "' is loaded by model component 'sd1', which no kohya family "
                                          "flag names, not by one kohya's --sdxl names (this command's model); merge into other "
                                          "checkpoints with sumi merge_lora").c_str()),
                       sumi::host::UserError);
  // A family flag the user gives must name the model the file is (the model plugins say which).
  CHECK_THROWS_WITH_AS(run("extract_lora_from_models", {"--model_org", sd1, "--model_tuned", sd1, "--save_to",
                                                        scratch("x.safetensors"), "--sdxl", "--plugin-dir", SUMI_PLUGIN_DIR}),
                       doctest::Contains(("--model_org '" + sd1 + "': --sdxl was given, but the file is loaded by model "
                                          "component 'sd1', which no kohya family flag names; drop --sdxl").c_str()),
                       sumi::host::UserError);
  CHECK_THROWS_WITH_AS(run("merge_lora", {"--sd_model", sd1, "--models", fixture("tiny-sd1.lora.safetensors"), "--ratios", "1",
                                          "--save_to", scratch("x.safetensors"), "--v2", "--plugin-dir", SUMI_PLUGIN_DIR}),
                       doctest::Contains(("--sd_model '" + sd1 + "': --v2 was given").c_str()), sumi::host::UserError);
  CHECK_THROWS_WITH_AS(run("extract_lora_from_models", {"--model_org", sd1, "--model_tuned", fixture("tiny-sd2v.safetensors"),
                                                        "--save_to", scratch("x.safetensors"), "--plugin-dir", SUMI_PLUGIN_DIR}),
                       doctest::Contains("by 'sd2': a LoRA is extracted between two checkpoints of one model"),
                       sumi::host::UserError);
  CHECK_THROWS_WITH_AS(run("merge_lora", {"--models", fixture("tiny-sd1.lora.safetensors"), "--ratios", "1", "0.5",
                                          "--save_to", scratch("x.safetensors")}),
                       doctest::Contains("give one ratio per LoRA"), sumi::host::UserError);
}

// A fixture LoRA with kohya's family metadata (the fixtures carry none).
std::string lora_with_metadata(const std::string& lora, const std::string& v2, const std::string& base_model_version) {
  const std::string out = scratch(lora + "." + base_model_version + ".safetensors");
  std::map<std::string, std::string> meta{{"ss_v2", v2}};
  if (!base_model_version.empty()) meta["ss_base_model_version"] = base_model_version;
  sumi::io::save_tensors(out, sumi::io::load_all(fixture(lora + ".safetensors")), meta);
  return out;
}

TEST_CASE("merged LoRAs get the modelspec of the model their metadata names, as the model plugins describe it") {
  struct Row {
    const char* lora;
    const char* v2;
    const char* base;  // ss_base_model_version ("" for none)
    const char* merge;  // the merge_lora command for the family
    const char* arch;
    const char* reso;
    const char* prediction;
    bool sai;
  };
  const Row rows[] = {
      {"tiny-sd1.lora", "False", "sd_v1", "merge_lora", "stable-diffusion-v1/lora", "512x512", "epsilon", false},
      {"tiny-sd1.lora", "False", "", "merge_lora", "stable-diffusion-v1/lora", "512x512", "epsilon", false},
      {"tiny-sd2v.lora", "True", "sd_v2_v", "merge_lora", "stable-diffusion-v2-768-v/lora", "768x768", "v", false},
      {"tiny-sd2v.lora", "True", "sd_v2_768_v", "merge_lora", "stable-diffusion-v2-768-v/lora", "768x768", "v", false},
      {"tiny-sdxl.lora", "False", "sdxl_base_v1-0", "sdxl_merge_lora", "stable-diffusion-xl-v1-base/lora", "1024x1024", "epsilon",
       true},
  };
  for (const Row& r : rows) {
    CAPTURE(r.lora);
    CAPTURE(r.base);
    const std::string in = lora_with_metadata(r.lora, r.v2, r.base);
    for (const std::string& tool : {std::string("svd_merge_lora"), std::string(r.merge)}) {
      CAPTURE(tool);
      const std::string out = scratch(tool + "-" + r.lora + ".safetensors");
      std::vector<std::string> args{"--models", in, "--ratios", "1", "--save_to", out, "--plugin-dir", SUMI_PLUGIN_DIR};
      if (tool == "svd_merge_lora") args.insert(args.end(), {"--new_rank", "2"});
      run(tool, args);
      auto m = metadata(out);
      CHECK(m["modelspec.architecture"] == r.arch);
      CHECK(m["modelspec.resolution"] == r.reso);
      CHECK(m["modelspec.prediction_type"] == r.prediction);
      CHECK(m["modelspec.implementation"] == (r.sai ? "https://github.com/Stability-AI/generative-models" : "diffusers"));
      CHECK(m["ss_v2"] == r.v2);
      CHECK(m.count("ss_base_model_version") == (std::string(r.base).empty() ? 0u : 1u));
      if (!std::string(r.base).empty()) CHECK(m["ss_base_model_version"] == r.base);
    }
  }
  // sdxl_merge_lora's name says the model when the files do not.
  const std::string out = scratch("sdxl_merge_lora-bare.safetensors");
  run("sdxl_merge_lora", {"--models", lora_with_metadata("tiny-sdxl.lora", "False", ""), "--ratios", "1", "--save_to", out,
                          "--plugin-dir", SUMI_PLUGIN_DIR});
  CHECK(metadata(out)["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora");
}

TEST_CASE("merge_lora reads the model from the checkpoint when no family flag is given") {
  // kohya needs --v2 for an SD 2 checkpoint; sumi's model plugins say it, and the merge is
  // marked v-prediction as kohya marks --v2 merges.
  const std::string out = scratch("tiny-sd2v.merged.safetensors");
  run("merge_lora", {"--sd_model", fixture("tiny-sd2v.safetensors"), "--models", fixture("tiny-sd2v.lora.safetensors"),
                     "--ratios", "0.5", "--save_to", out, "--plugin-dir", SUMI_PLUGIN_DIR});
  auto m = metadata(out);
  CHECK(m["modelspec.architecture"] == "stable-diffusion-v2-768-v");
  CHECK(m["modelspec.prediction_type"] == "v");
  CHECK(m["modelspec.resolution"] == "768x768");
}

TEST_CASE("merge_models is kohya's weighted sum, key by key") {
  // kohya's tools/merge_models.py in float32: out = fl32(r1) * W1, then out + fl32(r2) * W2 (the
  // fixtures' README: a replica of these operations is bitwise equal to kohya's output). The
  // second model is the first with a LoRA merged in (made by the --sd_model test's command).
  const std::string second = scratch("tiny-sd1.merged-for-merge_models.safetensors");
  run("merge_lora", {"--sd_model", fixture("tiny-sd1.safetensors"), "--models", fixture("tiny-sd1.lora.safetensors"),
                     "--ratios", "0.8", "--save_to", second, "--plugin-dir", SUMI_PLUGIN_DIR});
  const std::string out = scratch("tiny-sd1.merge_models.safetensors");
  run("merge_models", {"--models", fixture("tiny-sd1.safetensors"), second, "--ratios", "0.3", "0.7", "--output", out});
  const auto a = load(fixture("tiny-sd1.safetensors")), b = load(second), m = load(out);
  CHECK(m.size() == a.size());
  CHECK(metadata(out).empty());
  for (const auto& [k, w1] : a) {
    INFO("tensor " << k);
    REQUIRE(m.count(k) == 1);
    at::Tensor want = w1.to(at::kFloat).mul(0.3);
    want = b.count(k) ? want + b.at(k).to(at::kFloat).mul(0.7) : want + w1.to(at::kFloat).mul(0.7);
    CHECK(at::equal(m.at(k), want));
  }
  // --unet_only: VAE and text encoder are the first model's.
  const std::string unet_only = scratch("tiny-sd1.merge_models-unet.safetensors");
  run("merge_models", {"--models", second, fixture("tiny-sd1.safetensors"), "--output", unet_only, "--unet_only"});
  const auto u = load(unet_only);
  for (const auto& [k, t] : u)
    if (k.rfind("cond_stage_model.", 0) == 0 || k.rfind("first_stage_model.", 0) == 0) {
      INFO("tensor " << k);
      CHECK(at::equal(t, b.at(k).to(at::kFloat)));
    }
}

TEST_CASE("numbers are spelled as Python spells them") {
  using sumi::app::tools::py_float;
  CHECK(py_float(2.0) == "2.0");
  CHECK(py_float(0.1) == "0.1");
  CHECK(py_float(1.5) == "1.5");
  CHECK(py_float(-3.0) == "-3.0");
  CHECK(py_float(0.0001) == "0.0001");
  CHECK(py_float(1e-05) == "1e-05");
  CHECK(py_float(6.479024887084961e-05) == "6.479024887084961e-05");
  CHECK(py_float(0.13412639498710632) == "0.13412639498710632");
  CHECK(py_float(static_cast<double>(0.6666667f)) == "0.6666666865348816");
  CHECK(py_float(1e16) == "1e+16");
  CHECK(py_float(123456789012345.0) == "123456789012345.0");
  CHECK(py_float(1.2345678901234568e+17) == "1.2345678901234568e+17");
  CHECK(sumi::app::tools::py_percent(0.97849, 1) == "97.8%");
}
