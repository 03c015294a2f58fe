// The serve protocol layer: request bodies accepted and rejected (with the field at fault), and the
// response bodies written, checked by parsing them back.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "serve/api_error.h"
#include "serve/embedding_request.h"

using namespace ember::serve;
using json = nlohmann::json;

namespace {

const RequestLimits kLimits;

// The ApiError `f` throws; records a failure when it throws none.
ApiError api_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "expected an ApiError";
  return ApiError(0, "none thrown");
}

ApiError openai_error(const std::string& body, const RequestLimits& limits = kLimits) {
  return api_error_of([&] { parse_openai_embedding_request(body, limits); });
}
ApiError tei_error(const std::string& body, const RequestLimits& limits = kLimits) {
  return api_error_of([&] { parse_tei_embed_request(body, limits); });
}
ApiError tokenize_error(const std::string& body, const RequestLimits& limits = kLimits) {
  return api_error_of([&] { parse_tokenize_request(body, limits); });
}

// Every body-level failure is a 400 from all three parsers; returns the OpenAI one's error.
ApiError body_error(const std::string& body) {
  const ApiError tei = tei_error(body);
  const ApiError tokenize = tokenize_error(body);
  EXPECT_EQ(tei.status, 400);
  EXPECT_EQ(tokenize.status, 400);
  EXPECT_STREQ(tei.what(), tokenize.what());
  return openai_error(body);
}

#define EXPECT_REJECTED(error, expected_param, message_part)                              \
  do {                                                                                    \
    const ApiError e_ = (error);                                                          \
    EXPECT_EQ(e_.status, 400);                                                            \
    EXPECT_EQ(e_.type, "invalid_request_error");                                          \
    EXPECT_EQ(e_.param, expected_param);                                                  \
    EXPECT_NE(std::string(e_.what()).find(message_part), std::string::npos) << e_.what(); \
  } while (0)

std::vector<float> base64_decode_floats(const std::string& text) {
  auto value = [](char c) -> int {
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char* p = std::strchr(alphabet, c);
    return c != '\0' && p ? static_cast<int>(p - alphabet) : -1;
  };
  EXPECT_EQ(text.size() % 4, 0u);
  std::vector<unsigned char> bytes;
  for (size_t i = 0; i + 4 <= text.size(); i += 4) {
    uint32_t group = 0;
    int pad = 0;
    for (size_t k = 0; k < 4; ++k) {
      const char c = text[i + k];
      if (c == '=') {
        ++pad;
        group <<= 6;
        continue;
      }
      const int v = value(c);
      EXPECT_GE(v, 0) << "not in the standard alphabet: " << c;
      group = group << 6 | static_cast<uint32_t>(v);
    }
    bytes.push_back(static_cast<unsigned char>(group >> 16));
    if (pad < 2) bytes.push_back(static_cast<unsigned char>(group >> 8));
    if (pad < 1) bytes.push_back(static_cast<unsigned char>(group));
  }
  EXPECT_EQ(bytes.size() % 4, 0u);
  std::vector<float> floats(bytes.size() / 4);
  for (size_t i = 0; i < floats.size(); ++i) {
    const uint32_t bits = uint32_t{bytes[4 * i]} | uint32_t{bytes[4 * i + 1]} << 8 | uint32_t{bytes[4 * i + 2]} << 16 |
                          uint32_t{bytes[4 * i + 3]} << 24;
    floats[i] = std::bit_cast<float>(bits);
  }
  return floats;
}

// Finite floats of every kind: random bit patterns (all exponents), subnormals, extremes, zeros.
std::vector<float> awkward_floats(size_t count) {
  std::vector<float> values = {0.0f,
                               -0.0f,
                               1.0f,
                               -1.0f,
                               0.1f,
                               1e-5f,
                               123456789.0f,
                               std::numeric_limits<float>::max(),
                               std::numeric_limits<float>::lowest(),
                               std::numeric_limits<float>::min(),
                               std::numeric_limits<float>::denorm_min(),
                               -std::numeric_limits<float>::denorm_min(),
                               std::nextafter(1.0f, 2.0f),
                               std::nextafter(std::numeric_limits<float>::min(), 0.0f)};
  std::mt19937 rng(7);
  while (values.size() < count) {
    const float v = std::bit_cast<float>(static_cast<uint32_t>(rng()));
    if (std::isfinite(v)) values.push_back(v);
  }
  return values;
}

// --- accepted forms --------------------------------------------------------------------------

