#include "backend/op_checks.h"

#include <algorithm>

#include "ember/error.h"

namespace ember {

std::string describe(const Tensor& t) { return std::string(dtype_name(t.dtype)) + shape_string(t.shape); }

void OpChecks::require(bool ok, const std::string& message) const {
  if (!ok) throw Error(std::string(backend_) + ": " + message);
}

void OpChecks::act(const Tensor& t, int64_t numel, const char* what) const {
  require(t.dtype == act_ && t.numel() == numel && t.data != nullptr,
          std::string(what) + " must be " + dtype_name(act_) + " with " + std::to_string(numel) + " elements, got " +
              describe(t));
}

void OpChecks::norm(const Tensor& w, int64_t n) const {
  require(w.dtype == DType::F32 && w.numel() == n && n > 0,
          "norm weight must be an F32 vector from load_weight, got " + describe(w));
}

int64_t OpChecks::batch(const PackedBatch& batch) const {
  const auto& off = batch.seq_offsets;
  require(!off.empty() && off.front() == 0 && off.back() == batch.tokens(),
          "batch offsets must start at 0 and end at the token count");
  require(batch.positions.size() == batch.token_ids.size(), "batch needs one position per token");
  int64_t longest = 0;
  for (size_t s = 0; s + 1 < off.size(); ++s) {
    require(off[s] < off[s + 1], "batch holds an empty sequence");
    longest = std::max<int64_t>(longest, off[s + 1] - off[s]);
  }
  return longest;
}

void OpChecks::token_ids(const std::vector<int32_t>& ids, int64_t vocab) const {
  for (int32_t id : ids) {
    require(id >= 0 && id < vocab,
            "token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(vocab));
  }
}

OpChecks::Rows OpChecks::rms_norm(const Tensor& x, const Tensor& w, const Tensor& out) const {
  const int64_t n = w.numel();
  norm(w, n);
  act(x, x.numel(), "rms_norm input");
  require(x.numel() % n == 0, "rms_norm input " + describe(x) + " does not have rows of " + std::to_string(n));
  act(out, x.numel(), "rms_norm output");
  return {x.numel() / n, n};
}

OpChecks::Rows OpChecks::add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& w,
                                      const Tensor& out) const {
  const int64_t n = w.numel();
  norm(w, n);
  act(residual, residual.numel(), "add_rms_norm residual");
  require(residual.numel() % n == 0,
          "add_rms_norm residual " + describe(residual) + " does not have rows of " + std::to_string(n));
  act(x, residual.numel(), "add_rms_norm input");
  act(out, residual.numel(), "add_rms_norm output");
  return {residual.numel() / n, n};
}

OpChecks::Rows OpChecks::swiglu(const Tensor& gate_up, const Tensor& out) const {
  require(gate_up.shape.size() == 2 && gate_up.dim(1) % 2 == 0 && !out.shape.empty() && out.dim(0) == gate_up.dim(0),
          "swiglu needs gate_up: [rows, 2 * n] and out: [rows, n], got " + describe(gate_up) + " and " +
              describe(out));
  act(gate_up, gate_up.numel(), "swiglu gate_up");
  act(out, gate_up.numel() / 2, "swiglu output");
  return {gate_up.dim(0), gate_up.dim(1) / 2};
}

OpChecks::Matmul OpChecks::linear(const Tensor& x, const Tensor& w, const Tensor& out) const {
  require(w.shape.size() == 2 && w.dtype == act_, "linear weight must be a " + std::string(dtype_name(act_)) +
                                                      " [out, in] matrix from load_weight, got " + describe(w));
  const int64_t n = w.dim(0), k = w.dim(1);
  act(x, x.numel(), "linear input");
  require(x.numel() % k == 0, "linear input " + describe(x) + " does not have rows of " + std::to_string(k));
  const int64_t m = x.numel() / k;
  act(out, m * n, "linear output");
  return {m, n, k};
}

OpChecks::Heads OpChecks::qk_norm_rope(const Tensor& qkv, int64_t q_heads, const Tensor& q_norm, const Tensor& k_norm,
                                       int64_t tokens, int64_t max_head_dim) const {
  const int64_t d = q_norm.numel();
  norm(q_norm, d);
  norm(k_norm, d);
  if (max_head_dim > 0) {
    require(d % 2 == 0 && d <= max_head_dim, "RoPE needs an even head_dim of at most " +
                                                 std::to_string(max_head_dim) + ", got " + std::to_string(d));
  } else {
    require(d % 2 == 0, "RoPE needs an even head_dim, got " + std::to_string(d));
  }
  return {q_heads, kv_heads(qkv, q_heads, d, tokens, "qk_norm_rope"), d};
}

OpChecks::Heads OpChecks::attention(const Tensor& qkv, const Tensor& out, int64_t tokens) const {
  require(out.shape.size() == 3 && out.dim(0) == tokens,
          "attention output must be [tokens, heads, head_dim], got " + describe(out));
  act(out, out.numel(), "attention output");
  const int64_t hq = out.dim(1), d = out.dim(2);
  const int64_t hkv = kv_heads(qkv, hq, d, tokens, "attention");
  require(hq % hkv == 0, "query heads (" + std::to_string(hq) + ") must be a multiple of key/value heads (" +
                             std::to_string(hkv) + ")");
  return {hq, hkv, d};
}

int64_t OpChecks::gather_last_tokens(const Tensor& x, const Tensor& out, int64_t tokens, int64_t sequences) const {
  require(!x.shape.empty() && x.dim(0) == tokens,
          "gather_last_tokens input must have one row per token, got " + describe(x));
  const int64_t n = x.numel() / tokens;
  act(x, tokens * n, "gather_last_tokens input");
  act(out, sequences * n, "gather_last_tokens output");
  return n;
}

void OpChecks::to_host_f32(const Tensor& t) const {
  require(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16,
          "to_host_f32 needs a floating-point tensor, got " + describe(t));
}

int64_t OpChecks::kv_heads(const Tensor& qkv, int64_t q_heads, int64_t d, int64_t tokens, const char* op) const {
  const int64_t heads = tokens > 0 && qkv.numel() % (tokens * d) == 0 ? qkv.numel() / (tokens * d) : 0;
  require(heads > q_heads && (heads - q_heads) % 2 == 0,
          std::string(op) + " needs qkv: [tokens, q_heads + 2 * kv_heads, " + std::to_string(d) + "] with " +
              std::to_string(q_heads) + " q heads, got " + describe(qkv));
  act(qkv, qkv.numel(), op);
  return (heads - q_heads) / 2;
}

}  // namespace ember
