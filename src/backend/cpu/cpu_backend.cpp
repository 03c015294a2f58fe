// The CPU backend: oneDNN matmuls for linear(), OpenMP loops for the rest (kernels.cpp,
// attention*.cpp). Exact precision keeps every activation and weight in fp32; fast precision
// stores activations as bf16 and multiplies bf16 weights, as a GPU would. Matrix weights already
// in the compute type are used in place; others are converted once at load into oneDNN's packed
// layout (gemm.h). Embedding tables stay as stored; norm vectors become fp32.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>

#include "backend/backend.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/kernels.h"
#include "backend/op_checks.h"
#include "ember/error.h"

namespace ember {
namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(Precision precision, int threads)
      : threads_(threads > 0 ? threads : omp_get_num_procs()),
        act_(precision == Precision::Fast ? DType::BF16 : DType::F32),
        checks_("CPU backend", act_) {
    checks_.require(threads >= 0, "thread count must be 0 (all cores) or positive, got " + std::to_string(threads));
    omp_set_num_threads(threads_);
  }

  const char* name() const override { return "cpu"; }
  DType activation_dtype() const override { return act_; }

  Tensor load_weight(const Tensor& host, WeightKind kind) override {
    checks_.require(host.dtype == DType::F32 || host.dtype == DType::F16 || host.dtype == DType::BF16,
                    "weights must be F32, F16 or BF16, got " + describe(host));
    enter();
    switch (kind) {
      case WeightKind::Vector:
        return converted(host, DType::F32);
      case WeightKind::EmbeddingTable:
        checks_.require(host.shape.size() == 2, "embedding table must be [vocab, hidden], got " + describe(host));
        return host;  // rows are converted as they are gathered
      case WeightKind::Matrix:
        checks_.require(host.shape.size() == 2, "matrix weight must be [out, in], got " + describe(host));
        return host.dtype == act_ ? host : packed(host);
    }
    return host;
  }

  // Parts that need converting (none already in the compute type) are converted into one packed
  // matrix, like load_weight does for a single one. Otherwise the parts stay where load_weight puts
  // them. Parts used in place that lie back to back in memory (make_model writes q/k/v and gate/up
  // so; HF checkpoints, sorted by name, gate/up) are the stacked matrix already. Otherwise the
  // stacked tensor only names its parts: its data is the parts list, which linear() finds in
  // stacked_ and runs as one GEMM per part into a contiguous scratch block that is then copied
  // into the part's columns of the output. Measured on the target CPU (2 threads, T = 512, the
  // 0.6B q/k/v), oneDNN runs a GEMM into strided output columns 5% (bf16) to 27% (fp32) slower,
  // while the copy costs about 1%.
  Tensor load_stacked_weight(const std::vector<Tensor>& hosts) override {
    checks_.require(!hosts.empty() && hosts.front().shape.size() == 2, "a stacked weight needs 2-D [out, in] parts");
    if (std::none_of(hosts.begin(), hosts.end(), [&](const Tensor& h) { return h.dtype == act_; })) {
      std::vector<cpu::Gemm::Part> parts;
      int64_t rows = 0;
      for (const Tensor& host : hosts) {
        checks_.require(host.shape.size() == 2 && host.dim(1) == hosts.front().dim(1) &&
                            (host.dtype == DType::F32 || host.dtype == DType::F16 || host.dtype == DType::BF16),
                        "stacked weight parts must be F32, F16 or BF16 and share the input size, got " +
                            describe(hosts.front()) + " and " + describe(host));
        parts.push_back({host.data, host.dtype, host.dim(0)});
        rows += host.dim(0);
      }
      enter();
      return packed(parts, rows, hosts.front().dim(1));
    }
    auto parts = std::make_shared<StackedParts>();
    int64_t rows = 0;
    bool back_to_back = true;
    for (const Tensor& host : hosts) {
      checks_.require(host.shape.size() == 2 && host.dim(1) == hosts.front().dim(1),
                      "stacked weight parts must share the input size, got " + describe(hosts.front()) + " and " +
                          describe(host));
      parts->parts.push_back(load_weight(host, WeightKind::Matrix));
      back_to_back = back_to_back && parts->parts.back().data == host.data &&
                     (rows == 0 || host.data == static_cast<const char*>(hosts.front().data) +
                                                    rows * host.dim(1) * static_cast<int64_t>(dtype_size(act_)));
      rows += host.dim(0);
    }
    Tensor t;
    t.dtype = act_;
    t.shape = {rows, hosts.front().dim(1)};
    if (back_to_back) {
      t.data = hosts.front().data;
      t.storage = hosts.front().storage;
      return t;
    }
    t.data = parts.get();
    stacked_[t.data] = parts;
    t.storage = std::move(parts);
    return t;
  }

