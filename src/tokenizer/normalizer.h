#pragma once
// The tokenizer.json "normalizer": none, or Unicode NFC (alone or inside a Sequence).
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

namespace ember::tok {

class Normalizer {
 public:
  // Throws ember::Error for normalizer types other than NFC.
  static Normalizer from_json(const nlohmann::json& spec);

  bool is_identity() const { return !nfc_; }

  // Returns `text` itself when it is already normalized (the common case, found by a quick check),
  // else the normalized text stored in `buf`. `text` must be valid UTF-8.
  std::string_view apply(std::string_view text, std::string& buf) const;

 private:
  static void nfc_append(std::string_view text, std::string& out);

  bool nfc_ = false;
};

}  // namespace ember::tok
