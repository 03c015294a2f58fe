// The CPU backend: oneDNN matmuls for linear(), OpenMP loops for the rest (kernels.cpp,
// attention*.cpp). Exact precision keeps every activation and weight in fp32; fast precision
// stores activations as bf16 and multiplies bf16 weights in place, as a GPU would.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "backend/backend.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/kernels.h"
#include "ember/error.h"

namespace ember {
namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw Error("CPU backend: " + message);
}

std::string describe(const Tensor& t) { return std::string(dtype_name(t.dtype)) + shape_string(t.shape); }

class CpuBackend final : public Backend {
 public:
  CpuBackend(Precision precision, int threads)
      : threads_(threads > 0 ? threads : omp_get_num_procs()),
        act_(precision == Precision::Fast ? DType::BF16 : DType::F32) {
    require(threads >= 0, "thread count must be 0 (all cores) or positive, got " + std::to_string(threads));
    omp_set_num_threads(threads_);
  }

  const char* name() const override { return "cpu"; }
  DType activation_dtype() const override { return act_; }

  Tensor load_weight(const Tensor& host, WeightKind kind) override {
    require(host.dtype == DType::F32 || host.dtype == DType::F16 || host.dtype == DType::BF16,
            "weights must be F32, F16 or BF16, got " + describe(host));
    enter();
    switch (kind) {
      case WeightKind::Vector:
        return converted(host, DType::F32);
      case WeightKind::EmbeddingTable:
        require(host.shape.size() == 2, "embedding table must be [vocab, hidden], got " + describe(host));
        return host;  // rows are converted as they are gathered
      case WeightKind::Matrix:
        require(host.shape.size() == 2, "matrix weight must be [out, in], got " + describe(host));
        return converted(host, act_);
    }
    return host;
  }

  Tensor allocate(DType dtype, std::vector<int64_t> shape) override {
    Tensor t = allocate_uninitialized(dtype, std::move(shape));
    std::memset(t.data, 0, t.nbytes());
    return t;
  }

  void set_batch(const PackedBatch& batch) override {
    const auto& off = batch.seq_offsets;
    require(!off.empty() && off.front() == 0 && off.back() == batch.tokens(),
            "batch offsets must start at 0 and end at the token count");
    for (size_t s = 0; s + 1 < off.size(); ++s) require(off[s] < off[s + 1], "batch holds an empty sequence");
    require(batch.positions.size() == batch.token_ids.size(), "batch needs one position per token");
    batch_ = batch;
    rope_d_ = 0;
  }

  void embed_tokens(const Tensor& table, Tensor& x) override {
    enter();
    const int64_t T = batch_.tokens(), vocab = table.dim(0), hidden = table.dim(1);
    check_act(x, T * hidden, "embed_tokens output");
    for (int32_t id : batch_.token_ids) {
      require(id >= 0 && id < vocab,
              "token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(vocab));
    }
    cpu::gather_rows(table.data, table.dtype, hidden, batch_.token_ids.data(), T, x.data, act_);
  }

  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    enter();
    const int64_t n = w.numel();
    check_norm(w, n);
    check_act(x, x.numel(), "rms_norm input");
    require(x.numel() % n == 0, "rms_norm input " + describe(x) + " does not have rows of " + std::to_string(n));
    check_act(out, x.numel(), "rms_norm output");
    cpu::rms_norm(x.data, out.data, act_, w.as<float>(), eps, x.numel() / n, n);
  }

