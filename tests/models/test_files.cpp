// Checkpoint forms and refusals: .ckpt through the restricted unpickler, EMA keys, truncated
// files, missing tensors, wrong shapes, hostile pickles and wrong families each refused with a
// message naming what is wrong; `sumi convert` round trips bit for bit (as a function and
// through the CLI).
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include <sumi/tensor.hpp>

#include "ckpt_writer.h"
#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sd_model.h"
#include "sumi/io/safetensors.h"
#include "sumi/io/safetensors_torch.h"
#include "model_files.h"
#include "models_test_util.h"
#include "nn/unet_config.h"
#include "nn/vae_config.h"

using namespace sumi::test;
namespace fs = std::filesystem;

namespace {

const std::string kToQ = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";

sumi::io::NamedTensors original(const std::string& model) { return sumi::io::load_all(fixture(model + ".safetensors")); }

// Copies the fixture's .yaml beside `path` (the tiny models need it for their head counts).
void with_yaml(const std::string& model, const std::string& path) {
  fs::copy_file(fixture(model + ".yaml"), fs::path(path).replace_extension(".yaml"), fs::copy_options::overwrite_existing);
}

bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes().equals(b.sizes()) && at::equal(a, b);
}

std::map<std::string, at::Tensor> as_map(const sumi::io::NamedTensors& v) {
  return std::map<std::string, at::Tensor>(v.begin(), v.end());
}

void check_same_file(const std::string& got, const std::string& want) {
  CAPTURE(got);
  auto a = as_map(sumi::io::load_all(got)), b = as_map(sumi::io::load_all(want));
  REQUIRE(a.size() == b.size());
  for (auto& [k, t] : b) {
    CAPTURE(k);
    REQUIRE(a.count(k));
    CHECK(bit_equal(a.at(k), t));
  }
}

