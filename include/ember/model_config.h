#pragma once
#include <cstdint>
#include <filesystem>
#include <string>

namespace ember {

// The subset of a Qwen3 config.json that the forward pass needs.
struct ModelConfig {
  std::string architecture = "Qwen3Model";  // first entry of "architectures", or model_type
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // may differ from hidden_size / num_attention_heads
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 1000000.0;
  bool tie_word_embeddings = true;
  std::string torch_dtype = "bfloat16";

  // Parses and validates config.json; errors name the file and the key.
  static ModelConfig from_file(const std::filesystem::path& config_json);
  static ModelConfig from_json_text(const std::string& text, const std::string& source_name);

  // Parameters of the embedding model (embedding table + layers + final norm; no LM head).
  int64_t parameter_count() const;
};

}  // namespace ember
