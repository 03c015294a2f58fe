#include "tokenizer/post_processor.h"

#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "ember/error.h"

namespace ember::tok {
namespace {

std::vector<int32_t> special_ids(const nlohmann::json& spec, const std::string& name) {
  const auto& specials = spec.value("special_tokens", nlohmann::json::object());
  if (!specials.contains(name) || !specials[name].contains("ids")) {
    throw Error("post_processor template uses special token \"" + name + "\" that its special_tokens does not define");
  }
  return specials[name]["ids"].get<std::vector<int32_t>>();
}

// One template piece: a sequence ($A, {"Sequence": ...}) or a special token name.
struct Piece {
  bool sequence;
  std::string special;
};

std::vector<Piece> template_pieces(const nlohmann::json& single) {
  std::vector<Piece> pieces;
  if (single.is_string()) {  // the "$A <|endoftext|>" shorthand
    std::istringstream words(single.get<std::string>());
    for (std::string w; words >> w;) {
      const size_t colon = w.rfind(':');  // "$A:0", "<|endoftext|>:0": drop the type id
      const std::string name = colon != std::string::npos && colon > 0 ? w.substr(0, colon) : w;
      pieces.push_back({name[0] == '$', name});
    }
    return pieces;
  }
  for (const auto& item : single) {
    if (item.contains("Sequence")) {
      pieces.push_back({true, ""});
    } else if (item.contains("SpecialToken")) {
      pieces.push_back({false, item["SpecialToken"].at("id").get<std::string>()});
    } else {
      throw Error("post_processor template piece " + item.dump() + " is not understood");
    }
  }
  return pieces;
}

void add(PostProcessor& p, const nlohmann::json& spec) {
  if (spec.is_null()) return;
  const std::string type = spec.value("type", "");
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (p.adds_tokens()) throw Error("post_processor has more than one template");
  if (type == "TemplateProcessing") {
    bool after = false;
    for (const Piece& piece : template_pieces(spec.at("single"))) {
      if (piece.sequence) {
        after = true;
        continue;
      }
      const auto ids = special_ids(spec, piece.special);
      (after ? p.suffix : p.prefix).insert((after ? p.suffix : p.prefix).end(), ids.begin(), ids.end());
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    p.prefix.push_back(spec.at("cls").at(1).get<int32_t>());
    p.suffix.push_back(spec.at("sep").at(1).get<int32_t>());
  } else {
    throw Error("post_processor type \"" + type + "\" is not supported");
  }
}

}  // namespace

PostProcessor PostProcessor::from_json(const nlohmann::json& spec) {
  PostProcessor p;
  if (spec.is_object() && spec.value("type", "") == "Sequence") {
    for (const auto& child : spec.at("processors")) add(p, child);
  } else {
    add(p, spec);
  }
  return p;
}

}  // namespace ember::tok