TEST(OpenAiRequest, AcceptsAStringWithDefaults) {
  const auto r = parse_openai_embedding_request(R"({"input": "hello"})", kLimits);
  EXPECT_FALSE(r.input.is_tokens);
  EXPECT_EQ(r.input.texts, std::vector<std::string>{"hello"});
  EXPECT_EQ(r.input.size(), 1u);
  EXPECT_EQ(r.model, "");
  EXPECT_FALSE(r.base64);
  EXPECT_EQ(r.dimensions, 0);
  EXPECT_FALSE(r.user.has_value());
}

TEST(OpenAiRequest, AcceptsEveryFieldAndIgnoresUnknownOnes) {
  const auto r = parse_openai_embedding_request(
      R"({"model": "Qwen/Qwen3-Embedding-0.6B", "input": ["a", "b\u00e9\ud83d\ude00", "c"],
          "encoding_format": "base64", "dimensions": 256, "user": "u-1",
          "extra": {"nested": [1, [2, [3]]], "x": null}, "truncate_prompt_tokens": 5})",
      kLimits);
  EXPECT_EQ(r.input.texts, (std::vector<std::string>{"a", "b\xC3\xA9\xF0\x9F\x98\x80", "c"}));
  EXPECT_EQ(r.model, "Qwen/Qwen3-Embedding-0.6B");
  EXPECT_TRUE(r.base64);
  EXPECT_EQ(r.dimensions, 256);
  EXPECT_EQ(r.user, "u-1");
}

TEST(OpenAiRequest, NullMeansNotGivenForOptionalFields) {
  const auto r = parse_openai_embedding_request(
      R"({"input": "x", "model": null, "encoding_format": null, "dimensions": null, "user": null})", kLimits);
  EXPECT_EQ(r.model, "");
  EXPECT_FALSE(r.base64);
  EXPECT_EQ(r.dimensions, 0);
  EXPECT_FALSE(r.user.has_value());
  EXPECT_FALSE(parse_openai_embedding_request(R"({"input":"x","encoding_format":"float"})", kLimits).base64);
}

TEST(OpenAiRequest, AcceptsTokenIds) {
  const auto one = parse_openai_embedding_request(R"({"input": [0, 5, 2147483647]})", kLimits);
  ASSERT_TRUE(one.input.is_tokens);
  EXPECT_EQ(one.input.token_ids, (std::vector<std::vector<int32_t>>{{0, 5, 2147483647}}));
  EXPECT_EQ(one.input.size(), 1u);

  const auto many = parse_openai_embedding_request(R"({"input": [[1, 2], [3], [4, 5, 6]]})", kLimits);
  ASSERT_TRUE(many.input.is_tokens);
  EXPECT_EQ(many.input.token_ids, (std::vector<std::vector<int32_t>>{{1, 2}, {3}, {4, 5, 6}}));
  EXPECT_TRUE(many.input.texts.empty());
}

TEST(OpenAiRequest, ALongTokenSequenceIsOneInputNotMany) {
  std::string body = R"({"input": [)";
  for (int i = 0; i < 10000; ++i) body += (i ? ",7" : "7");
  body += "]}";
  const auto r = parse_openai_embedding_request(body, kLimits);
  ASSERT_EQ(r.input.token_ids.size(), 1u);
  EXPECT_EQ(r.input.token_ids[0].size(), 10000u);
}

TEST(OpenAiRequest, AcceptsExactlyMaxInputs) {
  RequestLimits limits;
  limits.max_inputs = 3;
  EXPECT_EQ(parse_openai_embedding_request(R"({"input": ["a","b","c"]})", limits).input.size(), 3u);
  EXPECT_EQ(parse_openai_embedding_request(R"({"input": [[1],[2],[3]]})", limits).input.size(), 3u);
}

TEST(OpenAiRequest, LastDuplicateKeyWinsAndOnlyItCountsTowardTheLimit) {
  RequestLimits limits;
  limits.max_inputs = 2;
  const auto r = parse_openai_embedding_request(R"({"input": ["a","b"], "input": ["c","d"]})", limits);
  EXPECT_EQ(r.input.texts, (std::vector<std::string>{"c", "d"}));
}

TEST(OpenAiRequest, AcceptsNestingUpToTheDepthLimit) {
  RequestLimits limits;
  limits.max_json_depth = 8;
  // The root object is level 1, "extra"'s arrays are levels 2..8.
  EXPECT_NO_THROW(parse_openai_embedding_request(R"({"input":"x","extra":[[[[[[[]]]]]]]})", limits));
  EXPECT_REJECTED(openai_error(R"({"input":"x","extra":[[[[[[[[]]]]]]]]})", limits), "", "deeper than 8 levels");
}

TEST(OpenAiRequest, AcceptsAByteOrderMarkAndWhitespace) {
  EXPECT_EQ(parse_openai_embedding_request("\xEF\xBB\xBF \n{\"input\":\"x\"}\r\n\t ", kLimits).input.texts[0], "x");
}

