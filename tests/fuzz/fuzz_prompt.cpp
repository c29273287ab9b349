// Fuzz harness: prompts (host/prompt). Every line of the input is read as a gen_img / sample
// prompt line (--n --w --h --d --l --s ...); the prompt and negative prompt then go through
// A1111 weighting and 75-token chunking with a stand-in tokenizer (one id per byte, so any
// input tokenizes). The whole input is also read as a prompt file in each format (.txt
// lines, .toml, .json). Only std::invalid_argument (bad content) may escape.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.h"
#include "sd_common/prompt/chunking.h"
#include "sumi/prompt/prompt_file.h"
#include "sd_common/prompt/weighting.h"

namespace pr = sumi::prompt;

namespace {

std::vector<int> byte_tokens(std::string_view text) {
  std::vector<int> ids;
  for (unsigned char c : text)
    if (c != ' ') ids.push_back(c);
  return ids;
}

std::uint64_t encode(const pr::PromptSpec& spec, bool sd2_pad, bool no_boseos_middle) {
  std::uint64_t sum = 0;
  pr::TokenizerSpec tok;
  tok.tokenize = byte_tokens;
  if (sd2_pad) tok.pad = 0;
  pr::ChunkOptions opt;
  opt.no_boseos_middle = no_boseos_middle;
  opt.parse.break_keyword = !sd2_pad;
  try {
    for (const auto& seg : pr::parse_weights(spec.prompt, opt.parse)) sum += seg.text.size();
    const auto framed = pr::encode_pair(spec.prompt, spec.negative_prompt.value_or(""), tok, opt,
                                        [&](const std::string& w) { sum += w.size(); });
    for (const auto& f : framed) {
      const std::size_t n = static_cast<std::size_t>(f.chunks) * static_cast<std::size_t>(tok.model_max_length);
      if (f.chunk_ids.size() != n) __builtin_trap();  // the layout chunking.h documents
      sum += f.sequence.size() + f.weights.size();
    }
  } catch (const std::invalid_argument&) {
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = sumi::fuzz::text(data, size);
  std::uint64_t sum = 0;
  std::size_t pos = 0;
  for (int n = 0; n < 16 && pos <= text.size(); ++n) {
    const std::size_t nl = text.find('\n', pos);
    const std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    try {
      const pr::PromptSpec spec = pr::parse_prompt_line(line, "fuzz.txt:" + std::to_string(n + 1));
      sum += encode(spec, n % 2 == 1, n % 3 == 2) + spec.seeds.size();
    } catch (const std::invalid_argument&) {
    }
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  for (auto parse : {pr::parse_prompt_lines, pr::parse_prompt_toml, pr::parse_prompt_json}) {
    try {
      for (const auto& spec : parse(text, "fuzz-prompts")) sum += spec.prompt.size() + spec.origin.size();
    } catch (const std::invalid_argument&) {
    }
  }
  sumi::fuzz::use(sum);
  return 0;
}
