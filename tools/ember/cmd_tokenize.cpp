#include <fmt/format.h>

#include <iterator>
#include <memory>

#include "atomic_output.h"
#include "commands.h"
#include "ember/error.h"
#include "inputs.h"
#include "model/model_dir.h"

namespace ember::cli {

namespace {

struct TokenizeFlags {
  std::string model, input = "-", output = "-", format = "auto";
};

void run_tokenize(const TokenizeFlags& flags) {
  const std::vector<InputRecord> records = read_inputs(flags.input, parse_input_format(flags.format));
  const auto tokenizer = Tokenizer::from_dir(resolve_model_dir(flags.model));
  const std::string source = flags.input == "-" ? "stdin" : flags.input;
  AtomicOutput out(flags.output);
  std::string line;
  for (const auto& record : records) {
    std::vector<int32_t> ids;
    try {
      ids = tokenizer.encode_for_model(record.text);
    } catch (const Error& e) {
      throw Error(source + " line " + std::to_string(record.line) + ": " + e.what());
    }
    line = fmt::format("[{}]\n", fmt::join(ids, ", "));
    out.write(line);
  }
  out.commit();
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto flags = std::make_shared<TokenizeFlags>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Print the model-input token ids of each text as a JSON array");
  cmd->add_option("--model,-m", flags->model, "Model folder (its tokenizer.json is used)")->required();
  cmd->add_option("--input,-i", flags->input, "Input .txt or .jsonl; - is stdin")->capture_default_str();
  cmd->add_option("--output,-o", flags->output, "Output file; - is stdout")->capture_default_str();
  cmd->add_option("--format", flags->format, "Input format: auto, txt or jsonl")->capture_default_str();
  cmd->callback([flags] { run_tokenize(*flags); });
}

}  // namespace ember::cli
