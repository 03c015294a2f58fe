// The CUDA backend: weights uploaded once into a device arena, every op launched on one stream
// (cuBLASLt for linear(), kernels.h for the rest, attention.h for attention), and whole forward
// passes of small batches recorded as CUDA graphs.
#include "backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "backend/cuda/attention.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_memory.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/graph_cache.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/op_profile.h"
#include "backend/cuda/weight_upload.h"
#include "ember/error.h"

namespace ember {
namespace {

using cuda::bf16;
using cuda::check;

void require(bool ok, const std::string& message) {
  if (!ok) throw Error("CUDA backend: " + message);
}

std::string describe(const Tensor& t) { return std::string(dtype_name(t.dtype)) + shape_string(t.shape); }

bf16* bf16_ptr(const Tensor& t) { return static_cast<bf16*>(t.data); }

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, const CudaBackendOptions& options)
      : device_(device),
        options_(options),
        memory_(std::make_shared<cuda::MemoryCounter>()),
        arena_(memory_),
        uploader_(memory_),
        graphs_(std::max<size_t>(options.graph_cache_entries, 1)) {
    check(cudaSetDevice(device_), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreateWithFlags(&batch_copied_, cudaEventDisableTiming), "cudaEventCreate");
    gemm_ = std::make_unique<cuda::Gemm>(memory_, options.tune_gemms);
    if (cuda::OpProfile::requested()) profile_ = std::make_unique<cuda::OpProfile>(stream_);
  }

