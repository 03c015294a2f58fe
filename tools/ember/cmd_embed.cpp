#include <fmt/format.h>

#include <iterator>
#include <memory>

#include "atomic_output.h"
#include "commands.h"
#include "ember/error.h"
#include "inputs.h"

namespace ember::cli {

namespace {

struct EmbedFlags {
  EngineFlags engine;
  std::string input = "-", output = "-", format = "auto", instruction;
  int dimensions = 0;
  bool truncate = false;
};

// Texts are embedded in chunks so memory stays bounded by the chunk, not the input.
constexpr size_t kChunkTexts = 512;

void append_line(std::string& out, size_t index, const nlohmann::json& id, const std::vector<float>& embedding) {
  auto it = std::back_inserter(out);
  fmt::format_to(it, "{{\"index\": {}, \"id\": {}, \"embedding\": [", index, id.dump());
  for (size_t i = 0; i < embedding.size(); ++i) {
    if (i) out += ", ";
    fmt::format_to(it, "{}", embedding[i]);
  }
  out += "]}\n";
}

void run_embed(const EmbedFlags& flags) {
  const std::vector<InputRecord> records = read_inputs(flags.input, parse_input_format(flags.format));
  auto engine = Engine::open(flags.engine.options());
  EmbedOptions options;
  options.dimensions = flags.dimensions;
  options.instruction = flags.instruction;
  options.truncate = flags.truncate;

  // Tokenise everything first: a bad line fails the run before any compute is spent.
  std::vector<std::vector<int32_t>> sequences;
  sequences.reserve(records.size());
  const std::string source = flags.input == "-" ? "stdin" : flags.input;
  for (const auto& record : records) {
    try {
      sequences.push_back(engine->tokenize(record.text, options));
    } catch (const Error& e) {
      throw Error(source + " line " + std::to_string(record.line) + ": " + e.what());
    }
  }

  AtomicOutput out(flags.output);
  std::string buffer;
  for (size_t begin = 0; begin < sequences.size(); begin += kChunkTexts) {
    const size_t end = std::min(sequences.size(), begin + kChunkTexts);
    const std::vector<std::vector<int32_t>> chunk(sequences.begin() + begin, sequences.begin() + end);
    const auto embeddings = engine->embed_tokens(chunk, options.dimensions);
    buffer.clear();
    for (size_t i = 0; i < embeddings.size(); ++i) append_line(buffer, begin + i, records[begin + i].id, embeddings[i]);
    out.write(buffer);
  }
  out.commit();
}

}  // namespace

void add_embed_command(CLI::App& app) {
  auto flags = std::make_shared<EmbedFlags>();
  CLI::App* cmd = app.add_subcommand("embed", "Embed texts into JSONL: {\"index\", \"id\", \"embedding\"} per text");
  flags->engine.add_to(*cmd);
  cmd->add_option("--input,-i", flags->input, "Input .txt (a text per line) or .jsonl ({\"text\", \"id\"}); - is stdin")
      ->capture_default_str();
  cmd->add_option("--output,-o", flags->output, "Output JSONL file; - is stdout")->capture_default_str();
  cmd->add_option("--format", flags->format, "Input format: auto (by extension), txt or jsonl")->capture_default_str();
  cmd->add_option("--dimensions", flags->dimensions, "Matryoshka: keep the first N values (32..hidden), re-normalised")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--instruction", flags->instruction,
                  "Query instruction: each text becomes \"Instruct: TEXT\\nQuery:{text}\"");
  cmd->add_flag("--truncate", flags->truncate, "Cut over-long inputs to the model's maximum instead of failing");
  cmd->callback([flags] { run_embed(*flags); });
}

}  // namespace ember::cli
