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

#include "sd_common/tokenizer/clip_tokenizer.h"

namespace {

const std::string kFixtures = std::string(SUMI_TEST_DATA) + "/fixtures/";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "cannot open " << path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// The F32 tensors of a safetensors file whose names start with a prefix, as integers.
std::map<std::string, std::vector<int>> read_token_tensors(const std::string& path, const std::string& prefix) {
  const std::string bytes = read_file(path);
  REQUIRE(bytes.size() >= 8);
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  REQUIRE(8 + header_len <= bytes.size());
  const auto header = nlohmann::json::parse(bytes.substr(8, header_len));
  const std::size_t data_start = 8 + header_len;
  std::map<std::string, std::vector<int>> out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key().rfind(prefix, 0) != 0) continue;
    REQUIRE(it.value()["dtype"] == "F32");
    const auto begin = it.value()["data_offsets"][0].get<std::size_t>();
    const auto end = it.value()["data_offsets"][1].get<std::size_t>();
    REQUIRE(data_start + end <= bytes.size());
    std::vector<int> ids;
    for (std::size_t off = begin; off < end; off += 4) {
      float f;
      std::memcpy(&f, bytes.data() + data_start + off, 4);  // little-endian host assumed
      ids.push_back(static_cast<int>(f));
      REQUIRE(static_cast<float>(ids.back()) == f);
    }
    out[it.key()] = std::move(ids);
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
