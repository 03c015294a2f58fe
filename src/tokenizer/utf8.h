#pragma once
// UTF-8 helpers shared by the tokenizer stages. Every stage after validation may assume valid UTF-8.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ember::tok {

// Offset of the first byte that does not start or continue a well-formed UTF-8 sequence
// (overlong forms, surrogates and code points above U+10FFFF are ill-formed), or nullopt.
std::optional<size_t> find_invalid_utf8(std::string_view s);

// Decodes the code point starting at s[i] of a valid UTF-8 string and advances i past it.
inline char32_t next_code_point(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  const auto cont = [&](size_t k) { return static_cast<unsigned char>(s[i + k]) & 0x3Fu; };
  char32_t cp;
  if (b0 < 0xE0) {
    cp = (char32_t(b0 & 0x1F) << 6) | cont(1);
    i += 2;
  } else if (b0 < 0xF0) {
    cp = (char32_t(b0 & 0x0F) << 12) | (char32_t(cont(1)) << 6) | cont(2);
    i += 3;
  } else {
    cp = (char32_t(b0 & 0x07) << 18) | (char32_t(cont(1)) << 12) | (char32_t(cont(2)) << 6) | cont(3);
    i += 4;
  }
  return cp;
}

// Decodes the code point that ends just before s[end] of a valid UTF-8 string.
char32_t code_point_before(std::string_view s, size_t end);

void append_utf8(std::string& out, char32_t cp);

}  // namespace ember::tok
