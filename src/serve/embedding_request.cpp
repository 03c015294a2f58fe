#include "serve/embedding_request.h"

#include <climits>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <utility>

#include "serve/api_error.h"

namespace ember::serve {
namespace {

using json = nlohmann::json;

// The top-level fields a route reads. Other fields are skipped while parsing (never built), as
// OpenAI and TEI ignore fields they don't know. `inputs_key` names the array whose length is
// capped by RequestLimits::max_inputs, counted as it is parsed so that 10^6 inputs stop at the
// (max_inputs + 1)-th instead of being built first.
struct BodySchema {
  const char* inputs_key;
  std::initializer_list<std::string_view> fields;
};

const BodySchema kOpenAiSchema{"input", {"input", "model", "encoding_format", "dimensions", "user"}};
const BodySchema kTeiEmbedSchema{
    "inputs", {"inputs", "normalize", "truncate", "dimensions", "prompt_name", "truncation_direction"}};
const BodySchema kTokenizeSchema{"inputs", {"inputs", "add_special_tokens", "prompt_name"}};

ApiError too_many_inputs(const char* key, size_t max_inputs) {
  return bad_request("'" + std::string(key) + "' has more than " + std::to_string(max_inputs) + " items; at most " +
                         std::to_string(max_inputs) + " inputs are accepted per request (--max-client-batch-size)",
                     key);
}

// At most `max_chars` bytes of `text`, cut on a UTF-8 boundary, "..." marking a cut: values and
// parser messages echoed back may be megabytes long.
std::string shortened(std::string_view text, size_t max_chars) {
  if (text.size() <= max_chars) return std::string(text);
  size_t cut = max_chars;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return std::string(text.substr(0, cut)) + "...";
}

// nlohmann's messages start with "[json.exception.parse_error.101] "; the tag means nothing to a
// client. The "last read" part may quote a whole string token.
std::string json_error_reason(const json::exception& e) {
  std::string_view what = e.what();
  if (const size_t close = what.find("] "); what.starts_with("[json.exception.") && close != what.npos) {
    what.remove_prefix(close + 2);
  }
  return shortened(what, 240);
}

json parse_body(std::string_view body, const RequestLimits& limits, const BodySchema& schema) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    throw bad_request("the request body is empty; expected a JSON object");
  }
  // nlohmann's lexer takes a NUL byte for the end of input, so '{"input":"x"}\0junk' would pass.
  // JSON allows no raw NUL anywhere (inside strings it must be escaped as \u0000).
  if (const size_t nul = body.find('\0'); nul != std::string_view::npos) {
    throw bad_request("the request body is not valid JSON: a raw NUL byte at byte " + std::to_string(nul + 1) +
                      "; inside a string write it as \\u0000");
  }
  // Depth as nlohmann reports it: the number of containers around the event. A container opened
  // at depth d is nesting level d + 1.
  bool root_is_object = false;
  bool in_inputs = false;        // inside the value of schema.inputs_key
  bool inputs_is_array = false;  // ... and that value is an array
  size_t inputs_seen = 0;
  auto count_input = [&] {
    if (++inputs_seen > limits.max_inputs) throw too_many_inputs(schema.inputs_key, limits.max_inputs);
  };
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        // Thrown, not discarded: a discarded container is still walked to its end.
        if (depth >= limits.max_json_depth) {
          throw bad_request("the JSON body is nested deeper than " + std::to_string(limits.max_json_depth) + " levels");
        }
        if (depth == 0) {
          root_is_object = event == json::parse_event_t::object_start;
        } else if (depth == 1 && in_inputs) {
          inputs_is_array = event == json::parse_event_t::array_start;
        } else if (depth == 2 && in_inputs && inputs_is_array) {
          count_input();  // a token sequence (or a wrong-typed element, rejected later)
        }
        return true;
      case json::parse_event_t::key:
        if (depth == 1 && root_is_object) {
          const auto& key = parsed.get_ref<const std::string&>();
          in_inputs = key == schema.inputs_key;
          inputs_is_array = false;
          inputs_seen = 0;
          for (std::string_view field : schema.fields) {
            if (key == field) return true;
          }
          return false;
        }
        return true;
      case json::parse_event_t::value:
        // Numbers directly in the inputs array are one token sequence, not many inputs.
        if (depth == 2 && in_inputs && inputs_is_array && !parsed.is_number()) count_input();
        return true;
      default: return true;
    }
  };
  json parsed;
  try {
    parsed = json::parse(body.begin(), body.end(), callback);
  } catch (const json::parse_error& e) {
    const std::string reason = json_error_reason(e);
    if (reason.find("UTF-8") != std::string::npos) {
      throw bad_request("the request body is not valid UTF-8: " + reason);
    }
    throw bad_request("the request body is not valid JSON: " + reason);
  } catch (const json::exception& e) {
    // out_of_range 406: a number literal too large for a double, e.g. 1e400.
    throw bad_request("the request body is not valid JSON: " + json_error_reason(e));
  }
  if (!parsed.is_object()) {
    throw bad_request(std::string("the request body must be a JSON object, got ") + parsed.type_name());
  }
  return parsed;
}