  Tensor allocate(DType dtype, std::vector<int64_t> shape) override {
    Tensor t = allocate_uninitialized(dtype, std::move(shape));
    std::memset(t.data, 0, t.nbytes());
    return t;
  }

  void set_batch(const PackedBatch& batch) override {
    checks_.batch(batch);
    batch_ = batch;
    rope_d_ = 0;
  }

  void embed_tokens(const Tensor& table, Tensor& x) override {
    enter();
    const int64_t T = batch_.tokens(), vocab = table.dim(0), hidden = table.dim(1);
    checks_.act(x, T * hidden, "embed_tokens output");
    checks_.token_ids(batch_.token_ids, vocab);
    cpu::gather_rows(table.data, table.dtype, hidden, batch_.token_ids.data(), T, x.data, act_);
  }

  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    enter();
    const auto [rows, n] = checks_.rms_norm(x, w, out);
    cpu::rms_norm(x.data, out.data, act_, w.as<float>(), eps, rows, n);
  }

  void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    enter();
    const auto [rows, n] = checks_.add_rms_norm(residual, x, w, out);
    cpu::add_rms_norm(residual.data, x.data, out.data, act_, w.as<float>(), eps, rows, n);
  }

  void linear(const Tensor& x, const Tensor& w, Tensor& out) override {
    enter();
    const auto [m, n, k] = checks_.linear(x, w, out);
    if (const std::shared_ptr<StackedParts> stacked = stacked_parts(w)) {
      int64_t col = 0;
      for (const Tensor& part : stacked->parts) {
        const int64_t rows = part.dim(0);
        if (part_out_.numel() < m * rows) part_out_ = allocate_uninitialized(act_, {m * rows});
        gemm_.run(x.data, part.data, is_packed(part), part_out_.data, m, k, rows, act_);
        cpu::copy_into_columns(part_out_.data, out.data, n, col, m, rows, act_);
        col += rows;
      }
      return;
    }
    gemm_.run(x.data, w.data, is_packed(w), out.data, m, k, n, act_);
  }

  void qk_norm_rope(Tensor& qkv, int64_t q_heads, const Tensor& q_norm, const Tensor& k_norm, float eps,
                    float theta) override {
    enter();
    const int64_t T = batch_.tokens();
    const OpChecks::Heads heads = checks_.qk_norm_rope(qkv, q_heads, q_norm, k_norm, T);
    const int64_t kv_heads = heads.kv_heads, d = heads.d;
    if (rope_d_ != d || rope_theta_ != theta) {
      rope_cos_.resize(static_cast<size_t>(T * d / 2));
      rope_sin_.resize(rope_cos_.size());
      cpu::rope_table(batch_.positions.data(), T, d, theta, rope_cos_.data(), rope_sin_.data());
      rope_d_ = d;
      rope_theta_ = theta;
    }
    const int64_t row = (q_heads + 2 * kv_heads) * d;
    char* q = static_cast<char*>(qkv.data);
    char* k = q + q_heads * d * static_cast<int64_t>(dtype_size(act_));
    cpu::head_norm_rope(q, act_, T, row, q_heads, d, q_norm.as<float>(), eps, rope_cos_.data(), rope_sin_.data());
    cpu::head_norm_rope(k, act_, T, row, kv_heads, d, k_norm.as<float>(), eps, rope_cos_.data(), rope_sin_.data());
  }

  void attention(const Tensor& qkv, Tensor& out) override {
    enter();
    const int64_t T = batch_.tokens();
    const auto [hq, hkv, d] = checks_.attention(qkv, out, T);
    // q, k and v are read in place: column blocks of each token's row.
    const int64_t row = (hq + 2 * hkv) * d, size = static_cast<int64_t>(dtype_size(act_));
    const char* q = static_cast<const char*>(qkv.data);
    cpu::AttentionArgs args;
    args.q = q;
    args.k = q + hq * d * size;
    args.v = q + (hq + hkv) * d * size;
    args.q_stride = row;
    args.kv_stride = row;
    args.out = out.data;
    args.bf16 = act_ == DType::BF16;
    args.tokens = T;
    args.hq = static_cast<int>(hq);
    args.hkv = static_cast<int>(hkv);
    args.d = static_cast<int>(d);
    args.seq_offsets = batch_.seq_offsets.data();
    args.sequences = batch_.sequences();
    args.scale = 1.0f / std::sqrt(static_cast<float>(args.d));
    cpu::attention(args);
  }

  void swiglu(const Tensor& gate_up, Tensor& out) override {
    enter();
    const auto [rows, n] = checks_.swiglu(gate_up, out);
    cpu::swiglu(gate_up.data, out.data, act_, rows, n);
  }

  void gather_last_tokens(const Tensor& x, Tensor& out) override {
    enter();
    const int64_t T = batch_.tokens(), S = batch_.sequences();
    const int64_t n = checks_.gather_last_tokens(x, out, T, S);
    std::vector<int32_t> last(static_cast<size_t>(S));
    for (int64_t s = 0; s < S; ++s) last[s] = batch_.seq_offsets[s + 1] - 1;
    cpu::gather_rows(x.data, act_, n, last.data(), S, out.data, act_);
  }

  std::vector<float> to_host_f32(const Tensor& t) override {
    checks_.to_host_f32(t);
    enter();
    std::vector<float> host(static_cast<size_t>(t.numel()));
    cpu::convert_parallel(t.data, t.dtype, host.data(), DType::F32, t.numel());
    return host;
  }

 private:
  struct StackedParts {
    std::vector<Tensor> parts;
  };

  // OpenMP thread counts are per calling thread; the engine may call from any thread.
  void enter() const { omp_set_num_threads(threads_); }

  // The parts of a stacked weight from load_stacked_weight, or null for any other tensor.
  std::shared_ptr<StackedParts> stacked_parts(const Tensor& w) {
    const auto it = stacked_.find(w.data);
    if (it == stacked_.end()) return nullptr;
    std::shared_ptr<StackedParts> parts = it->second.lock();
    if (!parts) stacked_.erase(it);  // a freed stacked weight; w is something else at that address
    return parts;
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

  // A matrix that needs converting to the compute type, converted straight into oneDNN's blocked
  // layout (see gemm.h). The tensor's data is opaque from then on: only linear() reads it.
  Tensor packed(const Tensor& host) { return packed({{host.data, host.dtype, host.dim(0)}}, host.dim(0), host.dim(1)); }

  // The parts, [n, k] in all, stacked row-wise, converted and packed.
  Tensor packed(const std::vector<cpu::Gemm::Part>& parts, int64_t n, int64_t k) {
    const size_t bytes = gemm_.packed_bytes(n, k, act_);
    void* p = std::aligned_alloc(64, (bytes + 63) & ~size_t{63});
    Tensor t;
    t.dtype = act_;
    t.shape = {n, k};
    if (p == nullptr) throw Error("CPU backend: out of memory converting a " + describe(t) + " weight");
    t.storage = std::shared_ptr<void>(p, &std::free);
    t.data = p;
    gemm_.pack(parts, k, act_, p);
    packed_[p] = t.storage;
    return t;
  }

  bool is_packed(const Tensor& w) {
    auto it = packed_.find(w.data);
    if (it == packed_.end()) return false;
    if (it->second.expired()) {  // freed; the address now belongs to something else
      packed_.erase(it);
      return false;
    }
    return true;
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
  OpChecks checks_;
  PackedBatch batch_;
  cpu::Gemm gemm_;
  std::unordered_map<const void*, std::weak_ptr<void>> packed_;  // weights in oneDNN's layout
  std::map<const void*, std::weak_ptr<StackedParts>> stacked_;
  Tensor part_out_;   // one part's output of a stacked linear(), before it goes to its columns
  std::vector<float> rope_cos_, rope_sin_;  // [T, d / 2] of the current batch
  int64_t rope_d_ = 0;
  float rope_theta_ = 0.0f;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(Precision precision, int threads) {
  return std::make_unique<CpuBackend>(precision, threads);
}

}  // namespace ember