TEST(TeiEmbedRequest, AcceptsEveryFormWithDefaults) {
  const auto single = parse_tei_embed_request(R"({"inputs": "What is Deep Learning?"})", kLimits);
  EXPECT_EQ(single.inputs.texts, std::vector<std::string>{"What is Deep Learning?"});
  EXPECT_TRUE(single.normalize);
  EXPECT_FALSE(single.truncate.has_value());
  EXPECT_EQ(single.dimensions, 0);
  EXPECT_EQ(single.prompt_name, "");

  EXPECT_EQ(parse_tei_embed_request(R"({"inputs": ["a", "b"]})", kLimits).inputs.texts.size(), 2u);
  EXPECT_EQ(parse_tei_embed_request(R"({"inputs": [1, 2]})", kLimits).inputs.token_ids,
            (std::vector<std::vector<int32_t>>{{1, 2}}));
  EXPECT_EQ(parse_tei_embed_request(R"({"inputs": [[1], [2, 3]]})", kLimits).inputs.token_ids,
            (std::vector<std::vector<int32_t>>{{1}, {2, 3}}));
}

TEST(TeiEmbedRequest, AcceptsEveryOption) {
  const auto r = parse_tei_embed_request(
      R"({"inputs": "x", "normalize": false, "truncate": true, "dimensions": 64, "prompt_name": null,
          "truncation_direction": "Right", "unknown": [1]})",
      kLimits);
  EXPECT_FALSE(r.normalize);
  EXPECT_EQ(r.truncate, std::optional<bool>(true));
  EXPECT_EQ(r.dimensions, 64);
  EXPECT_EQ(parse_tei_embed_request(R"({"inputs":"x","truncate":false})", kLimits).truncate,
            std::optional<bool>(false));
  EXPECT_FALSE(parse_tei_embed_request(R"({"inputs":"x","truncate":null})", kLimits).truncate.has_value());
  EXPECT_EQ(parse_tei_embed_request(R"({"inputs":"x","prompt_name":""})", kLimits).prompt_name, "");
}

TEST(TokenizeRequest, AcceptsStringsAndTheSpecialTokenFlag) {
  const auto one = parse_tokenize_request(R"({"inputs": "hello world"})", kLimits);
  EXPECT_EQ(one.texts, std::vector<std::string>{"hello world"});
  EXPECT_TRUE(one.add_special_tokens);
  const auto many = parse_tokenize_request(R"({"inputs": ["a", ""], "add_special_tokens": false})", kLimits);
  EXPECT_EQ(many.texts, (std::vector<std::string>{"a", ""}));
  EXPECT_FALSE(many.add_special_tokens);
  EXPECT_EQ(parse_tokenize_request(R"({"inputs": ""})", kLimits).texts, std::vector<std::string>{""});
}

TEST(AllRequests, KeepNulCharactersInTexts) {
  const auto r = parse_openai_embedding_request(R"({"input": "a\u0000b"})", kLimits);
  EXPECT_EQ(r.input.texts[0], std::string("a\0b", 3));
}

// --- rejected fields ---------------------------------------------------------------------------

TEST(OpenAiRequest, RejectsMissingOrWrongTypedInput) {
  EXPECT_REJECTED(openai_error(R"({"model": "m"})"), "input", "'input' is required");
  EXPECT_REJECTED(openai_error(R"({"input": null})"), "input", "'input' is required");
  EXPECT_REJECTED(openai_error(R"({"input": 5})"), "input", "got number");
  EXPECT_REJECTED(openai_error(R"({"input": true})"), "input", "got boolean");
  EXPECT_REJECTED(openai_error(R"({"input": {"text": "a"}})"), "input", "got object");
  EXPECT_REJECTED(openai_error(R"({"input": [null]})"), "input", "'input[0]' must be a string");
  EXPECT_REJECTED(openai_error(R"({"input": ["a", {"b": 1}]})"), "input", "'input[1]'");
  EXPECT_REJECTED(openai_error(R"({"input": [true]})"), "input", "got boolean");
}

TEST(OpenAiRequest, RejectsEmptyInputs) {
  EXPECT_REJECTED(openai_error(R"({"input": ""})"), "input", "empty string");
  EXPECT_REJECTED(openai_error(R"({"input": ["a", ""]})"), "input", "'input[1]' is an empty string");
  EXPECT_REJECTED(openai_error(R"({"input": []})"), "input", "empty array");
  EXPECT_REJECTED(openai_error(R"({"input": [[]]})"), "input", "'input[0]' is an empty token sequence");
  EXPECT_REJECTED(openai_error(R"({"input": [[1], []]})"), "input", "'input[1]' is an empty token sequence");
}

