#pragma once
// tokenizer.json "added_tokens": strings (special or not) that bypass BPE and map straight to an
// id. HF finds them with a leftmost-longest Aho-Corasick search before the model sees the text.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ember::tok {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;  // only match when not inside a word (\w on either side)
  bool lstrip = false;       // also swallow the whitespace before the match
  bool rstrip = false;       // also swallow the whitespace after the match
  bool normalized = false;   // match in the normalized text instead of the raw text
  bool special = false;
};

// Finds a set of added tokens in text: leftmost match first, the longest one at that position.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // `contents[i]` is the string to look for on behalf of tokens[i] (normalized or raw).
  AddedTokenMatcher(std::vector<AddedToken> tokens, const std::vector<std::string>& contents);

  bool empty() const { return tokens_.empty(); }

  // Calls on_text(view) for each non-empty stretch between matches and on_token(id) per match.
  template <class OnText, class OnToken>
  void split(std::string_view text, OnText&& on_text, OnToken&& on_token) const {
    size_t emitted = 0, pos = 0;
    Match m;
    while (next_match(text, pos, emitted, m)) {
      if (m.start > emitted) on_text(text.substr(emitted, m.start - emitted));
      on_token(m.id);
      emitted = pos = m.end;
    }
    if (emitted < text.size()) on_text(text.substr(emitted));
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t token = -1;  // index into tokens_ of the token ending here
  };
  struct Match {
    size_t start, end;
    int32_t id;
  };
  // Finds the next accepted match at or after `pos` (updating pos past rejected ones); its start
  // may extend back to `floor` (lstrip) and its end forward over whitespace (rstrip).
  bool next_match(std::string_view text, size_t& pos, size_t floor, Match& m) const;
  int32_t child(int32_t node, unsigned char b) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> trie_;
  bool can_start_[256] = {};
  int single_start_byte_ = -1;  // the only first byte of all tokens, or -1
};

}  // namespace ember::tok
