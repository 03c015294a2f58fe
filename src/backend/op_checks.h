#pragma once
// Argument checks every backend runs before an op, in one place so that the CPU and CUDA backends
// reject the same mistakes with the same messages. Each op's check returns the sizes the op's
// kernels need, derived from the shapes it has just validated.
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"

namespace ember {

// "BF16[2, 3]": a tensor's dtype and shape, for messages.
std::string describe(const Tensor& t);

class OpChecks {
 public:
  // `backend` prefixes every message ("CPU backend"); `act` is the backend's activation dtype.
  OpChecks(const char* backend, DType act) : backend_(backend), act_(act) {}

  // Throws Error("<backend>: message") unless ok.
  void require(bool ok, const std::string& message) const;

  // t must be an activation of `numel` elements; `what` names it in the message.
  void act(const Tensor& t, int64_t numel, const char* what) const;
  // w must be an F32 norm vector of n > 0 elements.
  void norm(const Tensor& w, int64_t n) const;

  // Offsets from 0 to T, strictly increasing, one position per token. Returns the longest
  // sequence's length.
  int64_t batch(const PackedBatch& batch) const;
  // Every id in [0, vocab).
  void token_ids(const std::vector<int32_t>& ids, int64_t vocab) const;

  struct Rows {
    int64_t rows, n;
  };
  // x, out: [rows, n], w: [n]
  Rows rms_norm(const Tensor& x, const Tensor& w, const Tensor& out) const;
  // residual, x, out: [rows, n], w: [n]
  Rows add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& w, const Tensor& out) const;
  // gate_up: [rows, 2 n], out: [rows, n]
  Rows swiglu(const Tensor& gate_up, const Tensor& out) const;

  struct Matmul {
    int64_t m, n, k;
  };
  // x: [m, k], w: [n, k] in the activation dtype, out: [m, n]
  Matmul linear(const Tensor& x, const Tensor& w, const Tensor& out) const;

  struct Heads {
    int64_t q_heads, kv_heads, d;
  };
  // qkv: [tokens, Hq + 2 Hkv, d], q_norm, k_norm: [d] with d even and, when max_head_dim > 0,
  // at most max_head_dim.
  Heads qk_norm_rope(const Tensor& qkv, int64_t q_heads, const Tensor& q_norm, const Tensor& k_norm, int64_t tokens,
                     int64_t max_head_dim = 0) const;
  // qkv: [tokens, Hq + 2 Hkv, d], out: [tokens, Hq, d], Hq a multiple of Hkv
  Heads attention(const Tensor& qkv, const Tensor& out, int64_t tokens) const;

  // x: [tokens, n], out: [sequences, n]. Returns n.
  int64_t gather_last_tokens(const Tensor& x, const Tensor& out, int64_t tokens, int64_t sequences) const;
  // t must be floating-point.
  void to_host_f32(const Tensor& t) const;

 private:
  // Hkv of qkv: [tokens, Hq + 2 Hkv, d] (any shape with that many elements).
  int64_t kv_heads(const Tensor& qkv, int64_t q_heads, int64_t d, int64_t tokens, const char* op) const;

  const char* backend_;
  DType act_;
};

}  // namespace ember