TEST(OpenAiRequest, RejectsMixedTextsAndTokens) {
  EXPECT_REJECTED(openai_error(R"({"input": ["a", 1]})"), "input", "mixes texts and token ids");
  EXPECT_REJECTED(openai_error(R"({"input": ["a", [1]]})"), "input", "mixes texts and token ids");
  EXPECT_REJECTED(openai_error(R"({"input": [[1], "a"]})"), "input", "mixes texts and token ids");
  EXPECT_REJECTED(openai_error(R"({"input": [1, "a"]})"), "input", "mixes texts and token ids");
  EXPECT_REJECTED(openai_error(R"({"input": [1, [2]]})"), "input", "'input[1]'");
  EXPECT_REJECTED(openai_error(R"({"input": [[1], 2]})"), "input", "'input[1]' must be an array of token ids");
  EXPECT_REJECTED(openai_error(R"({"input": [[1, "a"]]})"), "input", "'input[0][1]' must be an integer token id");
  EXPECT_REJECTED(openai_error(R"({"input": [["a"]]})"), "input", "'input[0][0]'");
  EXPECT_REJECTED(openai_error(R"({"input": [[[1]]]})"), "input", "'input[0][0]'");
}

TEST(OpenAiRequest, RejectsTokenIdsOutsideInt31) {
  EXPECT_REJECTED(openai_error(R"({"input": [-1]})"), "input", "[0, 2147483647], got -1");
  EXPECT_REJECTED(openai_error(R"({"input": [2147483648]})"), "input", "got 2147483648");
  EXPECT_REJECTED(openai_error(R"({"input": [[1, 4294967296]]})"), "input", "'input[0][1]'");
  EXPECT_REJECTED(openai_error(R"({"input": [1.5]})"), "input", "got 1.5");
  EXPECT_REJECTED(openai_error(R"({"input": [1.0]})"), "input", "must be a token id");
  EXPECT_REJECTED(openai_error(R"({"input": [1e3]})"), "input", "must be a token id");
  EXPECT_REJECTED(openai_error(R"({"input": [-9223372036854775808]})"), "input", "must be a token id");
  EXPECT_REJECTED(openai_error(R"({"input": [18446744073709551615]})"), "input", "must be a token id");
  // Past uint64: nlohmann reads it as a double.
  EXPECT_REJECTED(openai_error(R"({"input": [99999999999999999999999999999]})"), "input", "must be a token id");
}

TEST(OpenAiRequest, RejectsBadOptions) {
  EXPECT_REJECTED(openai_error(R"({"input":"x","encoding_format":"FLOAT"})"), "encoding_format",
                  R"(must be "float" or "base64", got "FLOAT")");
  EXPECT_REJECTED(openai_error(R"({"input":"x","encoding_format":"int8"})"), "encoding_format", "int8");
  EXPECT_REJECTED(openai_error(R"({"input":"x","encoding_format":1})"), "encoding_format", "must be a string");
  EXPECT_REJECTED(openai_error(R"({"input":"x","dimensions":0})"), "dimensions", "positive integer, got 0");
  EXPECT_REJECTED(openai_error(R"({"input":"x","dimensions":-8})"), "dimensions", "got -8");
  EXPECT_REJECTED(openai_error(R"({"input":"x","dimensions":8.5})"), "dimensions", "got 8.5");
  EXPECT_REJECTED(openai_error(R"({"input":"x","dimensions":"8"})"), "dimensions", "got string");
  EXPECT_REJECTED(openai_error(R"({"input":"x","dimensions":2147483648})"), "dimensions", "positive integer");
  EXPECT_REJECTED(openai_error(R"({"input":"x","model":7})"), "model", "'model' must be a string, got number");
  EXPECT_REJECTED(openai_error(R"({"input":"x","user":["u"]})"), "user", "'user' must be a string, got array");
}

TEST(OpenAiRequest, EchoesAHugeBadValueShortened) {
  const std::string big(1 << 20, 'z');
  const ApiError e = openai_error(R"({"input":"x","encoding_format":")" + big + "\"}");
  EXPECT_EQ(e.param, "encoding_format");
  EXPECT_LT(std::string(e.what()).size(), 200u);
}

