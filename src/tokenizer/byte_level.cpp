#include "tokenizer/byte_level.h"

#include <array>

#include "tokenizer/utf8.h"

namespace ember::tok {
namespace {

struct Alphabet {
  std::array<char32_t, 256> to_cp{};
  std::array<int, 324> to_byte{};  // every alphabet code point is below 256 + 68

  Alphabet() {
    to_byte.fill(-1);
    // Printable Latin-1 bytes stand for themselves; the other 68 bytes are moved to U+0100...
    int shifted = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_cp[b] = printable ? char32_t(b) : char32_t(256 + shifted++);
      to_byte[to_cp[b]] = b;
    }
  }
};

const Alphabet& alphabet() {
  static const Alphabet a;
  return a;
}

}  // namespace

std::string bytes_to_byte_level(std::string_view bytes) {
  const Alphabet& a = alphabet();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) append_utf8(out, a.to_cp[b]);
  return out;
}

std::optional<std::string> byte_level_to_bytes(std::string_view s) {
  const Alphabet& a = alphabet();
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const char32_t cp = next_code_point(s, i);
    if (cp >= a.to_byte.size() || a.to_byte[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(a.to_byte[cp]));
  }
  return out;
}

}  // namespace ember::tok
