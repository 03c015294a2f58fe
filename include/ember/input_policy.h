#pragma once
// How a text or a list of token ids becomes a model input, written once for the CLI, the server
// and the jobs: the Qwen3-Embedding instruction format, the length limit (tokenizing no further
// than it needs), truncation that keeps the closing <|endoftext|> (the model pools the last
// token) and the vocabulary check (the Matryoshka range is finish_embedding's). Errors are ember::Error with a
// message that says what to change; callers prefix the input's index ("input[3]: ...").
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ember/error.h"
#include "ember/tokenizer.h"

namespace ember {

// An input longer than the policy's maximum (without truncation).
struct InputTooLong : Error {
  using Error::Error;
};

struct InputPolicy {
  int64_t max_tokens = 0;     // the longest model input, <|endoftext|> included
  int64_t vocab_size = 0;     // ids must be below this (the model's embedding rows)
  bool truncate = false;      // over-long inputs are cut instead of refused
  std::string instruction;    // non-empty: "Instruct: {instruction}\nQuery:{text}"
  std::string truncate_hint;  // how the caller asks for truncation, for the error message
};

// "Instruct: {instruction}\nQuery:{text}", the query format of Qwen3-Embedding; `text` itself
// when there is no instruction.
std::string with_instruction(const std::string& instruction, std::string_view text);

// The model input of one text, or Error (invalid UTF-8, over the limit without truncation).
std::vector<int32_t> text_input(const Tokenizer& tokenizer, std::string_view text, const InputPolicy& policy);

// Token ids given by the client, checked against the vocabulary and cut or refused by length
// (given ids are used as they are: no <|endoftext|> is added or kept).
std::vector<int32_t> token_input(std::vector<int32_t> ids, const InputPolicy& policy);

}  // namespace ember