// The field's value, or nullptr when it is absent or null: every optional field treats null as
// "not given", as OpenAI's and TEI's own schemas (Optional[...], Option<...>) mostly do.
json* find_field(json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

ApiError wrong_type(const std::string& where, const char* expected, const json& value, const char* param) {
  return bad_request("'" + where + "' must be " + expected + ", got " + value.type_name(), param);
}

std::string read_string(json& body, const char* name, std::string fallback = {}) {
  json* value = find_field(body, name);
  if (!value) return fallback;
  if (!value->is_string()) throw wrong_type(name, "a string", *value, name);
  return std::move(value->get_ref<std::string&>());
}

bool read_bool(json& body, const char* name, bool fallback) {
  json* value = find_field(body, name);
  if (!value) return fallback;
  if (!value->is_boolean()) throw wrong_type(name, "a boolean (true or false)", *value, name);
  return value->get<bool>();
}

// 0 when not given; the route checks the range against the model.
int read_dimensions(json& body) {
  json* value = find_field(body, "dimensions");
  if (!value) return 0;
  if (!value->is_number_unsigned() || value->get<uint64_t>() == 0 || value->get<uint64_t>() > INT_MAX) {
    std::string got = value->is_number() ? value->dump() : value->type_name();
    throw bad_request("'dimensions' must be a positive integer, got " + got, "dimensions");
  }
  return static_cast<int>(value->get<uint64_t>());
}

// prompt_name selects a sentence-transformers prompt in TEI; ember has no prompts configured.
void reject_prompt_name(json& body) {
  json* value = find_field(body, "prompt_name");
  if (!value) return;
  if (!value->is_string()) throw wrong_type("prompt_name", "a string or null", *value, "prompt_name");
  if (!value->get_ref<const std::string&>().empty()) {
    throw bad_request(
        "'prompt_name' is not supported: this server has no prompts configured; "
        "prepend the prompt to the input text instead",
        "prompt_name");
  }
}

std::string echoed(std::string_view value) { return "\"" + shortened(value, 64) + "\""; }

std::string element_name(const char* key, size_t i) { return std::string(key) + "[" + std::to_string(i) + "]"; }

int32_t read_token_id(const json& value, const std::string& where, const char* param) {
  if (value.is_number_unsigned()) {
    const uint64_t id = value.get<uint64_t>();
    if (id <= static_cast<uint64_t>(INT32_MAX)) return static_cast<int32_t>(id);
  } else if (!value.is_number()) {
    throw wrong_type(where, "an integer token id", value, param);
  }
  throw bad_request("'" + where + "' must be a token id, an integer in [0, 2147483647], got " + value.dump(), param);
}

std::vector<int32_t> read_token_sequence(const json& array, const std::string& where, const char* param) {
  if (array.empty()) throw bad_request("'" + where + "' is an empty token sequence", param);
  std::vector<int32_t> ids;
  ids.reserve(array.size());
  for (size_t j = 0; j < array.size(); ++j) {
    ids.push_back(read_token_id(array[j], where + "[" + std::to_string(j) + "]", param));
  }
  return ids;
}

std::string take_text(json& value, const std::string& where, const char* param, bool allow_empty) {
  std::string& text = value.get_ref<std::string&>();
  if (text.empty() && !allow_empty) {
    throw bad_request("'" + where + "' is an empty string; every input needs at least one character", param);
  }
  return std::move(text);
}

ApiError mixed_inputs(const char* key) {
  return bad_request(
      "'" + std::string(key) + "' mixes texts and token ids; send either strings or arrays of token ids, not both",
      key);
}

// `texts` only: string | [string]. Otherwise also [int] (one token sequence) | [[int]].
EmbeddingInputs read_inputs(json& body, const char* key, const RequestLimits& limits, bool allow_tokens,
                            bool allow_empty_text) {
  const char* expected = allow_tokens ? "a string, an array of strings, an array of token ids or an array "
                                        "of token-id arrays"
                                      : "a string or an array of strings";
  json* value = find_field(body, key);
  if (!value) throw bad_request("'" + std::string(key) + "' is required", key);
  EmbeddingInputs inputs;
  if (value->is_string()) {
    inputs.texts.push_back(take_text(*value, key, key, allow_empty_text));
    return inputs;
  }
  if (!value->is_array()) throw wrong_type(key, expected, *value, key);
  if (value->empty()) throw bad_request("'" + std::string(key) + "' is an empty array; send at least one input", key);

  json& first = value->front();
  if (allow_tokens && first.is_number()) {
    for (const json& element : *value) {
      if (element.is_string()) throw mixed_inputs(key);
    }
    inputs.is_tokens = true;
    inputs.token_ids.push_back(read_token_sequence(*value, key, key));
    return inputs;
  }
  if (value->size() > limits.max_inputs) throw too_many_inputs(key, limits.max_inputs);
  if (allow_tokens && first.is_array()) {
    inputs.is_tokens = true;
    inputs.token_ids.reserve(value->size());
    for (size_t i = 0; i < value->size(); ++i) {
      json& element = (*value)[i];
      if (element.is_string()) throw mixed_inputs(key);
      if (!element.is_array()) throw wrong_type(element_name(key, i), "an array of token ids", element, key);
      inputs.token_ids.push_back(read_token_sequence(element, element_name(key, i), key));
    }
    return inputs;
  }
  const char* element_expected = allow_tokens ? "a string or an array of token ids" : "a string";
  if (!first.is_string()) throw wrong_type(element_name(key, 0), element_expected, first, key);
  inputs.texts.reserve(value->size());
  for (size_t i = 0; i < value->size(); ++i) {
    json& element = (*value)[i];
    if (!element.is_string()) {
      if (allow_tokens && (element.is_number() || element.is_array())) throw mixed_inputs(key);
      throw wrong_type(element_name(key, i), element_expected, element, key);
    }
    inputs.texts.push_back(take_text(element, element_name(key, i), key, allow_empty_text));
  }
  return inputs;
}

}  // namespace