TEST(OpenAiRequest, RejectsMoreThanMaxInputsWhileParsing) {
  // 10^6 inputs: the error names the limit; parsing stops at the 2049th.
  std::string texts = R"({"input": [)";
  std::string tokens = R"({"input": [)";
  for (int i = 0; i < 1000000; ++i) {
    texts += i ? ",\"a\"" : "\"a\"";
    tokens += i ? ",[1]" : "[1]";
  }
  texts += "]}";
  tokens += "]}";
  EXPECT_REJECTED(openai_error(texts), "input", "has more than 2048 items");
  EXPECT_REJECTED(openai_error(texts), "input", "--max-client-batch-size");
  EXPECT_REJECTED(openai_error(tokens), "input", "has more than 2048 items");
  EXPECT_REJECTED(tei_error(R"({"inputs": [)" + texts.substr(11)), "inputs", "has more than 2048 items");

  RequestLimits limits;
  limits.max_inputs = 2;
  EXPECT_REJECTED(openai_error(R"({"input": ["a","b","c"]})", limits), "input", "at most 2 inputs");
  EXPECT_REJECTED(openai_error(R"({"input": [[1],[2],[3]]})", limits), "input", "at most 2 inputs");
  EXPECT_REJECTED(openai_error(R"({"input": ["a",null,{}]})", limits), "input", "at most 2 inputs");
  EXPECT_REJECTED(tokenize_error(R"({"inputs": ["a","b","c"]})", limits), "inputs", "at most 2 inputs");
  // Other fields' arrays don't count.
  EXPECT_NO_THROW(parse_openai_embedding_request(R"({"extra": ["a","b","c"], "input": ["a"]})", limits));
}

TEST(TeiEmbedRequest, RejectsBadFields) {
  EXPECT_REJECTED(tei_error(R"({"input": "x"})"), "inputs", "'inputs' is required");
  EXPECT_REJECTED(tei_error(R"({"inputs": []})"), "inputs", "empty array");
  EXPECT_REJECTED(tei_error(R"({"inputs": ""})"), "inputs", "empty string");
  EXPECT_REJECTED(tei_error(R"({"inputs": [[]]})"), "inputs", "empty token sequence");
  EXPECT_REJECTED(tei_error(R"({"inputs": ["a", [1]]})"), "inputs", "mixes texts and token ids");
  EXPECT_REJECTED(tei_error(R"({"inputs": [-3]})"), "inputs", "got -3");
  EXPECT_REJECTED(tei_error(R"({"inputs":"x","normalize":"yes"})"), "normalize", "must be a boolean");
  EXPECT_REJECTED(tei_error(R"({"inputs":"x","normalize":1})"), "normalize", "got number");
  EXPECT_REJECTED(tei_error(R"({"inputs":"x","truncate":1})"), "truncate", "must be a boolean");
  EXPECT_REJECTED(tei_error(R"({"inputs":"x","dimensions":0})"), "dimensions", "positive integer");
  EXPECT_REJECTED(tei_error(R"({"inputs":"x","prompt_name":"query"})"), "prompt_name", "not supported");
  EXPECT_REJECTED(tei_error(R"({"inputs":"x","prompt_name":3})"), "prompt_name", "must be a string or null");
  EXPECT_REJECTED(tei_error(R"({"inputs":"x","truncation_direction":"Left"})"), "truncation_direction",
                  "not supported");
  EXPECT_REJECTED(tei_error(R"({"inputs":"x","truncation_direction":"right"})"), "truncation_direction",
                  R"(must be "Right" or "Left", got "right")");
  EXPECT_REJECTED(tei_error(R"({"inputs":"x","truncation_direction":false})"), "truncation_direction",
                  "must be a string");
}

TEST(TokenizeRequest, RejectsBadFields) {
  EXPECT_REJECTED(tokenize_error(R"({})"), "inputs", "'inputs' is required");
  EXPECT_REJECTED(tokenize_error(R"({"inputs": []})"), "inputs", "empty array");
  EXPECT_REJECTED(tokenize_error(R"({"inputs": [1, 2]})"), "inputs", "'inputs[0]' must be a string, got number");
  EXPECT_REJECTED(tokenize_error(R"({"inputs": [[1]]})"), "inputs", "must be a string, got array");
  EXPECT_REJECTED(tokenize_error(R"({"inputs": 7})"), "inputs", "must be a string or an array of strings");
  EXPECT_REJECTED(tokenize_error(R"({"inputs":"x","add_special_tokens":"no"})"), "add_special_tokens",
                  "must be a boolean");
  EXPECT_REJECTED(tokenize_error(R"({"inputs":"x","prompt_name":"q"})"), "prompt_name", "not supported");
}

// --- rejected bodies ---------------------------------------------------------------------------

TEST(AllRequests, RejectEmptyBodies) {
  EXPECT_REJECTED(body_error(""), "", "request body is empty");
  EXPECT_REJECTED(body_error(" \r\n\t"), "", "request body is empty");
}

TEST(AllRequests, RejectBodiesThatAreNotObjects) {
  EXPECT_REJECTED(body_error(R"(["input"])"), "", "must be a JSON object, got array");
  EXPECT_REJECTED(body_error(R"("input")"), "", "got string");
  EXPECT_REJECTED(body_error("42"), "", "got number");
  EXPECT_REJECTED(body_error("null"), "", "got null");
}

