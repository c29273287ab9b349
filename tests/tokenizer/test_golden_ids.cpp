// Every prompt of every fixture model, through each of its tokenizers, gives exactly the ids
// that transformers' slow CLIPTokenizer recorded (tok.* / tok2.* of NAME.golden.safetensors).
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sumi/io/safetensors.h"
#include "sd_common/tokenizer/clip_tokenizer.h"

namespace {

const std::string kFixtures = std::string(SUMI_TEST_DATA) + "/fixtures/";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "cannot open " << path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// The F32 tensors of a golden file whose names start with `prefix`, as integers (the ids are
// stored as exact small floats).
std::map<std::string, std::vector<int>> read_token_tensors(const std::string& path, const std::string& prefix) {
  const auto file = sumi::io::SafetensorsFile::open(path);
  std::map<std::string, std::vector<int>> out;
  for (const auto& info : file->tensors()) {
    if (info.name.rfind(prefix, 0) != 0) continue;
    REQUIRE_MESSAGE(info.dtype == "F32", info.name << " is " << info.dtype);
    const std::uint8_t* bytes = file->data(info);
    std::vector<int> ids;
    for (std::uint64_t off = 0; off < info.nbytes; off += 4) {
      float f;
      std::memcpy(&f, bytes + off, 4);  // safetensors is little-endian, as are sumi's hosts
      ids.push_back(static_cast<int>(f));
      REQUIRE(static_cast<float>(ids.back()) == f);
    }
    out[info.name] = std::move(ids);
  }
  return out;
}

void check_model(const std::string& model, const std::string& prefix, const std::string& tokenizer_dir) {
  const auto golden = nlohmann::json::parse(read_file(kFixtures + model + ".golden.json"));
  const auto prompts = golden["meta"]["prompts"].get<std::vector<std::string>>();
  const auto special = nlohmann::json::parse(read_file(kFixtures + model + "/" + tokenizer_dir + "/special_tokens_map.json"));
  const auto pad_token = special["pad_token"].get<std::string>();
  const auto tensors = read_token_tensors(kFixtures + model + ".golden.safetensors", prefix + ".");
  REQUIRE(prompts.size() == 6);

  const sumi::sd::ClipTokenizer tok(pad_token);
  const sumi::sd::ClipTokenizer& shared =
      pad_token == "!" ? sumi::sd::ClipTokenizer::instance_pad_bang() : sumi::sd::ClipTokenizer::instance();
  CHECK(shared.pad_token() == pad_token);

  const auto& rows = tensors.at(prefix + ".ids_77");
  REQUIRE(rows.size() == prompts.size() * 77);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    CAPTURE(model);
    CAPTURE(prefix);
    CAPTURE(prompts[i]);
    const auto& want_raw = tensors.at(prefix + ".ids_raw." + std::to_string(i));
    std::vector<int> got_raw = {tok.bos()};
    const auto ids = tok.encode(prompts[i]);
    got_raw.insert(got_raw.end(), ids.begin(), ids.end());
    got_raw.push_back(tok.eos());
    CHECK(got_raw == want_raw);

    const std::vector<int> want_77(rows.begin() + static_cast<std::ptrdiff_t>(i * 77),
                                   rows.begin() + static_cast<std::ptrdiff_t>((i + 1) * 77));
    CHECK(tok.encode_padded(prompts[i]) == want_77);
    CHECK(shared.encode_padded(prompts[i]) == want_77);
  }
}

}  // namespace

TEST_CASE("golden ids: tiny-sd1 (pad <|endoftext|>)") { check_model("tiny-sd1", "tok", "tokenizer"); }
TEST_CASE("golden ids: tiny-sd2v (pad !)") { check_model("tiny-sd2v", "tok", "tokenizer"); }
TEST_CASE("golden ids: tiny-sdxl tokenizer 1") { check_model("tiny-sdxl", "tok", "tokenizer"); }
TEST_CASE("golden ids: tiny-sdxl tokenizer 2") { check_model("tiny-sdxl", "tok2", "tokenizer_2"); }

TEST_CASE("the embedded vocabulary is the fixtures' vocab.json") {
  const auto vocab = nlohmann::json::parse(read_file(kFixtures + "clip-tokenizer/vocab.json"));
  const auto& tok = sumi::sd::ClipTokenizer::instance();
  REQUIRE(vocab.size() == tok.vocab_size());
  std::size_t mismatches = 0;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int id = it.value().get<int>();
    if (tok.token_to_id(it.key()) != id || tok.id_to_token(id) != it.key()) ++mismatches;
  }
  CHECK(mismatches == 0);
}
