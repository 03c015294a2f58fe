#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ember::cli {

// One text to process, with where it came from so errors can name the line.
struct InputRecord {
  std::string text;
  nlohmann::json id;  // null when the input gave none
  size_t line = 0;    // 1-based line number in the input
};

enum class InputFormat { Auto, Text, Jsonl };
InputFormat parse_input_format(const std::string& name);  // "auto" | "txt" | "jsonl"

// Reads `path` ("-" = stdin). .txt: one text per line (a trailing "\r" is dropped, every line is
// a text, empty lines included, but a final newline does not start another). .jsonl: one JSON
// object per line with a string "text" and an optional "id"; blank lines are skipped.
// Auto picks by extension (.jsonl/.json -> jsonl, else txt). Errors name the line.
std::vector<InputRecord> read_inputs(const std::string& path, InputFormat format);

}  // namespace ember::cli
