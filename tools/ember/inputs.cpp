#include "inputs.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "ember/error.h"

namespace ember::cli {

InputFormat parse_input_format(const std::string& name) {
  if (name == "auto") return InputFormat::Auto;
  if (name == "txt" || name == "text") return InputFormat::Text;
  if (name == "jsonl") return InputFormat::Jsonl;
  throw Error("unknown input format '" + name + "' (expected auto, txt or jsonl)");
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string read_all(const std::string& path) {
  if (path == "-") {
    std::ostringstream buffer;
    buffer << std::cin.rdbuf();
    return buffer.str();
  }
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw Error("input " + path + " is a directory; give a .txt or .jsonl file, or - for stdin");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open input file " + path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw Error("cannot read input file " + path);
  return buffer.str();
}

std::vector<std::string> split_lines(const std::string& data) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < data.size()) {
    size_t end = data.find('\n', start);
    if (end == std::string::npos) end = data.size();
    std::string line = data.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    start = end + 1;
  }
  return lines;
}

InputRecord parse_jsonl_line(const std::string& line, size_t number, const std::string& name) {
  const std::string where = name + " line " + std::to_string(number) + ": ";
  nlohmann::json object;
  try {
    object = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(where + "not valid JSON (" + e.what() + ")");
  }
  if (!object.is_object()) throw Error(where + "expected a JSON object with a \"text\" field");
  auto text = object.find("text");
  if (text == object.end()) throw Error(where + "missing the \"text\" field");
  if (!text->is_string()) throw Error(where + "\"text\" must be a string");
  InputRecord record;
  record.text = text->get<std::string>();
  record.line = number;
  if (auto id = object.find("id"); id != object.end()) record.id = *id;
  return record;
}

}  // namespace

std::vector<InputRecord> read_inputs(const std::string& path, InputFormat format) {
  if (format == InputFormat::Auto) {
    format = (ends_with(path, ".jsonl") || ends_with(path, ".json")) ? InputFormat::Jsonl : InputFormat::Text;
  }
  const std::string name = path == "-" ? "stdin" : path;
  const std::vector<std::string> lines = split_lines(read_all(path));
  std::vector<InputRecord> records;
  records.reserve(lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    if (format == InputFormat::Jsonl) {
      if (lines[i].find_first_not_of(" \t") == std::string::npos) continue;
      records.push_back(parse_jsonl_line(lines[i], i + 1, name));
    } else {
      records.push_back(InputRecord{lines[i], nullptr, i + 1});
    }
  }
  return records;
}

}  // namespace ember::cli
