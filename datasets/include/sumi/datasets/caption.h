// Captions the way kohya-ss sd-scripts builds them (library/train_util.py read_caption and
// BaseDataset.process_caption): the caption file next to an image (first line), the class
// tokens fallback, prefix/suffix, whole-caption dropout, token warmup, shuffling with kept
// tokens, tag dropout. Randomness comes from a caller-owned std::mt19937_64, so a caption is
// a pure function of (text, options, epoch/step, generator state). The stream is sumi's
// own; the same seed does not give the captions Python's `random` would.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <random>
#include <string>

namespace sumi::datasets {

struct CaptionOptions {
  std::string prefix;                  // caption_prefix, joined with a space
  std::string suffix;                  // caption_suffix, joined with a space
  bool shuffle = false;                // shuffle_caption
  int keep_tokens = 0;                 // leading tokens never shuffled or dropped
  std::string keep_tokens_separator;   // "a, b ||| c, d ||| e": fixed | flexible | fixed suffix
  std::string separator = ",";         // caption_separator
  std::string secondary_separator;     // replaced by `separator` after shuffling
  double dropout_rate = 0.0;           // caption_dropout_rate: whole caption becomes ""
  int dropout_every_n_epochs = 0;      // caption_dropout_every_n_epochs (epochs are 1-based)
  double tag_dropout_rate = 0.0;       // caption_tag_dropout_rate, per flexible token
  int token_warmup_min = 1;            // token_warmup_min
  double token_warmup_step = 0.0;      // token_warmup_step; < 1 means a fraction of max_train_steps
  bool enable_wildcard = false;        // one random line per step, "{a|b|c}" picks one ("{{" "}}" escape)
};

struct CaptionStep {
  int epoch = 1;                     // 1-based, as kohya's current_epoch
  std::int64_t step = 0;             // global optimizer step (token warmup)
  std::int64_t max_train_steps = 0;  // resolves a fractional token_warmup_step
};

// The caption file for `image` with `extension` (".txt"; a missing dot is added), read as
// UTF-8: its first line, stripped (with `all_lines`, for wildcards: every non-empty line,
// stripped, joined by "\n"). kohya also looks for `<stem minus 4 "_" fields>.ext`
// (face-crop outputs); so does this. nullopt when there is no such file. Throws
// std::runtime_error naming the file when it cannot be read, is empty or is not UTF-8.
std::optional<std::string> read_caption_file(const std::filesystem::path& image, const std::string& extension,
                                             bool all_lines = false);

// One draw of the caption for a training step. Draw order (uniform01 for the dropout test,
// then wildcard line and choices, then the shuffle, then one uniform01 per flexible token) is
// fixed, so seeded runs repeat.
std::string process_caption(const std::string& caption, const CaptionOptions& opt, const CaptionStep& at,
                            std::mt19937_64& rng);

// Python's str.strip(): ASCII whitespace at both ends.
std::string strip(const std::string& s);

}  // namespace sumi::datasets
