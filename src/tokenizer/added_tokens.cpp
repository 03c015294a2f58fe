#include "tokenizer/added_tokens.h"

#include <cstring>

#include "tokenizer/unicode_tables.h"
#include "tokenizer/utf8.h"

namespace ember::tok {
namespace {

// Unicode White_Space, what Rust's regex \s (used by HF for lstrip/rstrip) matches.
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Rust regex's Unicode \w: letters, marks, decimal and letter numbers, connector punctuation, joiners.
bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  if (c == 0x200C || c == 0x200D) return true;
  using G = GeneralCategory;
  switch (general_category(c)) {
    case G::Lu:
    case G::Ll:
    case G::Lt:
    case G::Lm:
    case G::Lo:
    case G::Mn:
    case G::Mc:
    case G::Me:
    case G::Nd:
    case G::Nl:
    case G::Pc: return true;
    default: return false;
  }
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens, const std::vector<std::string>& contents)
    : tokens_(std::move(tokens)), trie_(1) {
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& s = contents[t];
    if (s.empty()) continue;
    int32_t node = 0;
    for (unsigned char b : s) {
      int32_t next = child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(trie_.size());
        trie_[node].children.emplace_back(b, next);
        trie_.emplace_back();
      }
      node = next;
    }
    if (trie_[node].token < 0) trie_[node].token = static_cast<int32_t>(t);  // first one wins, as in HF
    can_start_[static_cast<unsigned char>(s[0])] = true;
  }
  int starts = 0;
  for (int b = 0; b < 256; ++b) {
    if (can_start_[b]) {
      ++starts;
      single_start_byte_ = b;
    }
  }
  if (starts != 1) single_start_byte_ = -1;
}

int32_t AddedTokenMatcher::child(int32_t node, unsigned char b) const {
  for (const auto& [byte, next] : trie_[node].children) {
    if (byte == b) return next;
  }
  return -1;
}

bool AddedTokenMatcher::next_match(std::string_view text, size_t& pos, size_t floor, Match& m) const {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  while (pos < text.size()) {
    if (single_start_byte_ >= 0) {
      const void* hit = std::memchr(p + pos, single_start_byte_, text.size() - pos);
      if (!hit) return false;
      pos = static_cast<size_t>(static_cast<const unsigned char*>(hit) - p);
    } else if (!can_start_[p[pos]]) {
      ++pos;
      continue;
    }
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      node = child(node, p[i]);
      if (node < 0) break;
      if (trie_[node].token >= 0) {
        best = trie_[node].token;
        best_end = i + 1;
      }
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[best];
    size_t start = pos, end = best_end;
    pos = best_end;  // a rejected match is consumed, as HF's find_iter does
    if (tok.single_word) {
      const bool word_before = start > 0 && is_word_char(code_point_before(text, start));
      size_t after = end;
      const bool word_after = end < text.size() && is_word_char(next_code_point(text, after));
      if (word_before || word_after) continue;
    }
    if (tok.lstrip) {
      while (start > floor) {
        size_t prev = start - 1;
        while (prev > floor && (p[prev] & 0xC0) == 0x80) --prev;
        size_t probe = prev;
        if (!is_white_space(next_code_point(text, probe))) break;
        start = prev;
      }
    }
    if (tok.rstrip) {
      while (end < text.size()) {
        size_t probe = end;
        if (!is_white_space(next_code_point(text, probe))) break;
        end = probe;
      }
    }
    m = {start, end, tok.id};
    pos = end;
    return true;
  }
  return false;
}

}  // namespace ember::tok
