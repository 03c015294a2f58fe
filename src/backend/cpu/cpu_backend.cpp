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
    require(!hosts.empty() && hosts.front().shape.size() == 2, "a stacked weight needs 2-D [out, in] parts");
    if (std::none_of(hosts.begin(), hosts.end(), [&](const Tensor& h) { return h.dtype == act_; })) {
      std::vector<cpu::Gemm::Part> parts;
      int64_t rows = 0;
      for (const Tensor& host : hosts) {
        require(host.shape.size() == 2 && host.dim(1) == hosts.front().dim(1) &&
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
      require(host.shape.size() == 2 && host.dim(1) == hosts.front().dim(1),
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
    const int64_t T = batch_.tokens(), d = q_norm.numel();
    check_norm(q_norm, d);
    check_norm(k_norm, d);
    require(d % 2 == 0, "RoPE needs an even head_dim, got " + std::to_string(d));
    const int64_t kv_heads = kv_heads_of(qkv, q_heads, d, "qk_norm_rope");
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
    require(out.shape.size() == 3 && out.dim(0) == T,
            "attention output must be [tokens, heads, head_dim], got " + describe(out));
    check_act(out, out.numel(), "attention output");
    const int64_t hq = out.dim(1), d = out.dim(2);
    const int64_t hkv = kv_heads_of(qkv, hq, d, "attention");
    require(hq % hkv == 0, "query heads (" + std::to_string(hq) + ") must be a multiple of key/value heads (" +
                               std::to_string(hkv) + ")");
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
    require(gate_up.shape.size() == 2 && gate_up.dim(1) % 2 == 0 && !out.shape.empty() &&
                out.dim(0) == gate_up.dim(0),
            "swiglu needs gate_up: [rows, 2 * n] and out: [rows, n], got " + describe(gate_up) + " and " +
                describe(out));
    check_act(gate_up, gate_up.numel(), "swiglu gate_up");
    check_act(out, gate_up.numel() / 2, "swiglu output");
    cpu::swiglu(gate_up.data, out.data, act_, gate_up.dim(0), gate_up.dim(1) / 2);
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

  // Hkv of qkv: [T, Hq + 2 Hkv, d] (any shape with that many elements).
  int64_t kv_heads_of(const Tensor& qkv, int64_t q_heads, int64_t d, const char* op) const {
    const int64_t T = batch_.tokens();
    const int64_t heads = T > 0 && qkv.numel() % (T * d) == 0 ? qkv.numel() / (T * d) : 0;
    require(heads > q_heads && (heads - q_heads) % 2 == 0,
            std::string(op) + " needs qkv: [tokens, q_heads + 2 * kv_heads, " + std::to_string(d) + "] with " +
                std::to_string(q_heads) + " q heads, got " + describe(qkv));
    check_act(qkv, qkv.numel(), op);
    return (heads - q_heads) / 2;
  }

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