  ~CudaBackend() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    graphs_.clear();
    profile_.reset();
    gemm_.reset();
    if (batch_pinned_) cudaFreeHost(batch_pinned_);
    cudaEventDestroy(batch_copied_);
    cudaStreamDestroy(stream_);
  }

  const char* name() const override { return "cuda"; }
  DType activation_dtype() const override { return DType::BF16; }
  int64_t device_memory_bytes() const override { return memory_->bytes.load(); }

  std::string profile_report() override {
    if (!profile_) return "";
    check(cudaStreamSynchronize(stream_), "finishing profiled work");
    profile_->collect();
    return profile_->report(gemm_->tuning_log());
  }

  Tensor load_weight(const Tensor& host, WeightKind kind) override {
    check_host_weight(host, kind);
    check(cudaSetDevice(device_), "cudaSetDevice");
    Tensor t;
    t.dtype = kind == WeightKind::Vector ? DType::F32 : DType::BF16;
    t.shape = host.shape;
    t.storage = arena_.take(t.nbytes());
    t.data = t.storage.get();
    uploader_.upload(host.data, host.dtype, t.data, t.dtype, host.numel());
    if (kind == WeightKind::EmbeddingTable) vocab_ = host.dim(0);
    return t;
  }

  // The parts land one after another in one arena allocation: a [sum of n_i, in] matrix.
  Tensor load_stacked_weight(const std::vector<Tensor>& hosts) override {
    require(!hosts.empty(), "a stacked weight needs at least one part");
    int64_t rows = 0;
    for (const Tensor& host : hosts) {
      check_host_weight(host, WeightKind::Matrix);
      require(host.dim(1) == hosts.front().dim(1), "stacked weight parts must share the input size, got " +
                                                       describe(hosts.front()) + " and " + describe(host));
      rows += host.dim(0);
    }
    check(cudaSetDevice(device_), "cudaSetDevice");
    Tensor t;
    t.dtype = DType::BF16;
    t.shape = {rows, hosts.front().dim(1)};
    t.storage = arena_.take(t.nbytes());
    t.data = t.storage.get();
    int64_t offset = 0;
    for (const Tensor& host : hosts) {
      uploader_.upload(host.data, host.dtype, bf16_ptr(t) + offset, t.dtype, host.numel());
      offset += host.numel();
    }
    return t;
  }

  Tensor allocate(DType dtype, std::vector<int64_t> shape) override {
    check(cudaSetDevice(device_), "cudaSetDevice");
    Tensor t;
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.storage = cuda::device_alloc(t.nbytes(), memory_, ("a " + describe(t) + " activation buffer").c_str());
    t.data = t.storage.get();
    check(cudaMemsetAsync(t.data, 0, t.nbytes(), stream_), "cudaMemsetAsync");
    // Host copies on other streams (tests) must not race the clearing; and a buffer may now sit
    // where a recorded graph's buffer was.
    check(cudaStreamSynchronize(stream_), "clearing a new buffer");
    drop_graphs();
    return t;
  }

  void set_batch(const PackedBatch& batch) override {
    const auto& off = batch.seq_offsets;
    require(!off.empty() && off.front() == 0 && off.back() == batch.tokens(),
            "batch offsets must start at 0 and end at the token count");
    require(batch.positions.size() == batch.token_ids.size(), "batch needs one position per token");
    int64_t longest = 0;
    for (size_t s = 0; s + 1 < off.size(); ++s) {
      require(off[s] < off[s + 1], "batch holds an empty sequence");
      longest = std::max<int64_t>(longest, off[s + 1] - off[s]);
    }
    if (vocab_ > 0) {
      for (int32_t id : batch.token_ids) {
        require(id >= 0 && id < vocab_,
                "token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(vocab_));
      }
    }
    check(cudaSetDevice(device_), "cudaSetDevice");
    weights_ready();
    tokens_ = batch.tokens();
    sequences_ = batch.sequences();
    max_seq_len_ = longest;
    if (profile_) profile_->set_batch(tokens_, sequences_);
    reserve_batch(tokens_);
    // The pinned staging is reused: the previous batch's copy must have left it.
    check(cudaEventSynchronize(batch_copied_), "uploading the batch");
    auto* pinned = static_cast<int32_t*>(batch_pinned_);
    std::copy(batch.token_ids.begin(), batch.token_ids.end(), pinned);
    std::copy(batch.positions.begin(), batch.positions.end(), pinned + batch_capacity_);
    std::copy(off.begin(), off.end(), pinned + 2 * batch_capacity_);
    const size_t t_bytes = static_cast<size_t>(tokens_) * 4;
    check(cudaMemcpyAsync(ids_, pinned, t_bytes, cudaMemcpyHostToDevice, stream_), "uploading token ids");
    check(cudaMemcpyAsync(positions_, pinned + batch_capacity_, t_bytes, cudaMemcpyHostToDevice, stream_),
          "uploading positions");
    check(cudaMemcpyAsync(offsets_, pinned + 2 * batch_capacity_, off.size() * 4, cudaMemcpyHostToDevice, stream_),
          "uploading sequence offsets");
    check(cudaEventRecord(batch_copied_, stream_), "cudaEventRecord");
  }

  void embed_tokens(const Tensor& table, Tensor& x) override {
    weights_ready();
    require(table.dtype == DType::BF16 && table.shape.size() == 2,
            "embedding table must be a BF16 [vocab, hidden] weight from load_weight, got " + describe(table));
    const int64_t hidden = table.dim(1);
    check_act(x, tokens_ * hidden, "embed_tokens output");
    timed("embed_tokens", 0, 4.0 * tokens_ * hidden,
          [&] { cuda::embed_gather(bf16_ptr(table), ids_, bf16_ptr(x), tokens_, hidden, stream_); });
  }

  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    weights_ready();
    const int64_t n = w.numel();
    check_norm(w, n);
    check_act(x, x.numel(), "rms_norm input");
    require(x.numel() % n == 0, "rms_norm input " + describe(x) + " does not have rows of " + std::to_string(n));
    check_act(out, x.numel(), "rms_norm output");
    timed("rms_norm", 0, 4.0 * x.numel(),
          [&] { cuda::rms_norm(bf16_ptr(x), w.as<float>(), bf16_ptr(out), x.numel() / n, n, eps, stream_); });
  }

  void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    weights_ready();
    const int64_t n = w.numel();
    check_norm(w, n);
    check_act(residual, residual.numel(), "add_rms_norm residual");
    require(residual.numel() % n == 0,
            "add_rms_norm residual " + describe(residual) + " does not have rows of " + std::to_string(n));
    check_act(x, residual.numel(), "add_rms_norm input");
    check_act(out, residual.numel(), "add_rms_norm output");
    timed("add_rms_norm", 0, 8.0 * residual.numel(), [&] {
      cuda::add_rms_norm(bf16_ptr(residual), bf16_ptr(x), w.as<float>(), bf16_ptr(out), residual.numel() / n, n, eps,
                         stream_);
    });
  }

  void linear(const Tensor& x, const Tensor& w, Tensor& out) override {
    weights_ready();
    require(w.shape.size() == 2 && w.dtype == DType::BF16,
            "linear weight must be a BF16 [out, in] matrix from load_weight, got " + describe(w));
    const int64_t n = w.dim(0), k = w.dim(1);
    check_act(x, x.numel(), "linear input");
    require(x.numel() % k == 0, "linear input " + describe(x) + " does not have rows of " + std::to_string(k));
    const int64_t m = x.numel() / k;
    check_act(out, m * n, "linear output");
    const auto run = [&] { gemm_->run(bf16_ptr(x), bf16_ptr(w), bf16_ptr(out), m, n, k, stream_); };
    if (!profile_) return run();
    timed("linear N=" + std::to_string(n) + " K=" + std::to_string(k), 2.0 * m * n * k, 2.0 * (m * k + n * k + m * n),
          run);
  }

  void qk_norm_rope(Tensor& qkv, int64_t q_heads, const Tensor& q_norm, const Tensor& k_norm, float eps,
                    float theta) override {
    weights_ready();
    const int64_t T = tokens_, d = q_norm.numel();
    check_norm(q_norm, d);
    check_norm(k_norm, d);
    require(d % 2 == 0 && d <= cuda::kMaxHeadDim,
            "RoPE needs an even head_dim of at most " + std::to_string(cuda::kMaxHeadDim) + ", got " +
                std::to_string(d));
    const int64_t kv_heads = kv_heads_of(qkv, q_heads, d, "qk_norm_rope");
    if (rope_d_ != d || rope_theta_ != theta) {
      // Every step in fp32 like the HF rotary embedding (and the CPU backend's rope_table).
      for (int64_t i = 0; i < d / 2; ++i) {
        rope_.inv_freq[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(d));
      }
      rope_d_ = d;
      rope_theta_ = theta;
    }
    timed("qk_norm_rope", 0, 4.0 * T * (q_heads + kv_heads) * d, [&] {
      cuda::qk_norm_rope(bf16_ptr(qkv), q_norm.as<float>(), k_norm.as<float>(), positions_, T,
                         static_cast<int>(q_heads), static_cast<int>(kv_heads), static_cast<int>(d), eps, rope_,
                         stream_);
    });
  }

  // q, k and v are read in place from the fused projection output: column blocks of each row.
  void attention(const Tensor& qkv, Tensor& out) override {
    weights_ready();
    const int64_t T = tokens_;
    require(out.shape.size() == 3 && out.dim(0) == T,
            "attention output must be [tokens, heads, head_dim], got " + describe(out));
    check_act(out, out.numel(), "attention output");
    const int64_t hq = out.dim(1), d = out.dim(2);
    const int64_t hkv = kv_heads_of(qkv, hq, d, "attention");
    require(hq % hkv == 0, "query heads (" + std::to_string(hq) + ") must be a multiple of key/value heads (" +
                               std::to_string(hkv) + ")");
    const int64_t row = (hq + 2 * hkv) * d;
    const bf16* q = bf16_ptr(qkv);
    timed("attention", 0, 0, [&] {
      cuda::attention_varlen(q, q + hq * d, q + (hq + hkv) * d, bf16_ptr(out), offsets_, static_cast<int>(sequences_),
                             T, static_cast<int>(max_seq_len_), static_cast<int>(hq), static_cast<int>(hkv),
                             static_cast<int>(d), stream_, row, row);
    });
  }

  void swiglu(const Tensor& gate_up, Tensor& out) override {
    weights_ready();
    require(gate_up.shape.size() == 2 && gate_up.dim(1) % 2 == 0 && !out.shape.empty() &&
                out.dim(0) == gate_up.dim(0),
            "swiglu needs gate_up: [rows, 2 * n] and out: [rows, n], got " + describe(gate_up) + " and " +
                describe(out));
    check_act(gate_up, gate_up.numel(), "swiglu gate_up");
    check_act(out, gate_up.numel() / 2, "swiglu output");
    const int64_t rows = gate_up.dim(0), n = gate_up.dim(1) / 2;
    timed("swiglu", 0, 3.0 * gate_up.numel(),
          [&] { cuda::swiglu(bf16_ptr(gate_up), bf16_ptr(out), rows, n, stream_); });
  }

  void gather_last_tokens(const Tensor& x, Tensor& out) override {
    weights_ready();
    const int64_t T = tokens_, S = sequences_;
    require(!x.shape.empty() && x.dim(0) == T,
            "gather_last_tokens input must have one row per token, got " + describe(x));
    const int64_t n = x.numel() / T;
    check_act(x, T * n, "gather_last_tokens input");
    check_act(out, S * n, "gather_last_tokens output");
    timed("gather_last_tokens", 0, 4.0 * S * n,
          [&] { cuda::gather_last_tokens(bf16_ptr(x), offsets_, bf16_ptr(out), S, n, stream_); });
  }

  std::vector<float> to_host_f32(const Tensor& t) override {
    require(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16,
            "to_host_f32 needs a floating-point tensor, got " + describe(t));
    check(cudaSetDevice(device_), "cudaSetDevice");
    weights_ready();
    std::vector<float> host(static_cast<size_t>(t.numel()));
    const void* src = t.data;
    if (t.dtype != DType::F32) {
      if (scratch_bytes_ < host.size() * 4) {
        scratch_ = cuda::device_alloc(host.size() * 4, memory_, "the output staging buffer");
        scratch_bytes_ = host.size() * 4;
      }
      cuda::convert(t.data, t.dtype, scratch_.get(), DType::F32, t.numel(), stream_);
      src = scratch_.get();
    }
    check(cudaMemcpyAsync(host.data(), src, host.size() * 4, cudaMemcpyDeviceToHost, stream_), "copying results");
    check(cudaStreamSynchronize(stream_), "running the forward pass");
    if (profile_) profile_->collect();
    return host;
  }

  void run_forward(const std::function<void()>& ops) override {
    check(cudaSetDevice(device_), "cudaSetDevice");
    weights_ready();
    if (!options_.use_graphs || tokens_ > options_.max_graph_tokens || profile_) {
      ops();
      return;
    }
    graphs_.run({tokens_, sequences_, max_seq_len_}, stream_, ops);
  }

 private:
  // Runs `launch`; when profiling, times it as one `label` op moving `bytes` / doing `flops`.
  template <class Launch>
  void timed(const std::string& label, double flops, double bytes, const Launch& launch) {
    if (!profile_) return launch();
    profile_->begin();
    launch();
    profile_->end(label, flops, bytes);
  }

  // Weights are uploaded asynchronously; the first op after the last load_weight waits for them.
  void weights_ready() {
    if (uploader_.pending()) uploader_.finish();
  }

  void drop_graphs() {
    if (graphs_.size() == 0) return;
    check(cudaStreamSynchronize(stream_), "finishing recorded work");
    graphs_.clear();
  }

  // Device (and pinned host) buffers for `tokens` ids, positions and offsets at fixed addresses:
  // recorded graphs read them there, so growing drops the recordings.
  void reserve_batch(int64_t tokens) {
    if (tokens <= batch_capacity_) return;
    drop_graphs();
    check(cudaEventSynchronize(batch_copied_), "uploading the batch");
    const int64_t capacity = std::max<int64_t>((tokens + 1023) / 1024 * 1024, 2 * batch_capacity_);
    const size_t bytes = static_cast<size_t>(3 * capacity + 1) * sizeof(int32_t);
    batch_device_.reset();
    batch_device_ = cuda::device_alloc(bytes, memory_, "the batch's token ids, positions and offsets");
    if (batch_pinned_) cudaFreeHost(batch_pinned_);
    batch_pinned_ = nullptr;
    check(cudaHostAlloc(&batch_pinned_, bytes, cudaHostAllocDefault), "allocating pinned batch staging");
    batch_capacity_ = capacity;
    ids_ = static_cast<int32_t*>(batch_device_.get());
    positions_ = ids_ + capacity;
    offsets_ = ids_ + 2 * capacity;
  }

  static void check_host_weight(const Tensor& host, WeightKind kind) {
    require(host.dtype == DType::F32 || host.dtype == DType::F16 || host.dtype == DType::BF16,
            "weights must be F32, F16 or BF16, got " + describe(host));
    require(kind == WeightKind::Vector || host.shape.size() == 2,
            "matrix and embedding weights must be 2-D, got " + describe(host));
  }

  // Hkv of qkv: [T, Hq + 2 Hkv, d] (any shape with that many elements).
  int64_t kv_heads_of(const Tensor& qkv, int64_t q_heads, int64_t d, const char* op) const {
    const int64_t T = tokens_;
    const int64_t heads = T > 0 && qkv.numel() % (T * d) == 0 ? qkv.numel() / (T * d) : 0;
    require(heads > q_heads && (heads - q_heads) % 2 == 0,
            std::string(op) + " needs qkv: [tokens, q_heads + 2 * kv_heads, " + std::to_string(d) + "] with " +
                std::to_string(q_heads) + " q heads, got " + describe(qkv));
    check_act(qkv, qkv.numel(), op);
    return (heads - q_heads) / 2;
  }

  void check_act(const Tensor& t, int64_t numel, const char* what) const {
    require(t.dtype == DType::BF16 && t.numel() == numel && t.data != nullptr,
            std::string(what) + " must be BF16 with " + std::to_string(numel) + " elements, got " + describe(t));
  }

  static void check_norm(const Tensor& w, int64_t n) {
    require(w.dtype == DType::F32 && w.numel() == n && n > 0,
            "norm weight must be an F32 vector from load_weight, got " + describe(w));
  }

  int device_;
  CudaBackendOptions options_;
  std::shared_ptr<cuda::MemoryCounter> memory_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t batch_copied_ = nullptr;
  std::unique_ptr<cuda::Gemm> gemm_;
  cuda::WeightArena arena_;
  cuda::WeightUploader uploader_;
  int64_t vocab_ = 0;

  int64_t tokens_ = 0, sequences_ = 0, max_seq_len_ = 0;
  int64_t batch_capacity_ = 0;
  std::shared_ptr<void> batch_device_;
  void* batch_pinned_ = nullptr;
  int32_t *ids_ = nullptr, *positions_ = nullptr, *offsets_ = nullptr;

  std::shared_ptr<void> scratch_;
  size_t scratch_bytes_ = 0;
  cuda::RopeFreqs rope_{};
  int64_t rope_d_ = 0;
  float rope_theta_ = 0.0f;
  cuda::GraphCache graphs_;
  std::unique_ptr<cuda::OpProfile> profile_;  // EMBER_CUDA_PROFILE
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(Precision precision, int device_index, const CudaBackendOptions& options) {
  if (precision == Precision::Exact) {
    throw Error("exact precision runs on the CPU; the CUDA backend computes in bf16 (fast)");
  }
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw Error(std::string("no CUDA device is available (") +
                (status != cudaSuccess ? cudaGetErrorString(status) : "none found") + "); use --device cpu");
  }
  if (device_index < 0 || device_index >= count) {
    throw Error("CUDA device " + std::to_string(device_index) + " does not exist (" + std::to_string(count) +
                " found)");
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device_index), "cudaGetDeviceProperties");
  if (prop.major != 9 || prop.minor != 0) {
    throw Error("the CUDA backend is built for Hopper (sm_90a); device " + std::to_string(device_index) + " is a " +
                prop.name + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")");
  }
  return std::make_unique<CudaBackend>(device_index, options);
}

}  // namespace ember
