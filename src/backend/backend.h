#pragma once
// The op interface the Qwen3 forward pass is written against. The CPU backend implements it
// with oneDNN GEMMs and plain loops; the CUDA backend implements the same ops with cuBLASLt and
// fused kernels. Shapes are given with the token dimension first; T is the number of tokens in
// the packed batch, S the number of sequences in it.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "ember/engine.h"

namespace ember {

// A batch of sequences concatenated without padding (host side).
struct PackedBatch {
  std::vector<int32_t> token_ids;    // [T]
  std::vector<int32_t> positions;    // [T] position of each token within its own sequence
  std::vector<int32_t> seq_offsets;  // [S + 1] start of each sequence in the batch; back() == T

  int64_t tokens() const { return static_cast<int64_t>(token_ids.size()); }
  int64_t sequences() const { return static_cast<int64_t>(seq_offsets.size()) - 1; }
  static PackedBatch pack(const std::vector<const std::vector<int32_t>*>& sequences);
};

enum class WeightKind {
  Matrix,          // [out, in], used by linear()
  Vector,          // norm weights
  EmbeddingTable,  // [vocab, hidden], used by embed_tokens()
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // dtype of every activation tensor the model allocates (F32 for exact, BF16 for fast).
  virtual DType activation_dtype() const = 0;

  // Makes a host weight (usually a view into a mapped safetensors file) usable by this backend.
  // Aliases the host memory when the backend can use it in place.
  virtual Tensor load_weight(const Tensor& host, WeightKind kind) = 0;
  // Matrices that always multiply the same input (hosts: [n_i, in] each) as one stacked
  // [sum of n_i, in] weight for linear(), whose output rows then hold the parts' outputs side by
  // side: one GEMM instead of several (the model stacks q/k/v and gate/up).
  virtual Tensor load_stacked_weight(const std::vector<Tensor>& hosts) = 0;
  virtual Tensor allocate(DType dtype, std::vector<int64_t> shape) = 0;

  // Makes `batch` the current batch: the ops below read its ids, positions and offsets.
  virtual void set_batch(const PackedBatch& batch) = 0;

  // x: [T, hidden] <- table[token_ids]
  virtual void embed_tokens(const Tensor& table, Tensor& x) = 0;
  // out: [rows, n] = rmsnorm(x: [rows, n]) * w: [n]
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;
  // residual: [T, n] += x: [T, n]; then out = rmsnorm(residual) * w
  virtual void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;
  // out: [T, N] = x: [T, K] · w: [N, K]^T
  virtual void linear(const Tensor& x, const Tensor& w, Tensor& out) = 0;
  // qkv: [T, Hq + 2 Hkv, D], each token's q heads, then k heads, then v heads (the output of the
  // stacked q/k/v projection). In place on the q and k heads: per-head RMSNorm with
  // q_norm/k_norm: [D], then rotate-half RoPE at each token's position with base `theta`.
  virtual void qk_norm_rope(Tensor& qkv, int64_t q_heads, const Tensor& q_norm, const Tensor& k_norm, float eps,
                            float theta) = 0;
  // Causal grouped-query attention inside each packed sequence, softmax scale 1/sqrt(D).
  // qkv: [T, Hq + 2 Hkv, D] as for qk_norm_rope, out: [T, Hq, D]
  virtual void attention(const Tensor& qkv, Tensor& out) = 0;
  // out: [T, I] = silu(gate) * up, gate_up: [T, 2 I] holding each token's gate, then its up
  // (the output of the stacked gate/up projection)
  virtual void swiglu(const Tensor& gate_up, Tensor& out) = 0;
  // out: [S, n] = x: [T, n] at the last token of each sequence
  virtual void gather_last_tokens(const Tensor& x, Tensor& out) = 0;
  // Copies a tensor to host memory as fp32.
  virtual std::vector<float> to_host_f32(const Tensor& t) = 0;

  // Runs `ops`: the whole forward pass of the current batch, using only buffers that stay the
  // same from one batch of this size to the next. A backend may record it once per batch shape
  // and replay the recording (the CUDA backend does, with CUDA graphs, for small batches).
  virtual void run_forward(const std::function<void()>& ops) { ops(); }

  // Bytes of accelerator memory this backend holds (weights, activations, workspaces); 0 on the CPU.
  virtual int64_t device_memory_bytes() const { return 0; }

  // Per-op timing tables when the backend was asked to profile (EMBER_CUDA_PROFILE=1); else "".
  virtual std::string profile_report() { return ""; }
};

std::unique_ptr<Backend> make_cpu_backend(Precision precision, int threads);

}  // namespace ember
