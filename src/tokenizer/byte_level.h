#pragma once
// GPT-2's byte-level alphabet: each byte is shown as one printable code point, so vocabulary
// entries are strings over 256 symbols. ember runs BPE on raw bytes and converts only at load
// time (vocabulary -> bytes) and for token_text() (bytes -> vocabulary form).
#include <optional>
#include <string>
#include <string_view>

namespace ember::tok {

// The byte-level form of raw bytes, e.g. " hi" -> "Ġhi".
std::string bytes_to_byte_level(std::string_view bytes);

// The raw bytes of a byte-level string, or nullopt if it holds a code point outside the alphabet.
// `s` must be valid UTF-8.
std::optional<std::string> byte_level_to_bytes(std::string_view s);

}  // namespace ember::tok
