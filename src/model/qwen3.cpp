#include "model/qwen3.h"

#include <algorithm>
#include <string>

#include "ember/error.h"

namespace ember {

namespace {

// Runs load(), a backend's load of the weight `name`; its errors (a value the device's dtype
// cannot hold, say) then name the tensor.
template <class Load>
Tensor loading(const std::string& name, const Load& load) {
  try {
    return load();
  } catch (const Error& e) {
    throw Error(name + ": " + e.what());
  }
}

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

// A tensor of `shape` in the memory of `buffer` starting `offset` elements in, or an empty
// tensor if it does not fit.
Tensor carve(const Tensor& buffer, int64_t offset, std::vector<int64_t> shape) {
  Tensor view = buffer;
  view.shape = std::move(shape);
  if (offset + view.numel() > buffer.numel()) return Tensor{};
  view.data = static_cast<char*>(buffer.data) + offset * static_cast<int64_t>(dtype_size(buffer.dtype));
  return view;
}

}  // namespace

Qwen3Model::Qwen3Model(const ModelConfig& config, const WeightStore& weights, Backend& backend,
                       int64_t max_batch_tokens)
    : config_(config), backend_(backend), max_batch_tokens_(max_batch_tokens) {
  const int64_t H = config.hidden_size, D = config.head_dim, I = config.intermediate_size;
  const int64_t q_dim = config.num_attention_heads * D, kv_dim = config.num_key_value_heads * D;
  auto load = [&](const std::string& name, std::vector<int64_t> shape, WeightKind kind) {
    const Tensor host = weights.get(name, shape);
    return loading(name, [&] { return backend_.load_weight(host, kind); });
  };
  auto stacked = [&](const std::string& prefix, const std::vector<std::pair<std::string, int64_t>>& parts, int64_t in) {
    std::vector<Tensor> hosts;
    std::string names;
    for (const auto& [name, n] : parts) {
      hosts.push_back(weights.get(prefix + name + ".weight", {n, in}));
      names += (names.empty() ? "" : ", ") + prefix + name + ".weight";
    }
    return loading(names, [&] { return backend_.load_stacked_weight(hosts); });
  };
  embed_tokens_ = load("embed_tokens.weight", {config.vocab_size, H}, WeightKind::EmbeddingTable);
  layers_.reserve(config.num_hidden_layers);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    Layer layer;
    layer.input_norm = load(p + "input_layernorm.weight", {H}, WeightKind::Vector);
    layer.qkv_proj = stacked(p + "self_attn.", {{"q_proj", q_dim}, {"k_proj", kv_dim}, {"v_proj", kv_dim}}, H);
    layer.o_proj = load(p + "self_attn.o_proj.weight", {H, q_dim}, WeightKind::Matrix);
    layer.q_norm = load(p + "self_attn.q_norm.weight", {D}, WeightKind::Vector);
    layer.k_norm = load(p + "self_attn.k_norm.weight", {D}, WeightKind::Vector);
    layer.post_attention_norm = load(p + "post_attention_layernorm.weight", {H}, WeightKind::Vector);
    layer.gate_up_proj = stacked(p + "mlp.", {{"gate_proj", I}, {"up_proj", I}}, H);
    layer.down_proj = load(p + "mlp.down_proj.weight", {H, I}, WeightKind::Matrix);
    layers_.push_back(std::move(layer));
  }
  final_norm_ = load("norm.weight", {H}, WeightKind::Vector);

  const DType a = backend_.activation_dtype();
  mlp_.gate_up = backend_.allocate(a, {max_batch_tokens_, 2 * I});
  // act: [tokens, I] views; also the [S, H] scratch of the final gather, so at least H wide.
  mlp_.act = backend_.allocate(a, {max_batch_tokens_ * std::max(I, H)});
  tokens_ = allocate_token_buffers(max_batch_tokens_);
}

Qwen3Model::TokenBuffers Qwen3Model::allocate_token_buffers(int64_t tokens) {
  const DType a = backend_.activation_dtype();
  const int64_t H = config_.hidden_size, D = config_.head_dim;
  const int64_t Hq = config_.num_attention_heads, Hkv = config_.num_key_value_heads;
  TokenBuffers b;
  b.residual = backend_.allocate(a, {tokens, H});
  b.normed = backend_.allocate(a, {tokens, H});
  b.out = backend_.allocate(a, {tokens, H});
  const int64_t qkv = tokens * (Hq + 2 * Hkv) * D;
  Tensor attention = tokens <= max_batch_tokens_ ? mlp_.gate_up : Tensor{};
  if (carve(attention, 0, {qkv + tokens * Hq * D}).data == nullptr) {
    attention = backend_.allocate(a, {qkv + tokens * Hq * D});
  }
  b.qkv = carve(attention, 0, {tokens, Hq + 2 * Hkv, D});
  b.attn = carve(attention, qkv, {tokens, Hq, D});
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
  const int64_t H = config_.hidden_size, I = config_.intermediate_size, Hq = config_.num_attention_heads;
  Tensor residual = rows(b.residual, 0, T), normed = rows(b.normed, 0, T), out = rows(b.out, 0, T);
  Tensor qkv = rows(b.qkv, 0, T), attn = rows(b.attn, 0, T);
  const Tensor attn2 = as_matrix(attn);

  backend_.embed_tokens(embed_tokens_, residual);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    // The residual add of the previous layer's MLP is fused into this layer's first norm.
    if (l == 0) {
      backend_.rms_norm(residual, layer.input_norm, eps, normed);
    } else {
      backend_.add_rms_norm(residual, out, layer.input_norm, eps, normed);
    }
    Tensor qkv2 = as_matrix(qkv);
    backend_.linear(normed, layer.qkv_proj, qkv2);
    backend_.qk_norm_rope(qkv, Hq, layer.q_norm, layer.k_norm, eps, theta);
    backend_.attention(qkv, attn);
    backend_.linear(attn2, layer.o_proj, out);
    backend_.add_rms_norm(residual, out, layer.post_attention_norm, eps, normed);
    for (int64_t begin = 0; begin < T; begin += max_batch_tokens_) {
      const int64_t n = std::min(max_batch_tokens_, T - begin);
      Tensor gate_up = rows(mlp_.gate_up, 0, n), act = carve(mlp_.act, 0, {n, I}), mlp_out = rows(out, begin, n);
      backend_.linear(rows(normed, begin, n), layer.gate_up_proj, gate_up);
      backend_.swiglu(gate_up, act);
      backend_.linear(act, layer.down_proj, mlp_out);
    }
  }
  // Only the last token of each sequence is pooled, so the final residual add and norm run on S
  // rows. normed and the MLP's act buffer are free by now and hold the gathered rows (S is at
  // most max_batch_tokens, or 1 for a longer input); the result goes to the first S rows of
  // residual.
  Tensor last_residual = rows(b.normed, 0, S), last_mlp = carve(mlp_.act, 0, {S, H}), pooled = rows(b.residual, 0, S);
  backend_.gather_last_tokens(residual, last_residual);
  backend_.gather_last_tokens(out, last_mlp);
  backend_.add_rms_norm(last_residual, last_mlp, final_norm_, eps, pooled);
}

}  // namespace ember
