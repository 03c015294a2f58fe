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
  // Checks every tensor's shape against the config and hands it to the backend. Activation
  // buffers are allocated once for `max_batch_tokens` tokens.
  Qwen3Model(const ModelConfig& config, const WeightStore& weights, Backend& backend, int64_t max_batch_tokens);

  // Returns [S, hidden] row-major fp32: the final-normed hidden state of each sequence's last
  // token (not yet L2-normalised). A batch may exceed max_batch_tokens only when it is a single
  // long sequence; then its whole-sequence buffers are allocated for that call alone.
  std::vector<float> forward(const PackedBatch& batch);

  const ModelConfig& config() const { return config_; }

 private:
  struct Layer {
    Tensor input_norm, qkv_proj, o_proj, q_norm, k_norm;  // qkv_proj: q, k, v stacked
    Tensor post_attention_norm, gate_up_proj, down_proj;   // gate_up_proj: gate, up stacked
  };
  // Buffers holding a value for every token of the batch. `out` takes the attention's and the
  // MLP's output projections in turn (each is added to the residual before the next is made).
  // qkv and attn live only during attention: for batches within max_batch_tokens they are views
  // into the MLP's gate_up buffer, which is free then.
  struct TokenBuffers {
    Tensor residual, normed, out, qkv, attn;
  };
  // The MLP's intermediate buffers (3 x intermediate_size per token, the largest activations) are
  // only as tall as max_batch_tokens; longer inputs run the MLP in row chunks. act is flat: the
  // chunks' [n, intermediate] views are carved from it.
  struct MlpBuffers {
    Tensor gate_up, act;
  };
  TokenBuffers allocate_token_buffers(int64_t tokens);
  void run_layers(const PackedBatch& batch, const TokenBuffers& buffers);

  ModelConfig config_;
  Backend& backend_;
  int64_t max_batch_tokens_;
  Tensor embed_tokens_;
  std::vector<Layer> layers_;
  Tensor final_norm_;
  TokenBuffers tokens_;
  MlpBuffers mlp_;
};

}  // namespace ember
