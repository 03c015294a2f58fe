#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ember {

// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json (+ tokenizer_config.json),
// equal to HF `tokenizers` for the Qwen2/Qwen3 family.
//
// Invalid UTF-8 is rejected: encode() throws ember::Error naming the byte offset. (HF can only
// see valid Unicode strings, so there is no reference behaviour to copy; silently replacing bytes
// would embed a different text than the user sent.)
class Tokenizer {
 public:
  // Reads dir/tokenizer.json and, when present, dir/tokenizer_config.json.
  static Tokenizer from_dir(const std::filesystem::path& dir);
  static Tokenizer from_files(const std::filesystem::path& tokenizer_json,
                              const std::filesystem::path& tokenizer_config_json);  // may be empty

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Token ids of the text alone, as HF `encode(text, add_special_tokens=False)`.
  std::vector<int32_t> encode(std::string_view text) const;

  // The model input: encode(text) followed by <|endoftext|>, unless the file's own
  // post-processor already appends it (then its output is used as is).
  std::vector<int32_t> encode_for_model(std::string_view text) const;

  // encode_for_model() cut to at most `max_tokens` ids, tokenizing no further than that needs: a
  // 40 MB text over the limit costs the tokens kept, not the whole text. When the whole model input
  // would be longer, `over_limit` is set and `ids` is its truncation: the first max_tokens - 1 ids,
  // then its last id (<|endoftext|>, which the model pools).
  // With `keep_truncation` false the caller only needs to know whether the text is too long: a
  // word that alone must pass the limit ends tokenizing before its BPE (a 40 MB run of one letter
  // costs nothing), and `ids` is then empty when `over_limit`.
  struct Limited {
    std::vector<int32_t> ids;
    bool over_limit = false;
  };
  Limited encode_for_model(std::string_view text, size_t max_tokens, bool keep_truncation = true) const;
  // encode() stopped after `max_tokens` ids; `over_limit` says there were more.
  Limited encode(std::string_view text, size_t max_tokens) const;

  int32_t eos_id() const;                    // <|endoftext|>
  int64_t id_count() const;                  // one past the largest id the tokenizer can produce
  std::string token_text(int32_t id) const;  // the vocabulary entry (byte-level form), for debugging

  // What one token stands for: its raw bytes (a BPE token may hold part of a UTF-8 character)
  // and whether it is a special added token such as <|endoftext|>.
  struct Piece {
    std::string bytes;
    bool special = false;
  };
  Piece piece(int32_t id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ember