  void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    enter();
    const int64_t n = w.numel();
    check_norm(w, n);
    check_act(residual, residual.numel(), "add_rms_norm residual");
    require(residual.numel() % n == 0,
            "add_rms_norm residual " + describe(residual) + " does not have rows of " + std::to_string(n));
    check_act(x, residual.numel(), "add_rms_norm input");
    check_act(out, residual.numel(), "add_rms_norm output");
    cpu::add_rms_norm(residual.data, x.data, out.data, act_, w.as<float>(), eps, residual.numel() / n, n);
  }

  void linear(const Tensor& x, const Tensor& w, Tensor& out) override {
    enter();
    require(w.shape.size() == 2 && w.dtype == act_, "linear weight must be a " + std::string(dtype_name(act_)) +
                                                        " [out, in] matrix from load_weight, got " + describe(w));
    const int64_t n = w.dim(0), k = w.dim(1);
    check_act(x, x.numel(), "linear input");
    require(x.numel() % k == 0, "linear input " + describe(x) + " does not have rows of " + std::to_string(k));
    const int64_t m = x.numel() / k;
    check_act(out, m * n, "linear output");
    gemm_.run(x.data, w.data, out.data, m, k, n, act_);
  }

  void qk_norm_rope(Tensor& q, Tensor& k, const Tensor& q_norm, const Tensor& k_norm, float eps, float theta) override {
    enter();
    const int64_t T = batch_.tokens(), d = q_norm.numel();
    check_norm(q_norm, d);
    check_norm(k_norm, d);
    require(d % 2 == 0, "RoPE needs an even head_dim, got " + std::to_string(d));
    check_act(q, q.numel(), "qk_norm_rope q");
    check_act(k, k.numel(), "qk_norm_rope k");
    require(T > 0 && q.numel() % (T * d) == 0 && k.numel() % (T * d) == 0,
            "q " + describe(q) + " and k " + describe(k) + " must be [tokens, heads, " + std::to_string(d) + "]");
    if (rope_d_ != d || rope_theta_ != theta) {
      rope_cos_.resize(static_cast<size_t>(T * d / 2));
      rope_sin_.resize(rope_cos_.size());
      cpu::rope_table(batch_.positions.data(), T, d, theta, rope_cos_.data(), rope_sin_.data());
      rope_d_ = d;
      rope_theta_ = theta;
    }
    cpu::head_norm_rope(q.data, act_, T, q.numel() / (T * d), d, q_norm.as<float>(), eps, rope_cos_.data(),
                        rope_sin_.data());
    cpu::head_norm_rope(k.data, act_, T, k.numel() / (T * d), d, k_norm.as<float>(), eps, rope_cos_.data(),
                        rope_sin_.data());
  }

  void attention(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out) override {
    enter();
    const int64_t T = batch_.tokens();
    require(q.shape.size() == 3 && k.shape.size() == 3 && v.shape == k.shape && out.shape == q.shape && q.dim(0) == T &&
                k.dim(0) == T && q.dim(2) == k.dim(2),
            "attention needs q, out: [tokens, heads, head_dim] and k, v: [tokens, kv_heads, head_dim], got q " +
                describe(q) + ", k " + describe(k) + ", v " + describe(v) + ", out " + describe(out));
    require(q.dim(1) % k.dim(1) == 0, "query heads (" + std::to_string(q.dim(1)) +
                                          ") must be a multiple of key/value heads (" + std::to_string(k.dim(1)) + ")");
    for (const Tensor* t : {&q, &k, &v, static_cast<const Tensor*>(&out)})
      check_act(*t, t->numel(), "attention operand");
    cpu::AttentionArgs args;
    args.q = q.data;
    args.k = k.data;
    args.v = v.data;
    args.out = out.data;
    args.bf16 = act_ == DType::BF16;
    args.tokens = T;
    args.hq = static_cast<int>(q.dim(1));
    args.hkv = static_cast<int>(k.dim(1));
    args.d = static_cast<int>(q.dim(2));
    args.seq_offsets = batch_.seq_offsets.data();
    args.sequences = batch_.sequences();
    args.scale = 1.0f / std::sqrt(static_cast<float>(args.d));
    cpu::attention(args);
  }

  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    enter();
    check_act(gate, gate.numel(), "swiglu gate");
    check_act(up, gate.numel(), "swiglu up");
    check_act(out, gate.numel(), "swiglu output");
    cpu::swiglu(gate.data, up.data, out.data, act_, gate.numel());
  }

  void gather_last_tokens(const Tensor& x, Tensor& out) override {
    enter();
    const int64_t T = batch_.tokens(), S = batch_.sequences();
    require(!x.shape.empty() && x.dim(0) == T,
            "gather_last_tokens input must have one row per token, got " + describe(x));
    const int64_t n = x.numel() / T;
    check_act(x, T * n, "gather_last_tokens input");
    check_act(out, S * n, "gather_last_tokens output");
    std::vector<int32_t> last(static_cast<size_t>(S));
    for (int64_t s = 0; s < S; ++s) last[s] = batch_.seq_offsets[s + 1] - 1;
    cpu::gather_rows(x.data, act_, n, last.data(), S, out.data, act_);
  }

  std::vector<float> to_host_f32(const Tensor& t) override {
    require(t.dtype != DType::I32, "to_host_f32 needs a floating-point tensor, got " + describe(t));
    enter();
    std::vector<float> host(static_cast<size_t>(t.numel()));
    cpu::convert_parallel(t.data, t.dtype, host.data(), DType::F32, t.numel());
    return host;
  }

 private:
  // OpenMP thread counts are per calling thread; the engine may call from any thread.
  void enter() const { omp_set_num_threads(threads_); }

  void check_act(const Tensor& t, int64_t numel, const char* what) const {
    require(t.dtype == act_ && t.numel() == numel && t.data != nullptr,
            std::string(what) + " must be " + dtype_name(act_) + " with " + std::to_string(numel) + " elements, got " +
                describe(t));
  }

  static void check_norm(const Tensor& w, int64_t n) {
    require(w.dtype == DType::F32 && w.numel() == n && n > 0,
            "norm weight must be an F32 vector from load_weight, got " + describe(w));
  }

  static Tensor allocate_uninitialized(DType dtype, std::vector<int64_t> shape) {
    Tensor t;
    t.dtype = dtype;
    t.shape = std::move(shape);
    void* p = std::aligned_alloc(64, (std::max<size_t>(t.nbytes(), 1) + 63) & ~size_t{63});
    if (p == nullptr) throw Error("CPU backend: out of memory allocating " + describe(t));
    t.storage = std::shared_ptr<void>(p, &std::free);
    t.data = p;
    return t;
  }

  // A documented copy: the weight converted to `to`, or the host tensor itself if already `to`.
  static Tensor converted(const Tensor& host, DType to) {
    if (host.dtype == to) return host;
    Tensor t = allocate_uninitialized(to, host.shape);
    cpu::convert_parallel(host.data, host.dtype, t.data, to, host.numel());
    return t;
  }

  int threads_;
  DType act_;
  PackedBatch batch_;
  cpu::Gemm gemm_;
  std::vector<float> rope_cos_, rope_sin_;  // [T, d / 2] of the current batch
  int64_t rope_d_ = 0;
  float rope_theta_ = 0.0f;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(Precision precision, int threads) {
  return std::make_unique<CpuBackend>(precision, threads);
}

}  // namespace ember
