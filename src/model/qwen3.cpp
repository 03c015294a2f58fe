#include "model/qwen3.h"

#include <string>

namespace ember {

Qwen3Model::Qwen3Model(const ModelConfig& config, const WeightStore& weights, Backend& backend)
    : config_(config), backend_(backend) {
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
}

Tensor Qwen3Model::rows(const Tensor& t, int64_t n) {
  Tensor view = t;
  view.shape[0] = n;
  return view;
}

void Qwen3Model::ensure_capacity(int64_t tokens) {
  if (tokens <= act_.capacity) return;
  const DType a = backend_.activation_dtype();
  const int64_t H = config_.hidden_size, D = config_.head_dim, I = config_.intermediate_size;
  const int64_t Hq = config_.num_attention_heads, Hkv = config_.num_key_value_heads;
  act_.residual = backend_.allocate(a, {tokens, H});
  act_.normed = backend_.allocate(a, {tokens, H});
  act_.q = backend_.allocate(a, {tokens, Hq, D});
  act_.k = backend_.allocate(a, {tokens, Hkv, D});
  act_.v = backend_.allocate(a, {tokens, Hkv, D});
  act_.attn = backend_.allocate(a, {tokens, Hq, D});
  act_.attn_out = backend_.allocate(a, {tokens, H});
  act_.gate = backend_.allocate(a, {tokens, I});
  act_.up = backend_.allocate(a, {tokens, I});
  act_.mlp_act = backend_.allocate(a, {tokens, I});
  act_.mlp_out = backend_.allocate(a, {tokens, H});
  act_.capacity = tokens;
}

std::vector<float> Qwen3Model::forward(const PackedBatch& batch) {
  const int64_t T = batch.tokens();
  const int64_t H = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float theta = static_cast<float>(config_.rope_theta);
  ensure_capacity(T);
  backend_.set_batch(batch);

  Tensor residual = rows(act_.residual, T), normed = rows(act_.normed, T);
  Tensor q = rows(act_.q, T), k = rows(act_.k, T), v = rows(act_.v, T), attn = rows(act_.attn, T);
  Tensor attn_out = rows(act_.attn_out, T), gate = rows(act_.gate, T), up = rows(act_.up, T);
  Tensor mlp_act = rows(act_.mlp_act, T), mlp_out = rows(act_.mlp_out, T);
  // linear() sees q/k/v/attn as [T, heads * D] matrices.
  auto flat = [](const Tensor& t) {
    Tensor m = t;
    m.shape = {t.shape[0], t.numel() / t.shape[0]};
    return m;
  };
  Tensor q2 = flat(q), k2 = flat(k), v2 = flat(v), attn2 = flat(attn);

  backend_.embed_tokens(embed_tokens_, residual);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    // The residual add of the previous layer's MLP is fused into this layer's first norm.
    if (l == 0) {
      backend_.rms_norm(residual, layer.input_norm, eps, normed);
    } else {
      backend_.add_rms_norm(residual, mlp_out, layer.input_norm, eps, normed);
    }
    backend_.linear(normed, layer.q_proj, q2);
    backend_.linear(normed, layer.k_proj, k2);
    backend_.linear(normed, layer.v_proj, v2);
    backend_.qk_norm_rope(q, k, layer.q_norm, layer.k_norm, eps, theta);
    backend_.attention(q, k, v, attn);
    backend_.linear(attn2, layer.o_proj, attn_out);
    backend_.add_rms_norm(residual, attn_out, layer.post_attention_norm, eps, normed);
    backend_.linear(normed, layer.gate_proj, gate);
    backend_.linear(normed, layer.up_proj, up);
    backend_.swiglu(gate, up, mlp_act);
    backend_.linear(mlp_act, layer.down_proj, mlp_out);
  }
  // Only the last token of each sequence is pooled, so the final residual add and norm run on
  // S rows instead of T.
  const int64_t S = batch.sequences();
  Tensor last_residual = backend_.allocate(residual.dtype, {S, H});
  Tensor last_mlp = backend_.allocate(residual.dtype, {S, H});
  Tensor pooled = backend_.allocate(residual.dtype, {S, H});
  backend_.gather_last_tokens(residual, last_residual);
  backend_.gather_last_tokens(mlp_out, last_mlp);
  backend_.add_rms_norm(last_residual, last_mlp, final_norm_, eps, pooled);
  return backend_.to_host_f32(pooled);
}

}  // namespace ember
