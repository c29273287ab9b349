// Follows sd-scripts' gen_img get_prompts_with_weights, pad_tokens_and_weights and the chunk
// framing of get_unweighted_text_embeddings; the training-sample pipeline (lpw) is the same
// since it gained the pad id, minus BREAK (ParseOptions::break_keyword = false).
#include "sd_common/prompt/chunking.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace sumi::prompt {
namespace {

void check_lengths(const TokenizerSpec& tokenizer, const ChunkOptions& options) {
  if (tokenizer.model_max_length < 3)
    throw std::invalid_argument("prompt tokenizer: model_max_length must be at least 3 (BOS, one "
                                "token, EOS), got " + std::to_string(tokenizer.model_max_length));
  if (options.max_embeddings_multiples < 1)
    throw std::invalid_argument("max_embeddings_multiples must be at least 1, got " +
                                std::to_string(options.max_embeddings_multiples));
}

std::string shorten(std::string_view text) {
  return text.size() <= 80 ? std::string(text) : std::string(text.substr(0, 77)) + "...";
}

}  // namespace

WeightedTokens tokenize_weighted(std::string_view prompt, const TokenizerSpec& tokenizer,
                                 const ChunkOptions& options, const Warn& warn) {
  if (!tokenizer.tokenize) throw std::invalid_argument("prompt tokenizer: no tokenize function given");
  check_lengths(tokenizer, options);
  const size_t mml = static_cast<size_t>(tokenizer.model_max_length);
  const size_t limit = (mml - 2) * static_cast<size_t>(options.max_embeddings_multiples);

  WeightedTokens out;
  for (const WeightedText& segment : parse_weights(prompt, options.parse)) {
    if (options.parse.break_keyword && is_break(segment)) {
      // The reference pads to the next multiple of the full chunk length (77), not of the 75
      // content tokens, so the text after a BREAK starts two tokens into the next chunk.
      size_t pad_len = mml - out.ids.size() % mml;
      out.ids.insert(out.ids.end(), pad_len, tokenizer.pad);
      out.weights.insert(out.weights.end(), pad_len, 1.0);
      continue;
    }
    std::vector<int> ids = tokenizer.tokenize(segment.text);
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.weights.insert(out.weights.end(), ids.size(), segment.weight);
    if (out.ids.size() > limit) break;
  }
  if (out.ids.size() > limit) {
    out.truncated = true;
    out.ids.resize(limit);
    out.weights.resize(limit);
    if (warn)
      warn("prompt truncated to " + std::to_string(limit) + " tokens (max_embeddings_multiples " +
           std::to_string(options.max_embeddings_multiples) + "): \"" + shorten(prompt) +
           "\"; shorten it or raise max_embeddings_multiples");
  }
  return out;
}

std::vector<FramedPrompt> frame(const std::vector<WeightedTokens>& prompts,
                                const TokenizerSpec& tokenizer, const ChunkOptions& options) {
  check_lengths(tokenizer, options);
  const size_t mml = static_cast<size_t>(tokenizer.model_max_length);
  const size_t body = mml - 2;

  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.ids.size());
  // Enough chunks for the longest prompt, at least one, at most max_embeddings_multiples.
  size_t chunks = longest == 0 ? 1 : (longest - 1) / body + 1;
  chunks = std::min(chunks, static_cast<size_t>(options.max_embeddings_multiples));
  const size_t max_length = body * chunks + 2;

  std::vector<FramedPrompt> out;
  for (size_t row = 0; row < prompts.size(); ++row) {
    const WeightedTokens& p = prompts[row];
    if (p.ids.size() != p.weights.size())
      throw std::invalid_argument("prompt " + std::to_string(row) + ": " + std::to_string(p.ids.size()) +
                                  " ids but " + std::to_string(p.weights.size()) + " weights");
    if (p.ids.size() > body * chunks)
      throw std::invalid_argument("prompt " + std::to_string(row) + " has " + std::to_string(p.ids.size()) +
                                  " tokens, more than max_embeddings_multiples " +
                                  std::to_string(options.max_embeddings_multiples) + " allows (" +
                                  std::to_string(body * chunks) +
                                  "); tokenize it with the same options");
    FramedPrompt f;
    f.chunks = static_cast<int>(chunks);
    const size_t n = p.ids.size();

    f.sequence.reserve(max_length);
    f.sequence.push_back(tokenizer.bos);
    f.sequence.insert(f.sequence.end(), p.ids.begin(), p.ids.end());
    f.sequence.push_back(tokenizer.eos);
    f.sequence.resize(max_length, tokenizer.pad);

    if (options.no_boseos_middle) {
      f.weights.push_back(1.0);
      f.weights.insert(f.weights.end(), p.weights.begin(), p.weights.end());
      f.weights.resize(max_length, 1.0);
    } else {
      // Per chunk: BOS, that chunk's slice of the weights, EOS; then 1.0 up to the full length.
      // A short last slice leaves its EOS weight where the chunk's EOS token lies.
      const size_t total = chunks * mml;
      if (n > 0) {
        for (size_t j = 0; j < chunks; ++j) {
          f.weights.push_back(1.0);
          size_t a = std::min(n, j * body), b = std::min(n, (j + 1) * body);
          f.weights.insert(f.weights.end(), p.weights.begin() + static_cast<std::ptrdiff_t>(a),
                           p.weights.begin() + static_cast<std::ptrdiff_t>(b));
          f.weights.push_back(1.0);
        }
      }
      f.weights.resize(total, 1.0);
    }

    if (chunks == 1) {
      f.chunk_ids = f.sequence;
    } else {
      f.chunk_ids.reserve(chunks * mml);
      for (size_t i = 0; i < chunks; ++i) {
        std::vector<int> chunk(f.sequence.begin() + static_cast<std::ptrdiff_t>(i * body),
                               f.sequence.begin() + static_cast<std::ptrdiff_t>(i * body + mml));
        chunk.front() = tokenizer.bos;
        if (tokenizer.pad == tokenizer.eos) {
          chunk.back() = tokenizer.eos;
        } else {
          // SD2 padding: close a chunk that ends in text with EOS, and give a chunk that holds
          // nothing but padding an EOS right after its BOS.
          if (chunk.back() != tokenizer.eos && chunk.back() != tokenizer.pad) chunk.back() = tokenizer.eos;
          if (chunk[1] == tokenizer.pad) chunk[1] = tokenizer.eos;
        }
        f.chunk_ids.insert(f.chunk_ids.end(), chunk.begin(), chunk.end());
      }
    }
    out.push_back(std::move(f));
  }
  return out;
}

std::vector<FramedPrompt> encode_pair(std::string_view prompt, std::string_view negative,
                                      const TokenizerSpec& tokenizer, const ChunkOptions& options,
                                      const Warn& warn) {
  std::vector<WeightedTokens> both{tokenize_weighted(prompt, tokenizer, options, warn),
                                   tokenize_weighted(negative, tokenizer, options, warn)};
  return frame(both, tokenizer, options);
}

}  // namespace sumi::prompt