TEST(AllRequests, RejectInvalidJson) {
  EXPECT_REJECTED(body_error(R"({"input": "x")"), "", "not valid JSON");
  EXPECT_REJECTED(body_error(R"({"input": "x"} trailing)"), "", "not valid JSON");
  EXPECT_REJECTED(body_error(R"({"input": "x"}{})"), "", "not valid JSON");
  EXPECT_REJECTED(body_error(R"({input: "x"})"), "", "not valid JSON");
  EXPECT_REJECTED(body_error(R"({"input": 'x'})"), "", "not valid JSON");
  EXPECT_REJECTED(body_error(R"({"input": "x",})"), "", "not valid JSON");
  EXPECT_REJECTED(body_error("{\"input\": \"a\nb\"}"), "", "not valid JSON");  // raw control character
  EXPECT_REJECTED(body_error(R"({"input": "x"} // comment)"), "", "not valid JSON");
  EXPECT_REJECTED(body_error(std::string("{\"input\": \"x\"}\0", 15)), "", "a raw NUL byte");
  EXPECT_REJECTED(body_error(std::string("{\"input\": \"x\0\"}", 15)), "", "a raw NUL byte");
}

TEST(AllRequests, RejectNanAndInfinityLiterals) {
  EXPECT_REJECTED(body_error(R"({"input": [NaN]})"), "", "not valid JSON");
  EXPECT_REJECTED(body_error(R"({"input": [Infinity]})"), "", "not valid JSON");
  EXPECT_REJECTED(body_error(R"({"input": [-Infinity]})"), "", "not valid JSON");
  EXPECT_REJECTED(body_error(R"({"input":"x","dimensions":nan})"), "", "not valid JSON");
}

TEST(AllRequests, RejectNumbersTooLargeForADouble) {
  EXPECT_REJECTED(body_error(R"({"input": [1e400]})"), "", "1e400");
  EXPECT_REJECTED(body_error(R"({"input":"x","dimensions":-1e999})"), "", "not valid JSON");
  EXPECT_REJECTED(openai_error(R"({"input":"x","dimensions":1e300})"), "dimensions", "positive integer");
}

TEST(AllRequests, RejectInvalidUtf8) {
  EXPECT_REJECTED(body_error("{\"input\": \"\xFF\"}"), "", "not valid UTF-8");
  EXPECT_REJECTED(body_error("{\"input\": \"\xC3\"}"), "", "not valid UTF-8");              // truncated
  EXPECT_REJECTED(body_error("{\"input\": \"\xC0\xAF\"}"), "", "not valid UTF-8");          // overlong
  EXPECT_REJECTED(body_error("{\"input\": \"\xED\xA0\x80\"}"), "", "not valid UTF-8");      // surrogate
  EXPECT_REJECTED(body_error("{\"input\": \"\xF4\x90\x80\x80\"}"), "", "not valid UTF-8");  // > U+10FFFF
  EXPECT_REJECTED(body_error("{\"\xFF\": 1, \"input\": \"x\"}"), "", "not valid UTF-8");    // in an unknown key
  EXPECT_REJECTED(body_error("{\"input\": \"x\"}\xFF"), "", "not valid JSON");
  EXPECT_REJECTED(body_error(R"({"input": "\ud800"})"), "", "not valid JSON");  // lone surrogate escape
  EXPECT_REJECTED(body_error(R"({"input": "\udc00\ud800"})"), "", "not valid JSON");
}

TEST(AllRequests, RejectADepthBombBeforeBuildingIt) {
  const std::string arrays(1000000, '[');
  EXPECT_REJECTED(body_error(arrays), "", "nested deeper than 64 levels");
  EXPECT_REJECTED(body_error(R"({"input": "x", "extra": )" + arrays), "", "nested deeper than 64 levels");
  std::string objects;
  for (int i = 0; i < 200000; ++i) objects += R"({"a":)";
  EXPECT_REJECTED(body_error(objects), "", "nested deeper than 64 levels");
  EXPECT_REJECTED(body_error(R"({"input": )" + arrays), "", "nested deeper than 64 levels");
}

TEST(AllRequests, RejectAHugeBrokenStringWithAShortMessage) {
  const std::string big = "{\"input\": \"" + std::string(1 << 20, 'a') + "\xFF\"}";
  const ApiError e = openai_error(big);
  EXPECT_LT(std::string(e.what()).size(), 400u);
  EXPECT_NE(error_body(e).find("not valid UTF-8"), std::string::npos);
}

// --- responses ---------------------------------------------------------------------------------

