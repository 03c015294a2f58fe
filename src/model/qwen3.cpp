#include "model/qwen3.h"

#include <algorithm>
#include <string>

namespace ember {

namespace {

// Rows [begin, begin + count) of a row-major tensor, as a view (works for device pointers too).
Tensor rows(const Tensor& t, int64_t begin, int64_t count) {
  Tensor view = t;
  const int64_t row_elements = t.numel() / t.shape[0];
  view.data = static_cast<char*>(t.data) + begin * row_elements * static_cast<int64_t>(dtype_size(t.dtype));
  view.shape[0] = count;
  return view;
}

// linear() sees [T, heads, D] tensors as [T, heads * D] matrices.
Tensor as_matrix(const Tensor& t) {
  Tensor m = t;
  m.shape = {t.shape[0], t.numel() / t.shape[0]};
  return m;
}

}  // namespace

Qwen3Model::Qwen3Model(const ModelConfig& config, const WeightStore& weights, Backend& backend,
                       int64_t max_batch_tokens)
    : config_(config), backend_(backend), max_batch_tokens_(max_batch_tokens) {
  const int64_t H = config.hidden_size, D = config.head_dim, I = config.intermediate_size;
  const int64_t q_dim = config.num_attention_heads * D, kv_dim = config.num_key_value_heads * D;
  auto load = [&](const std::string& name, std::vector<int64_t> shape, WeightKind kind) {
    return backend_.load_weight(weights.get(name, shape), kind);
  };
  embed_tokens_ = load("embed_tokens.weight", {config.vocab_size, H}, WeightKind::EmbeddingTable);
  layers_.reserve(config.num_hidden_layers);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    Layer layer;
    layer.input_norm = load(p + "input_layernorm.weight", {H}, WeightKind::Vector);
    layer.q_proj = load(p + "self_attn.q_proj.weight", {q_dim, H}, WeightKind::Matrix);
    layer.k_proj = load(p + "self_attn.k_proj.weight", {kv_dim, H}, WeightKind::Matrix);
    layer.v_proj = load(p + "self_attn.v_proj.weight", {kv_dim, H}, WeightKind::Matrix);
    layer.o_proj = load(p + "self_attn.o_proj.weight", {H, q_dim}, WeightKind::Matrix);
    layer.q_norm = load(p + "self_attn.q_norm.weight", {D}, WeightKind::Vector);
    layer.k_norm = load(p + "self_attn.k_norm.weight", {D}, WeightKind::Vector);
    layer.post_attention_norm = load(p + "post_attention_layernorm.weight", {H}, WeightKind::Vector);
    layer.gate_proj = load(p + "mlp.gate_proj.weight", {I, H}, WeightKind::Matrix);
    layer.up_proj = load(p + "mlp.up_proj.weight", {I, H}, WeightKind::Matrix);
    layer.down_proj = load(p + "mlp.down_proj.weight", {H, I}, WeightKind::Matrix);
    layers_.push_back(std::move(layer));
  }
  final_norm_ = load("norm.weight", {H}, WeightKind::Vector);

  tokens_ = allocate_token_buffers(max_batch_tokens_);
  const DType a = backend_.activation_dtype();
  mlp_.gate = backend_.allocate(a, {max_batch_tokens_, I});
  mlp_.up = backend_.allocate(a, {max_batch_tokens_, I});
}

Qwen3Model::TokenBuffers Qwen3Model::allocate_token_buffers(int64_t tokens) {
  const DType a = backend_.activation_dtype();
  const int64_t H = config_.hidden_size, D = config_.head_dim;
  const int64_t Hq = config_.num_attention_heads, Hkv = config_.num_key_value_heads;
  TokenBuffers b;
  b.residual = backend_.allocate(a, {tokens, H});
  b.normed = backend_.allocate(a, {tokens, H});
  b.q = backend_.allocate(a, {tokens, Hq, D});
  b.k = backend_.allocate(a, {tokens, Hkv, D});
  b.v = backend_.allocate(a, {tokens, Hkv, D});
  b.attn = backend_.allocate(a, {tokens, Hq, D});
  b.attn_out = backend_.allocate(a, {tokens, H});
  b.mlp_out = backend_.allocate(a, {tokens, H});
  return b;
}

std::vector<float> Qwen3Model::forward(const PackedBatch& batch) {
  backend_.set_batch(batch);
  if (batch.tokens() <= max_batch_tokens_) {
    backend_.run_forward([&] { run_layers(batch, tokens_); });
    return backend_.to_host_f32(rows(tokens_.residual, 0, batch.sequences()));
  }
  const TokenBuffers long_input = allocate_token_buffers(batch.tokens());
  run_layers(batch, long_input);
  // run_layers leaves the pooled states in the first S rows of `residual`.
  return backend_.to_host_f32(rows(long_input.residual, 0, batch.sequences()));
}

void Qwen3Model::run_layers(const PackedBatch& batch, const TokenBuffers& b) {
  const int64_t T = batch.tokens(), S = batch.sequences();
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float theta = static_cast<float>(config_.rope_theta);
  Tensor residual = rows(b.residual, 0, T), normed = rows(b.normed, 0, T);
  Tensor q = rows(b.q, 0, T), k = rows(b.k, 0, T), v = rows(b.v, 0, T), attn = rows(b.attn, 0, T);
  Tensor attn_out = rows(b.attn_out, 0, T), mlp_out = rows(b.mlp_out, 0, T);
  const Tensor q2 = as_matrix(q), k2 = as_matrix(k), v2 = as_matrix(v), attn2 = as_matrix(attn);

  backend_.embed_tokens(embed_tokens_, residual);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    // The residual add of the previous layer's MLP is fused into this layer's first norm.
    if (l == 0) {
      backend_.rms_norm(residual, layer.input_norm, eps, normed);
    } else {
      backend_.add_rms_norm(residual, mlp_out, layer.input_norm, eps, normed);
    }
    Tensor q_out = q2, k_out = k2, v_out = v2;
    backend_.linear(normed, layer.q_proj, q_out);
    backend_.linear(normed, layer.k_proj, k_out);
    backend_.linear(normed, layer.v_proj, v_out);
    backend_.qk_norm_rope(q, k, layer.q_norm, layer.k_norm, eps, theta);
    backend_.attention(q, k, v, attn);
    backend_.linear(attn2, layer.o_proj, attn_out);
    backend_.add_rms_norm(residual, attn_out, layer.post_attention_norm, eps, normed);
    for (int64_t begin = 0; begin < T; begin += max_batch_tokens_) {
      const int64_t n = std::min(max_batch_tokens_, T - begin);
      Tensor gate = rows(mlp_.gate, 0, n), up = rows(mlp_.up, 0, n);
      Tensor out = rows(mlp_out, begin, n);
      backend_.linear(rows(normed, begin, n), layer.gate_proj, gate);
      backend_.linear(rows(normed, begin, n), layer.up_proj, up);
      backend_.swiglu(gate, up, gate);  // in place: saves a [tokens, intermediate] buffer
      backend_.linear(gate, layer.down_proj, out);
    }
  }
  // Only the last token of each sequence is pooled, so the final residual add and norm run on S
  // rows. normed and attn_out are free by now and hold the gathered rows; the result goes to
  // the first S rows of residual.
  Tensor last_residual = rows(b.normed, 0, S), last_mlp = rows(b.attn_out, 0, S), pooled = rows(b.residual, 0, S);
  backend_.gather_last_tokens(residual, last_residual);
  backend_.gather_last_tokens(mlp_out, last_mlp);
  backend_.add_rms_norm(last_residual, last_mlp, final_norm_, eps, pooled);
}

}  // namespace ember
