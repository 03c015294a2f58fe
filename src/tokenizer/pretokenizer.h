#pragma once
// The tokenizer.json "pre_tokenizer": regex Splits followed by ByteLevel. ByteLevel's byte-to-
// alphabet mapping is implicit here (BPE runs on raw bytes); its optional prefix space and GPT-2
// regex are real steps.
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex_split.h"

namespace ember::tok {

class PreTokenizer {
 public:
  // Accepts Split (Regex or String pattern, "Isolated", not inverted), ByteLevel, or a Sequence of
  // those ending in ByteLevel. Throws ember::Error for anything else.
  static PreTokenizer from_json(const nlohmann::json& spec);

  // Calls f(piece) for every pre-tokenized piece of `text` (valid UTF-8), in order.
  template <class F>
  void for_each_piece(std::string_view text, RegexScratch& scratch, F&& f) const {
    run(0, text, scratch, f);
  }

 private:
  struct Step {
    std::optional<SplitRegex> split;  // else: prepend a space unless the piece starts with one
  };

  template <class F>
  void run(size_t k, std::string_view piece, RegexScratch& scratch, F& f) const {
    if (k == steps_.size()) {
      f(piece);
    } else if (steps_[k].split) {
      steps_[k].split->for_each_isolated(piece, scratch, [&](std::string_view p) { run(k + 1, p, scratch, f); });
    } else if (!piece.empty() && piece[0] == ' ') {
      run(k + 1, piece, scratch, f);
    } else {
      std::string spaced;
      spaced.reserve(piece.size() + 1);
      spaced += ' ';
      spaced += piece;
      run(k + 1, spaced, scratch, f);
    }
  }

  void add(const nlohmann::json& spec, bool last);

  std::vector<Step> steps_;
};

}  // namespace ember::tok
