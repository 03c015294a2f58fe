#include "tokenizer/pretokenizer.h"

#include <nlohmann/json.hpp>

#include "ember/error.h"

namespace ember::tok {
namespace {

// The regex HF's ByteLevel pre-tokenizer applies when use_regex is true (GPT-2's).
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string short_dump(const nlohmann::json& j) {
  std::string s = j.dump();
  return s.size() > 300 ? s.substr(0, 300) + "..." : s;
}

}  // namespace

PreTokenizer PreTokenizer::from_json(const nlohmann::json& spec) {
  PreTokenizer p;
  if (spec.is_object() && spec.value("type", "") == "Sequence") {
    const auto& children = spec.at("pretokenizers");
    for (size_t i = 0; i < children.size(); ++i) p.add(children[i], i + 1 == children.size());
  } else {
    p.add(spec, true);
  }
  return p;
}

void PreTokenizer::add(const nlohmann::json& spec, bool last) {
  const std::string type = spec.is_object() ? spec.value("type", "") : "";
  if (type == "Split") {
    const auto& pattern = spec.at("pattern");
    const std::string behavior = spec.value("behavior", "");
    if (behavior != "Isolated" || spec.value("invert", false)) {
      throw Error("pre_tokenizer Split with behavior \"" + behavior + "\"" +
                  (spec.value("invert", false) ? " and invert" : "") +
                  " is not supported (ember supports behavior \"Isolated\", invert false)");
    }
    if (pattern.contains("Regex")) {
      steps_.push_back({SplitRegex(pattern["Regex"].get<std::string>(), false, "pre_tokenizer Split")});
    } else if (pattern.contains("String")) {
      steps_.push_back({SplitRegex(pattern["String"].get<std::string>(), true, "pre_tokenizer Split")});
    } else {
      throw Error("pre_tokenizer Split pattern " + short_dump(pattern) + " has neither Regex nor String");
    }
    if (last) {
      throw Error("pre_tokenizer does not end in ByteLevel; ember supports byte-level BPE only");
    }
  } else if (type == "ByteLevel") {
    if (!last) {
      throw Error("pre_tokenizer has steps after ByteLevel; ember supports ByteLevel as the last step only");
    }
    if (spec.value("add_prefix_space", false)) steps_.push_back({std::nullopt});
    if (spec.value("use_regex", true)) {
      steps_.push_back({SplitRegex(kGpt2Pattern, false, "ByteLevel pre-tokenizer (GPT-2 regex)")});
    }
  } else {
    throw Error("pre_tokenizer " + short_dump(spec) +
                " is not supported (ember supports Split and ByteLevel, optionally in a Sequence)");
  }
}

}  // namespace ember::tok