int run_cli(const std::string& args, std::string* err = nullptr) {
  const std::string errfile = scratch("cli_stderr.txt");
  const int rc = std::system((std::string(SUMI_BUILD_DIR) + "/bin/sumi " + args + " >/dev/null 2>" + errfile).c_str());
  if (err) {
    std::ifstream in(errfile);
    err->assign(std::istreambuf_iterator<char>(in), {});
  }
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace

TEST_CASE("models: a .ckpt (state_dict, fp16, EMA keys) loads to the same numbers as the .safetensors") {
  auto tensors = original("tiny-sd1");
  tensors.emplace_back("model_ema.decay", at::tensor(0.9999f));
  tensors.emplace_back("model_ema.num_updates", at::tensor(int64_t{7}));
  const std::string path = scratch("tiny-sd1.ckpt");
  write_ckpt(path, tensors);
  with_yaml("tiny-sd1", path);
  auto m = load_model("sd1", path);
  at::NoGradGuard no_grad;
  CHECK(rel_err(m->encode_text(golden_prompts()).first, golden("tiny-sd1", "te.last_hidden_state")) < 1e-4);
  CHECK(rel_err(m->denoise(golden("tiny-sd1", "unet.in.sample"), at::full({2}, 500, at::kLong),
                           golden("tiny-sd1", "unet.in.encoder_hidden_states")),
                golden("tiny-sd1", "unet.out.t500")) < 1e-4);
}

TEST_CASE("models: refusals name the file and what is wrong") {
  SUBCASE("wrong family, single file and folder") {
    std::string e = load_error("sd1", fixture("tiny-sdxl.safetensors"));
    CHECK(e.find("tiny-sdxl.safetensors is an SDXL checkpoint") != std::string::npos);
    CHECK(e.find("'sdxl'") != std::string::npos);
    e = load_error("sdxl", fixture("tiny-sd2v"));
    CHECK(e.find("is an SD 2.x checkpoint") != std::string::npos);
    CHECK(e.find("'sd2'") != std::string::npos);
  }
  SUBCASE("truncated file") {
    const std::string path = scratch("truncated.safetensors");
    {
      std::ifstream in(fixture("tiny-sd1.safetensors"), std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), {});
      std::ofstream(path, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    }
    const std::string e = load_error("sd1", path);
    CAPTURE(e);
    CHECK(e.find("truncated.safetensors") != std::string::npos);
  }
  SUBCASE("missing tensor") {
    auto t = original("tiny-sd1");
    t.erase(std::remove_if(t.begin(), t.end(), [](auto& p) { return p.first == kToQ; }), t.end());
    const std::string path = scratch("missing.safetensors");
    sumi::io::save_tensors(path, t);
    with_yaml("tiny-sd1", path);
    const std::string e = load_error("sd1", path);
    CAPTURE(e);
    CHECK(e.find("missing.safetensors") != std::string::npos);
    CHECK(e.find("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight") != std::string::npos);
  }
  SUBCASE("wrong shape") {
    auto t = original("tiny-sd1");
    for (auto& [k, v] : t)
      if (k == kToQ) v = at::zeros({32, 16}, at::kHalf);
    const std::string path = scratch("shape.safetensors");
    sumi::io::save_tensors(path, t);
    with_yaml("tiny-sd1", path);
    const std::string e = load_error("sd1", path);
    CAPTURE(e);
    CHECK(e.find("shape.safetensors") != std::string::npos);
    CHECK(e.find("attn1.to_q.weight") != std::string::npos);
    CHECK(e.find("[32, 16]") != std::string::npos);
  }
  SUBCASE("a .ckpt naming a forbidden global") {
    const std::string path = scratch("evil.ckpt");
    write_ckpt(path, {{"model.diffusion_model.out.2.bias", at::zeros({4})}}, "os.system");
    const std::string e = load_error("sd1", path);
    CAPTURE(e);
    CHECK(e.find("evil.ckpt") != std::string::npos);
    CHECK(e.find("os.system") != std::string::npos);
  }
  SUBCASE("not a checkpoint") {
    const std::string e = load_error("sd1", fixture("tiny-sd1.yaml"));
    CHECK(e.find("unknown checkpoint type '.yaml'") != std::string::npos);
  }
}

TEST_CASE("convert: single file -> diffusers -> single file keeps every tensor bit for bit") {
  for (const std::string model : {"tiny-sd1", "tiny-sd2v", "tiny-sdxl"}) {
    CAPTURE(model);
    const std::string dir = scratch(model + "-diffusers");
    const std::string back = scratch(model + "-back.safetensors");
    sumi::sd::convert_model(fixture(model + ".safetensors"), dir, {});
    sumi::sd::convert_model(dir, back, {});

    // The folder: the same tensors as the reference diffusers folder, configs that read back
    // equal, tokenizer files with the same content.
    for (const std::string part : {"unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"})
      check_same_file(dir + "/" + part + ".safetensors", fixture(model + "/" + part + ".safetensors"));
    CHECK(sumi::nn::UNetConfig::from_diffusers_json(dir + "/unet/config.json") ==
          sumi::nn::UNetConfig::from_diffusers_json(fixture(model + "/unet/config.json")));
    CHECK(sumi::nn::VaeConfig::from_diffusers_json(dir + "/vae/config.json") ==
          sumi::nn::VaeConfig::from_diffusers_json(fixture(model + "/vae/config.json")));
    for (const char* f : {"vocab.json", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"}) {
      CAPTURE(f);
      std::ifstream a(dir + "/tokenizer/" + f), b(fixture(model + "/tokenizer/" + f));
      CHECK(nlohmann::json::parse(a) == nlohmann::json::parse(b));
    }
    {
      std::ifstream a(dir + "/tokenizer/merges.txt"), b(fixture(model + "/tokenizer/merges.txt"));
      CHECK(std::string(std::istreambuf_iterator<char>(a), {}) == std::string(std::istreambuf_iterator<char>(b), {}));
    }
    if (model == "tiny-sdxl") {
      check_same_file(dir + "/text_encoder_2/model.safetensors", fixture(model + "/text_encoder_2/model.safetensors"));
      CHECK(fs::exists(dir + "/tokenizer_2/merges.txt"));
      for (const char* f : {"vocab.json", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"}) {
        CAPTURE(f);
        std::ifstream a(dir + "/tokenizer_2/" + f), b(fixture(model + "/tokenizer_2/" + f));
        CHECK(nlohmann::json::parse(a) == nlohmann::json::parse(b));
      }
    }
    // The converted folder is a working model.
    auto m = load_model(family_of(model), dir);
    at::NoGradGuard no_grad;
    CHECK(rel_err(m->encode_text({"a photo of a cat"}).first, golden(model, "gen.cond.prompt_embeds")) < 1e-4);

    // Back to one file: every tensor diffusers keeps is bit-identical; the ones it drops
    // (SD2's last text block, OpenCLIP's logit_scale / SD2's text_projection) are placeholders.
    auto want = as_map(original(model));
    auto got = as_map(sumi::io::load_all(back));
    std::set<std::string> dropped;
    for (const auto& k : sumi::nn::convert_single_file(want, sumi::sd::family_from_string(family_of(model))).unused)
      dropped.insert(k);
    CHECK(dropped.size() == (model == "tiny-sd1" ? 0u : model == "tiny-sd2v" ? 14u : 1u));
    CHECK(got.size() == want.size());
    for (const auto& [k, t] : want) {
      CAPTURE(k);
      REQUIRE(got.count(k));
      if (!dropped.count(k)) CHECK(bit_equal(got.at(k), t));
      // SD2's unused text_projection comes back as the real models' [width, width] identity
      // (the tiny fixture's is [32, 24]); every other placeholder has the original's shape.
      else if (k != "cond_stage_model.model.text_projection") CHECK(got.at(k).sizes().equals(t.sizes()));
    }
  }
}

TEST_CASE("convert: diffusers -> single -> diffusers, .ckpt -> .safetensors, dtypes, no overwrite") {
  const std::string single = scratch("sdxl-from-folder.safetensors");
  const std::string dir = scratch("sdxl-again");
  sumi::sd::convert_model(fixture("tiny-sdxl"), single, {});
  sumi::sd::convert_model(single, dir, {});
  for (const std::string part : {"unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model",
                                 "text_encoder_2/model"})
    check_same_file(dir + "/" + part + ".safetensors", fixture("tiny-sdxl/" + part + ".safetensors"));

  const std::string ckpt = scratch("sd1.ckpt");
  write_ckpt(ckpt, original("tiny-sd1"));
  const std::string from_ckpt = scratch("sd1-from-ckpt.safetensors");
  sumi::sd::convert_model(ckpt, from_ckpt, {});
  check_same_file(from_ckpt, fixture("tiny-sd1.safetensors"));

  sumi::sd::ConvertOptions bf16;
  bf16.dtype = at::kBFloat16;
  const std::string b = scratch("sd1-bf16.safetensors");
  sumi::sd::convert_model(fixture("tiny-sd1.safetensors"), b, bf16);
  for (auto& [k, t] : sumi::io::load_all(b)) {
    CAPTURE(k);
    if (at::isFloatingType(t.scalar_type())) CHECK((t.scalar_type() == at::kBFloat16));
  }

  CHECK_THROWS_WITH(sumi::sd::convert_model(fixture("tiny-sd1.safetensors"), b, {}),
                    doctest::Contains("already exists; choose another destination or pass --overwrite"));
  sumi::sd::ConvertOptions over;
  over.overwrite = true;
  sumi::sd::convert_model(fixture("tiny-sd1.safetensors"), b, over);
  check_same_file(b, fixture("tiny-sd1.safetensors"));

  sumi::sd::ConvertOptions fam;
  fam.family = sumi::nn::ModelFamily::sd1;
  CHECK_THROWS_WITH(sumi::sd::convert_model(fixture("tiny-sdxl.safetensors"), scratch("x.safetensors"), fam),
                    doctest::Contains("is an SDXL checkpoint"));
  CHECK_FALSE(fs::exists(scratch("x.safetensors")));
}

TEST_CASE("convert: the sumi CLI") {
  const std::string dst = scratch("cli-fp32.safetensors");
  REQUIRE(run_cli("convert " + fixture("tiny-sd1.safetensors") + " " + dst + " --dtype fp32") == 0);
  auto want = as_map(sumi::io::load_all(fixture("tiny-sd1.safetensors"), at::kFloat));
  auto got = as_map(sumi::io::load_all(dst));
  REQUIRE(got.size() == want.size());
  for (auto& [k, t] : want) CHECK(bit_equal(got.at(k), t));

  std::string err;
  CHECK(run_cli("convert " + fixture("tiny-sd1.safetensors") + " " + dst, &err) == 2);
  CHECK(err.find("already exists") != std::string::npos);
  CHECK(run_cli("convert " + fixture("nope.safetensors") + " " + scratch("y.safetensors"), &err) == 2);
  CHECK(err.find("nope.safetensors: no such file or folder") != std::string::npos);
  CHECK(run_cli("convert a b --dtype fp8", &err) == 2);
  CHECK(err.find("--dtype 'fp8'") != std::string::npos);
  // A destination that names another file type is refused before the source is read, instead of
  // becoming a folder of that name; a folder name with dots that are not an extension is a folder.
  const std::string ckpt = scratch("cli-out.ckpt");
  CHECK(run_cli("convert " + fixture("tiny-sd1.safetensors") + " " + ckpt, &err) == 2);
  CHECK(err.find("cannot write a model as '.ckpt'") != std::string::npos);
  CHECK(err.find("cli-out.safetensors") != std::string::npos);
  CHECK_FALSE(fs::exists(ckpt));
  CHECK(run_cli("convert " + fixture("tiny-sd1.safetensors") + " " + scratch("model.bin"), &err) == 2);
  const std::string dotted = scratch("sd-v1.5");
  fs::remove_all(dotted);
  CHECK(run_cli("convert " + fixture("tiny-sd1.safetensors") + " " + dotted, &err) == 0);
  CHECK(fs::is_regular_file(dotted + "/model_index.json"));
}

TEST_CASE("a single file sumi writes reloads without a .yaml: the parts' configs ride in its metadata") {
  for (const std::string model : {"tiny-sd1", "tiny-sd2v", "tiny-sdxl"}) {
    CAPTURE(model);
    const std::string single = scratch(model + "-no-yaml.safetensors");
    fs::remove(single);
    sumi::sd::convert_model(fixture(model), single, {});
    REQUIRE_FALSE(fs::exists(fs::path(single).replace_extension(".yaml")));
    const auto meta = sumi::io::SafetensorsFile::open(single)->metadata();
    CHECK(meta.count("sumi.unet_config") == 1);
    CHECK(meta.count("sumi.text_encoder_config") == 1);
    CHECK(meta.count("sumi.text_encoder_2_config") == (model == "tiny-sdxl" ? 1u : 0u));
    const auto folder = sumi::sd::read_model(fixture(model)), back = sumi::sd::read_model(single);
    CHECK(*back.unet_config == *folder.unet_config);  // the head counts shapes cannot tell
    CHECK(*back.vae_config == *folder.vae_config);
    CHECK(*back.te_config == *folder.te_config);
    {  // the reloaded file computes what the folder computes
      auto m = load_model(family_of(model), single);
      at::NoGradGuard no_grad;
      CHECK(rel_err(m->encode_text({"a photo of a cat"}).first, golden(model, "gen.cond.prompt_embeds")) < 1e-4);
    }
    // Without the metadata (the fixture's own single file, no .yaml beside it) the heads are
    // guessed from the family (tiny-sd1's 8 happen to be SD1's).
    if (model == "tiny-sd1") continue;
    const std::string bare = scratch(model + "-bare.safetensors");
    fs::copy_file(fixture(model + ".safetensors"), bare, fs::copy_options::overwrite_existing);
    CHECK_FALSE(*sumi::sd::read_model(bare).unet_config == *folder.unet_config);
  }
}

TEST_CASE("models: a diffusers folder with .bin weights loads through the restricted unpickler") {
  const std::string dir = scratch("tiny-sd1-bin");
  fs::copy(fixture("tiny-sd1"), dir, fs::copy_options::recursive);
  const std::string st = dir + "/unet/diffusion_pytorch_model.safetensors";
  write_ckpt(dir + "/unet/diffusion_pytorch_model.bin", sumi::io::load_all(st));
  fs::remove(st);
  auto m = load_model("sd1", dir);
  at::NoGradGuard no_grad;
  CHECK(rel_err(m->denoise(golden("tiny-sd1", "unet.in.sample"), at::full({2}, 999, at::kLong),
                           golden("tiny-sd1", "unet.in.encoder_hidden_states")),
                golden("tiny-sd1", "unet.out.t999")) < 1e-4);
}

TEST_CASE("models: dtype and prediction type") {
  sumi::detail::g_host = sumi::host::host_api();
  auto prediction = [](sumi::nn::ModelFamily f, const std::string& path, bool v = false) {
    sumi::sd::ModelOptions o;
    o.family = f;
    o.v_parameterization = v;
    sumi::sd::SdModel m(o);
    m.load(path);
    return m.prediction_type();
  };
  using sumi::nn::ModelFamily;
  CHECK(prediction(ModelFamily::sd2, fixture("tiny-sd2v")) == "v_prediction");             // scheduler config
  CHECK(prediction(ModelFamily::sd2, fixture("tiny-sd2v.safetensors")) == "v_prediction");  // parameterization: v
  CHECK(prediction(ModelFamily::sd1, fixture("tiny-sd1.safetensors")) == "epsilon");
  CHECK(prediction(ModelFamily::sd1, fixture("tiny-sd1.safetensors"), true) == "v_prediction");
  {  // a checkpoint whose SAI model spec says v (as kohya and sumi train write it)
    const fs::path dir = fs::temp_directory_path() / "sumi_models_modelspec_v";
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::copy_file(fixture("tiny-sd1.safetensors"), dir / "m.safetensors");
    fs::copy_file(fixture("tiny-sd1.yaml"), dir / "m.yaml");
    sumi::io::set_safetensors_metadata((dir / "m.safetensors").string(), {{"modelspec.prediction_type", "v"}});
    CHECK(prediction(ModelFamily::sd1, (dir / "m.safetensors").string()) == "v_prediction");
    sumi::io::set_safetensors_metadata((dir / "m.safetensors").string(), {{"modelspec.prediction_type", "epsilon"}});
    CHECK(prediction(ModelFamily::sd1, (dir / "m.safetensors").string()) == "epsilon");
    fs::remove_all(dir);
  }

  // bf16: weights in bf16, numbers close to the fp32 goldens.
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"), {{"dtype", "bf16"}});
  for (const auto& info : m->modules()) CHECK((sumi::host::unwrap(info.weight).scalar_type() == at::kBFloat16));
  at::NoGradGuard no_grad;
  CHECK(rel_err(m->encode_text(golden_prompts()).first, golden("tiny-sd1", "te.last_hidden_state")) < 5e-2);
  CHECK(rel_err(m->denoise(golden("tiny-sd1", "unet.in.sample"), at::full({2}, 500, at::kLong),
                           golden("tiny-sd1", "unet.in.encoder_hidden_states")),
                golden("tiny-sd1", "unet.out.t500")) < 5e-2);
  CHECK(load_error("sd1", fixture("tiny-sd1.safetensors"), {{"dtype", "fp8"}}).find("dtype 'fp8'") != std::string::npos);
  CHECK(load_error("sdxl", fixture("tiny-sdxl.safetensors"), {{"clip_skip", "2"}}).find("clip_skip") != std::string::npos);
}
