#pragma once
// A tokenizer.json Split pattern, compiled with PCRE2 (UTF + UCP, JIT) and iterated exactly like
// HF `tokenizers` iterates its Oniguruma regex.
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <memory>
#include <string>
#include <string_view>

namespace ember::tok {

// Per-thread PCRE2 state (match data, JIT stack); one serves every SplitRegex.
class RegexScratch {
 public:
  RegexScratch();
  ~RegexScratch();
  RegexScratch(const RegexScratch&) = delete;
  RegexScratch& operator=(const RegexScratch&) = delete;

  pcre2_match_data* match_data() const { return match_data_; }
  pcre2_match_context* context() const { return context_; }

 private:
  pcre2_match_data* match_data_ = nullptr;
  pcre2_match_context* context_ = nullptr;
  pcre2_jit_stack* jit_stack_ = nullptr;
};

// Rewrites the Oniguruma constructs whose meaning differs in PCRE2: \s and \S become the Unicode
// White_Space property (PCRE2's UCP \s also matches U+180E), \h and \H are hex digits, \v is
// U+000B, and the (?m) flag (dot matches newline) becomes (?s). Throws ember::Error for Oniguruma
// class operators PCRE2 lacks (nested classes, &&). Exposed for tests.
std::string onig_to_pcre2(std::string_view pattern);

class SplitRegex {
 public:
  // `pattern` is the tokenizer.json Regex string (Oniguruma syntax), or a plain string to match
  // literally. `where` names the pattern in error messages.
  SplitRegex(std::string_view pattern, bool literal, const std::string& where);

  // Calls f(piece) for the matches and the text between them, in order, skipping empty pieces
  // (HF's "Isolated" behaviour). `text` must be valid UTF-8.
  template <class F>
  void for_each_isolated(std::string_view text, RegexScratch& scratch, F&& f) const {
    // Mirrors the onig crate's find_iter: an empty match right where the previous match ended is
    // skipped by advancing one character.
    size_t prev = 0, search_from = 0;
    size_t last_match_end = std::string_view::npos;
    while (search_from <= text.size()) {
      size_t start, end;
      if (!find(text, search_from, scratch, start, end)) break;
      if (start == end && end == last_match_end) {
        search_from += search_from < text.size() ? char_length(text[search_from]) : 1;
        continue;
      }
      search_from = last_match_end = end;
      if (start != prev) f(text.substr(prev, start - prev));
      if (end != start) f(text.substr(start, end - start));
      prev = end;
    }
    if (prev != text.size()) f(text.substr(prev));
  }

 private:
  static size_t char_length(char lead) {
    const auto b = static_cast<unsigned char>(lead);
    return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  }
  bool find(std::string_view text, size_t from, RegexScratch& scratch, size_t& start, size_t& end) const;

  std::shared_ptr<pcre2_code> code_;
  bool jit_ = false;
  std::string where_;
};

}  // namespace ember::tok
