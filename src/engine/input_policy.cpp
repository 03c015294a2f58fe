#include "ember/input_policy.h"

#include "ember/error.h"

namespace ember {

namespace {

[[noreturn]] void too_long(const std::string& what, const InputPolicy& policy) {
  throw InputTooLong(what + "; shorten it" + (policy.truncate_hint.empty() ? "" : ", or " + policy.truncate_hint));
}

// The 4B/8B checkpoints have 151665 embedding rows while the tokenizer knows ids up to 151668.
void check_vocabulary(const std::vector<int32_t>& ids, const InputPolicy& policy, const char* what) {
  for (const int32_t id : ids) {
    if (id < 0 || id >= policy.vocab_size) {
      throw Error(std::string(what) + " id " + std::to_string(id) + ", outside the model's vocabulary of " +
                  std::to_string(policy.vocab_size) + " entries");
    }
  }
}

}  // namespace

std::string with_instruction(const std::string& instruction, std::string_view text) {
  if (instruction.empty()) return std::string(text);
  std::string out = "Instruct: " + instruction + "\nQuery:";
  out.append(text);
  return out;
}

std::vector<int32_t> text_input(const Tokenizer& tokenizer, std::string_view text, const InputPolicy& policy) {
  const auto max_tokens = static_cast<size_t>(policy.max_tokens);
  // Without truncation only "too long" matters, which a giant word can show before its BPE runs.
  Tokenizer::Limited input =
      policy.instruction.empty()
          ? tokenizer.encode_for_model(text, max_tokens, policy.truncate)
          : tokenizer.encode_for_model(with_instruction(policy.instruction, text), max_tokens, policy.truncate);
  if (input.over_limit && !policy.truncate) {
    too_long("it is longer than the maximum of " + std::to_string(max_tokens) + " tokens", policy);
  }
  check_vocabulary(input.ids, policy, "it tokenizes to");
  return std::move(input.ids);
}

std::vector<int32_t> token_input(std::vector<int32_t> ids, const InputPolicy& policy) {
  check_vocabulary(ids, policy, "it holds token");
  if (static_cast<int64_t>(ids.size()) > policy.max_tokens) {
    if (!policy.truncate) {
      too_long("it has " + std::to_string(ids.size()) + " tokens, more than the maximum of " +
                   std::to_string(policy.max_tokens),
               policy);
    }
    ids.resize(static_cast<size_t>(policy.max_tokens));
  }
  return ids;
}

}  // namespace ember
