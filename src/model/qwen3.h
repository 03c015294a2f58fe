#pragma once
#include <vector>

#include "backend/backend.h"
#include "ember/model_config.h"
#include "model/weights.h"

namespace ember {

// The Qwen3 decoder stack as an embedding model: the forward pass written once against the
// Backend op interface, ending in the final RMSNorm of each sequence's last token.
class Qwen3Model {
 public:
  // Checks every tensor's shape against the config and hands it to the backend.
  Qwen3Model(const ModelConfig& config, const WeightStore& weights, Backend& backend);

  // Returns [S, hidden] row-major fp32: the final-normed hidden state of each sequence's last
  // token (not yet L2-normalised).
  std::vector<float> forward(const PackedBatch& batch);

  const ModelConfig& config() const { return config_; }

 private:
  struct Layer {
    Tensor input_norm, q_proj, k_proj, v_proj, o_proj, q_norm, k_norm;
    Tensor post_attention_norm, gate_proj, up_proj, down_proj;
  };
  // Activation buffers, grown to the largest batch seen and reused.
  struct Activations {
    int64_t capacity = 0;
    Tensor residual, normed, q, k, v, attn, attn_out, gate, up, mlp_act, mlp_out;
  };
  void ensure_capacity(int64_t tokens);
  static Tensor rows(const Tensor& t, int64_t n);  // view of the first n rows

  ModelConfig config_;
  Backend& backend_;
  Tensor embed_tokens_;
  std::vector<Layer> layers_;
  Tensor final_norm_;
  Activations act_;
};

}  // namespace ember