TEST(OpenAiResponse, HasOpenAisExactShape) {
  const std::string body = write_openai_embeddings({{0.5f, -1.0f}, {0.25f, 0.0f}}, false, "qwen3", 7);
  EXPECT_EQ(body, R"({"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-1]},)"
                  R"({"object":"embedding","index":1,"embedding":[0.25,0]}],"model":"qwen3",)"
                  R"("usage":{"prompt_tokens":7,"total_tokens":7}})");
  EXPECT_EQ(write_openai_embeddings({}, false, "m", 0),
            R"({"object":"list","data":[],"model":"m","usage":{"prompt_tokens":0,"total_tokens":0}})");
}

TEST(OpenAiResponse, EscapesTheModelName) {
  const json body = json::parse(write_openai_embeddings({{1.0f}}, false, "a\"b\\c\n\xFF", 1));
  EXPECT_EQ(body["model"], "a\"b\\c\n\xEF\xBF\xBD");
}

TEST(OpenAiResponse, FloatsRoundTripBitForBit) {
  const std::vector<float> values = awkward_floats(100000);
  const std::string text = write_openai_embeddings({values}, false, "m", 1);
  ASSERT_EQ(json::parse(text)["data"][0]["embedding"].size(), values.size());
  // Read the written text back as float32 directly (strtof) and through a double, as Python
  // clients do.
  const size_t start = text.find(R"("embedding":[)");
  ASSERT_NE(start, std::string::npos);
  const char* p = text.c_str() + start + 13;
  for (size_t i = 0; i < values.size(); ++i) {
    char* end = nullptr;
    const float direct = std::strtof(p, &end);
    const float via_double = static_cast<float>(std::strtod(p, nullptr));
    ASSERT_EQ(std::bit_cast<uint32_t>(direct), std::bit_cast<uint32_t>(values[i])) << i << ": " << values[i];
    ASSERT_EQ(std::bit_cast<uint32_t>(via_double), std::bit_cast<uint32_t>(values[i])) << i;
    ASSERT_TRUE(*end == ',' || *end == ']') << i;
    p = end + 1;
  }
}

TEST(OpenAiResponse, WritesShortestForms) {
  const std::string body = write_tei_embeddings({{0.1f, 1e-5f, 3.0f, -0.0f, 1e30f}});
  EXPECT_EQ(body, "[[0.1,1e-05,3,-0,1e+30]]");
}

TEST(OpenAiResponse, NonFiniteValuesBecomeNull) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::string body = write_tei_embeddings({{std::nanf(""), inf, -inf, 1.0f}});
  EXPECT_EQ(body, "[[null,null,null,1]]");
  EXPECT_TRUE(json::accept(write_openai_embeddings({{inf}}, false, "m", 1)));
}

TEST(OpenAiResponse, Base64IsLittleEndianFloat32BitForBit) {
  const std::vector<float> values = awkward_floats(4099);  // not a multiple of 3 bytes' groups
  for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{3}, size_t{4099}}) {
    const std::vector<float> v(values.begin(), values.begin() + static_cast<long>(n));
    const json body = json::parse(write_openai_embeddings({v, {1.0f}}, true, "m", 3));
    ASSERT_TRUE(body["data"][0]["embedding"].is_string());
    const std::vector<float> decoded = base64_decode_floats(body["data"][0]["embedding"].get<std::string>());
    ASSERT_EQ(decoded.size(), v.size());
    EXPECT_EQ(std::memcmp(decoded.data(), v.data(), v.size() * sizeof(float)), 0) << n;
    EXPECT_EQ(body["data"][1]["embedding"], "AACAPw==");  // 1.0f = 00 00 80 3F
    EXPECT_EQ(body["data"][1]["index"], 1);
  }
}

TEST(Base64, MatchesRfc4648Vectors) {
  const std::pair<const char*, const char*> cases[] = {{"", ""},
                                                       {"f", "Zg=="},
                                                       {"fo", "Zm8="},
                                                       {"foo", "Zm9v"},
                                                       {"foob", "Zm9vYg=="},
                                                       {"fooba", "Zm9vYmE="},
                                                       {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, encoded] : cases) EXPECT_EQ(base64_encode(plain, std::strlen(plain)), encoded);
  const unsigned char high[] = {0xFB, 0xFF, 0xBF};
  EXPECT_EQ(base64_encode(high, 3), "+/+/");
}

TEST(TeiResponse, IsAnArrayOfArrays) {
  EXPECT_EQ(write_tei_embeddings({{1.5f, 2.0f}, {-3.25f}}), "[[1.5,2],[-3.25]]");
  EXPECT_EQ(write_tei_embeddings({}), "[]");
  EXPECT_EQ(write_tei_embeddings({{}}), "[[]]");
}

