#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "ember/model_config.h"

namespace ember {

// Shapes of the named presets: tiny, qwen3-embedding-0.6b, qwen3-embedding-4b, qwen3-embedding-8b.
ModelConfig preset_config(const std::string& preset);  // throws naming the known presets
std::vector<std::string> preset_names();

struct MakeModelOptions {
  DType dtype = DType::BF16;
  int shards = 1;             // >1: model-0000k-of-0000n.safetensors + model.safetensors.index.json
  bool name_prefix = false;   // true: "model.layers.0..." as Qwen3ForCausalLM saves; false: "layers.0..."
  uint64_t seed = 0;
  std::filesystem::path tokenizer_dir;  // tokenizer.json + tokenizer_config.json copied from here
};

// Writes a model folder with deterministic pseudo-random weights in the real HF layout
// (config.json, safetensors, tokenizer files). See docs/ARCHITECTURE.md for the weight formula;
// tests/golden/hf_golden.py reproduces it bit for bit so transformers sees the same weights.
// `out` must not exist or be an empty folder. The model is written into a hidden sibling folder
// and renamed into place at the end, so an interrupted run never leaves a complete-looking folder.
void make_model(const ModelConfig& config, const MakeModelOptions& options, const std::filesystem::path& out);

// One tensor of a generated model, in the order make_model writes them. `name` is canonical
// (no "model." prefix); fan_in scales projection weights (1 for embeddings and LM head).
struct GeneratedTensor {
  std::string name;
  std::vector<int64_t> shape;
  int64_t fan_in = 1;
  bool is_norm = false;
};
std::vector<GeneratedTensor> generated_tensors(const ModelConfig& config);

// Value of element `index` of the canonical tensor `name` (no "model." prefix) of a generated model.
float generated_weight(const std::string& name, uint64_t index, uint64_t seed, int64_t fan_in, bool is_norm);

}  // namespace ember
