#pragma once
// The tokenizer.json "post_processor", reduced to what encode_for_model needs: the ids its
// single-sequence template puts before and after the text.
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <vector>

namespace ember::tok {

struct PostProcessor {
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;

  bool adds_tokens() const { return !prefix.empty() || !suffix.empty(); }

  // Accepts null, ByteLevel (adds nothing), TemplateProcessing, BertProcessing, RobertaProcessing,
  // or a Sequence of those. Throws ember::Error for anything else.
  static PostProcessor from_json(const nlohmann::json& spec);
};

}  // namespace ember::tok