TEST(TokenizeResponse, HasTeisShapeAndEscapesAnyBytes) {
  const std::vector<std::vector<TokenView>> tokens = {{{151643, "<|endoftext|>", true}, {9707, "Hello", false}},
                                                      {{1, "q\"\\/\n\t\x01", false},
                                                       {2, "\xE4\xB8\xAD", false},
                                                       {3, "\xE4\xB8", false},
                                                       {4, std::string("\0", 1), false}},
                                                      {}};
  const std::string body = write_tokenize_response(tokens);
  EXPECT_TRUE(body.starts_with(R"([[{"id":151643,"text":"<|endoftext|>","special":true,"start":null,"stop":null},)"
                               R"({"id":9707,"text":"Hello","special":false,"start":null,"stop":null}],)"))
      << body;
  const json parsed = json::parse(body);
  ASSERT_EQ(parsed.size(), 3u);
  EXPECT_EQ(parsed[1][0]["text"], "q\"\\/\n\t\x01");
  EXPECT_EQ(parsed[1][1]["text"], "\xE4\xB8\xAD");
  EXPECT_EQ(parsed[1][2]["text"], "\xEF\xBF\xBD");  // a partial UTF-8 sequence becomes U+FFFD
  EXPECT_EQ(parsed[1][3]["text"], std::string("\0", 1));
  EXPECT_TRUE(parsed[1][3]["start"].is_null());
  EXPECT_TRUE(parsed[2].is_array() && parsed[2].empty());
}

TEST(Responses, AFullBatchIsValidJson) {
  // 2048 x 4096: the size the writers are built for.
  std::vector<std::vector<float>> batch(2048, std::vector<float>(4096));
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (auto& row : batch) {
    for (float& v : row) v = normal(rng);
  }
  const std::string floats = write_openai_embeddings(batch, false, "m", 123);
  const json parsed = json::parse(floats);
  ASSERT_EQ(parsed["data"].size(), 2048u);
  EXPECT_EQ(parsed["data"][2047]["embedding"].size(), 4096u);
  EXPECT_EQ(parsed["data"][2047]["embedding"][4095].get<float>(), batch[2047][4095]);
  const std::string b64 = write_openai_embeddings(batch, true, "m", 123);
  EXPECT_EQ(json::parse(b64)["data"][5]["embedding"].get<std::string>().size(), (4096u * 4 + 2) / 3 * 4);
}

}  // namespace

#include "serve/http_framing.h"

namespace {

namespace bhttp = boost::beast::http;

// A parsed head, as the server sees it once Beast has read it.
std::optional<std::string> framing_of(const std::string& head) {
  bhttp::request_parser<bhttp::string_body> parser;
  boost::beast::error_code ec;
  parser.eager(false);
  parser.put(boost::asio::buffer(head), ec);
  if (!parser.is_header_done()) return "unparsed: " + ec.message();
  return ember::serve::framing_error(parser.get().base(), parser.chunked());
}

TEST(HttpFraming, RefusesWhatLeavesTheBodyLengthUnknown) {
  EXPECT_EQ(framing_of("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"), std::nullopt);
  EXPECT_EQ(framing_of("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"), std::nullopt);
  EXPECT_EQ(framing_of("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), std::nullopt);
  EXPECT_EQ(framing_of("GET / HTTP/1.0\r\n\r\n"), std::nullopt);
  for (const char* te : {"gzip", "identity", "xchunked", "chunked, gzip", "chunkedx"}) {
    SCOPED_TRACE(te);
    const auto why = framing_of(std::string("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ") + te + "\r\n\r\n");
    ASSERT_TRUE(why.has_value());
    EXPECT_NE(why->find("does not end in chunked"), std::string::npos) << *why;
  }
  // Beast itself refuses Transfer-Encoding with Content-Length while parsing; either way it is a 400.
  EXPECT_TRUE(framing_of("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"));
  EXPECT_NE(framing_of("GET / HTTP/1.1\r\n\r\n").value_or("").find("Host"), std::string::npos);
  EXPECT_NE(framing_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").value_or("").find("more than one Host"),
            std::string::npos);
}

TEST(HttpFraming, QuotesRequestTextCapped) {
  EXPECT_EQ(ember::serve::quoted_prefix("short"), "short");
  const std::string long_path(60000, 'p');
  const std::string quoted = ember::serve::quoted_prefix(long_path);
  EXPECT_EQ(quoted, std::string(200, 'p') + "...(60000 bytes)");
  EXPECT_EQ(ember::serve::quoted_prefix(std::string(10, 'm'), 4), "mmmm...(10 bytes)");
}

}  // namespace
