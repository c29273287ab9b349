// Weighted prompts as CLIP text encoders take them: token ids with one weight per token, cut
// into 75-token chunks that are each framed BOS ... EOS to 77 tokens, as sd-scripts'
// get_prompts_with_weights / pad_tokens_and_weights / get_unweighted_text_embeddings do (gen_img
// and the training-sample pipeline alike). Up to max_embeddings_multiples chunks (default 3 =
// 225 tokens); longer prompts are truncated with a warning. The tokenizer is passed in, so this
// library does not depend on one. Layout and quirks: docs/prompts.md.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "sd_common/prompt/weighting.h"

namespace sumi::prompt {

// Text -> token ids without BOS/EOS and without truncation (e.g. ClipTokenizer::encode).
using Tokenize = std::function<std::vector<int>(std::string_view)>;
// Receives the truncation warning; none given: the warning is only reported in the result.
using Warn = std::function<void(const std::string&)>;

struct TokenizerSpec {
  Tokenize tokenize;
  int bos = 49406;
  int eos = 49407;
  int pad = 49407;              // SD1 / SDXL encoder 1: = eos; SD2 / SDXL encoder 2: 0 ("!")
  int model_max_length = 77;    // chunk length, BOS and EOS included
};

struct ChunkOptions {
  int max_embeddings_multiples = 3;   // at most this many chunks (3 -> 225 prompt tokens)
  bool no_boseos_middle = false;      // drop the inner BOS/EOS embeddings (weights follow)
  ParseOptions parse;                 // BREAK handling
};

// One prompt's tokens before framing.
struct WeightedTokens {
  std::vector<int> ids;
  std::vector<double> weights;  // same length as ids
  bool truncated = false;
};

// Parses the weights, tokenizes each run on its own (as the reference does, so BPE never
// merges across a bracket), expands BREAK to pad tokens up to the next multiple of
// model_max_length, and truncates to (model_max_length - 2) * max_embeddings_multiples tokens.
// Throws std::invalid_argument for a bad weight or bad options.
WeightedTokens tokenize_weighted(std::string_view prompt, const TokenizerSpec& tokenizer,
                                 const ChunkOptions& options = {}, const Warn& warn = {});

// A framed prompt. `chunks` * model_max_length ids go to the text encoder, one chunk of
// model_max_length at a time; `weights` has one entry per position of the concatenated
// embeddings: chunks * model_max_length entries, or (model_max_length - 2) * chunks + 2 with
// no_boseos_middle (chunk 0 without its EOS, inner chunks without BOS and EOS, the last
// without BOS).
struct FramedPrompt {
  int chunks = 1;
  std::vector<int> sequence;     // BOS + ids + EOS + pad...: (model_max_length-2)*chunks+2 ids
  std::vector<int> chunk_ids;    // chunks * model_max_length ids, each chunk framed
  std::vector<double> weights;
};

// Frames prompts that are encoded together (a prompt and its negative prompt): they share one
// chunk count, that of the longest, capped at max_embeddings_multiples.
std::vector<FramedPrompt> frame(const std::vector<WeightedTokens>& prompts,
                                const TokenizerSpec& tokenizer, const ChunkOptions& options = {});

// tokenize_weighted + frame for a prompt and its negative prompt; returns {prompt, negative}.
std::vector<FramedPrompt> encode_pair(std::string_view prompt, std::string_view negative,
                                      const TokenizerSpec& tokenizer,
                                      const ChunkOptions& options = {}, const Warn& warn = {});

}  // namespace sumi::prompt
