// The CLIP BPE tokenizer of SD1, SD2 and SDXL: text -> token ids, exactly as Hugging Face
// transformers' slow CLIPTokenizer (4.34, with ftfy) produces them. The vocabulary is built into
// the library; no files are read. Text clean-up, limits and what is matched: docs/tokenizer.md.
//
// Two pad conventions exist: SD1 and SDXL's first tokenizer pad with <|endoftext|> (49407); SD2
// and SDXL's second pad with "!" (id 0), and the reference then also treats every "!" in the
// prompt as a special token ("ArtStation!!" ends in 0 0 there, in "!!</w>" otherwise). A
// ClipTokenizer is built for one pad token and reproduces that.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sumi::sd {

namespace detail {
struct ClipVocab;
struct ClipBpeCache;
}  // namespace detail

class ClipTokenizer {
 public:
  static constexpr std::string_view kStartOfText = "<|startoftext|>";
  static constexpr std::string_view kEndOfText = "<|endoftext|>";
  static constexpr std::string_view kBangPad = "!";
  static constexpr int kModelMaxLength = 77;

  // Shared instances: pad <|endoftext|> (SD1, SDXL text encoder 1) and pad "!" (SD2, SDXL
  // text encoder 2). Thread-safe.
  static const ClipTokenizer& instance();
  static const ClipTokenizer& instance_pad_bang();

  // pad_token must be a whole entry of the vocabulary (e.g. "<|endoftext|>" or "!"); throws
  // std::invalid_argument otherwise. Instances share the (immutable) vocabulary.
  explicit ClipTokenizer(std::string_view pad_token = kEndOfText);
  ~ClipTokenizer();
  ClipTokenizer(const ClipTokenizer&) = delete;
  ClipTokenizer& operator=(const ClipTokenizer&) = delete;

  // Token ids of a UTF-8 prompt without BOS/EOS and without truncation: what a caller splits
  // into 75-token chunks for long prompts. Throws std::invalid_argument on invalid UTF-8.
  std::vector<int> encode(std::string_view text) const;

  // What the text encoders take: BOS + the first max_length-2 ids + EOS, then pad ids up to
  // max_length. pad_id < 0 means this tokenizer's pad token. max_length must be >= 2.
  std::vector<int> encode_padded(std::string_view text, int max_length = kModelMaxLength,
                                 int pad_id = -1) const;

  // Frames already-encoded ids (e.g. one 75-token chunk of a long prompt) the same way.
  std::vector<int> frame(const std::vector<int>& ids, int max_length = kModelMaxLength,
                         int pad_id = -1) const;

  // Textual Inversion, as sd-scripts' gen_img and train_textual_inversion add a token: `token`
  // and, for n_vectors > 1, "token1" ... "token<n-1>" become new ids after the vocabulary (and
  // any tokens added before), split out of the raw text first like the special tokens
  // (case-sensitive). In encode() `token` itself expands to all n ids, gen_img's replacement.
  // Returns the n ids. Throws std::invalid_argument when a string is empty or already a token
  // (a vocabulary entry such as "cat" or "cat</w>", or added before).
  std::vector<int> add_embedding_token(std::string_view token, int n_vectors);
  // Vocabulary plus added tokens: the number of rows a text encoder's embedding needs.
  std::size_t size() const;

  int bos() const { return bos_; }
  int eos() const { return eos_; }
  int pad_id() const { return pad_id_; }
  const std::string& pad_token() const { return pad_token_; }
  std::size_t vocab_size() const;

  // Vocabulary look-ups on the byte-level token strings (e.g. "cat</w>"); -1 / throws on unknown.
  int token_to_id(std::string_view token) const;
  const std::string& id_to_token(int id) const;

  // Readable text of ids, for logs and debugging: the tokens' bytes joined, "</w>" -> " ", end
  // trimmed; BOS/EOS (and an added pad token) dropped unless !skip_special. Unlike the
  // reference's decode it does not remove spaces before punctuation.
  std::string decode(const std::vector<int>& ids, bool skip_special = true) const;

 private:
  void encode_piece(std::u32string_view piece, std::vector<int>& out) const;
  void bpe_word(const std::string& bytes, std::vector<int>& out) const;

  std::shared_ptr<const detail::ClipVocab> vocab_;
  std::unique_ptr<detail::ClipBpeCache> cache_;
  std::string pad_token_;
  struct AddedToken {
    std::u32string text;
    int id;
  };
  std::vector<AddedToken> added_;  // split out of the raw text first, longest first
  std::vector<std::string> user_tokens_;  // add_embedding_token's strings, id = vocab size + index
  struct Expansion {
    int first;
    std::vector<int> ids;
  };
  std::vector<Expansion> expansions_;  // a multi-vector token's first id -> all its ids
  int bos_ = 0;
  int eos_ = 0;
  int pad_id_ = 0;
  bool pad_is_added_token_ = false;
};

}  // namespace sumi::sd