OpenAiEmbeddingRequest parse_openai_embedding_request(std::string_view body_text, const RequestLimits& limits) {
  json body = parse_body(body_text, limits, kOpenAiSchema);
  OpenAiEmbeddingRequest request;
  // OpenAI rejects empty strings ("'$.input' is invalid"): an empty text has nothing to embed.
  request.input = read_inputs(body, "input", limits, /*allow_tokens=*/true, /*allow_empty_text=*/false);
  request.model = read_string(body, "model");
  const std::string format = read_string(body, "encoding_format", "float");
  if (format == "base64") {
    request.base64 = true;
  } else if (format != "float") {
    throw bad_request("'encoding_format' must be \"float\" or \"base64\", got " + echoed(format), "encoding_format");
  }
  request.dimensions = read_dimensions(body);
  if (find_field(body, "user")) request.user = read_string(body, "user");
  return request;
}

TeiEmbedRequest parse_tei_embed_request(std::string_view body_text, const RequestLimits& limits) {
  json body = parse_body(body_text, limits, kTeiEmbedSchema);
  TeiEmbedRequest request;
  request.inputs = read_inputs(body, "inputs", limits, /*allow_tokens=*/true, /*allow_empty_text=*/false);
  request.normalize = read_bool(body, "normalize", true);
  if (find_field(body, "truncate")) request.truncate = read_bool(body, "truncate", false);
  request.dimensions = read_dimensions(body);
  reject_prompt_name(body);
  const std::string direction = read_string(body, "truncation_direction", "Right");
  if (direction == "Left") {
    throw bad_request("'truncation_direction' \"Left\" is not supported; this server truncates on the right",
                      "truncation_direction");
  }
  if (direction != "Right") {
    throw bad_request("'truncation_direction' must be \"Right\" or \"Left\", got " + echoed(direction),
                      "truncation_direction");
  }
  return request;
}

TokenizeRequest parse_tokenize_request(std::string_view body_text, const RequestLimits& limits) {
  json body = parse_body(body_text, limits, kTokenizeSchema);
  TokenizeRequest request;
  // Tokenizing "" is well defined (only the special tokens, if any), unlike embedding it.
  request.texts =
      std::move(read_inputs(body, "inputs", limits, /*allow_tokens=*/false, /*allow_empty_text=*/true).texts);
  request.add_special_tokens = read_bool(body, "add_special_tokens", true);
  reject_prompt_name(body);
  return request;
}

}  // namespace ember::serve
