// The CUDA backend: weights uploaded once into a device arena, every op launched on one stream
// (cuBLASLt for linear(), kernels.h for the rest, attention.h for attention), and whole forward
// passes of small batches recorded as CUDA graphs. One class template over the 16-bit type of
// weights and activations: bf16, or fp16 by option.
#include "backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "backend/cuda/attention.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_memory.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/graph_cache.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/op_profile.h"
#include "backend/cuda/weight_upload.h"
#include "backend/op_checks.h"
#include "ember/error.h"

namespace ember {
namespace {

using cuda::check;

// Half: cuda::bf16 or cuda::f16, the type of every matrix weight and activation.
template <class Half>
class CudaBackend final : public Backend {
  static constexpr DType kHalf = std::is_same_v<Half, cuda::f16> ? DType::F16 : DType::BF16;
  static Half* ptr(const Tensor& t) { return static_cast<Half*>(t.data); }

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
    gemm_ = std::make_unique<cuda::Gemm>(memory_, options.tune_gemms, kHalf);
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
  DType activation_dtype() const override { return kHalf; }
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
    t.dtype = kind == WeightKind::Vector ? DType::F32 : kHalf;
    t.shape = host.shape;
    t.storage = arena_.take(t.nbytes());
    t.data = t.storage.get();
    upload(host, t.data, t.dtype, "weight " + describe(host));
    if (kind == WeightKind::EmbeddingTable) vocab_ = host.dim(0);
    return t;
  }

  // The parts land one after another in one arena allocation: a [sum of n_i, in] matrix.
  Tensor load_stacked_weight(const std::vector<Tensor>& hosts) override {
    checks_.require(!hosts.empty(), "a stacked weight needs at least one part");
    int64_t rows = 0;
    for (const Tensor& host : hosts) {
      check_host_weight(host, WeightKind::Matrix);
      checks_.require(host.dim(1) == hosts.front().dim(1), "stacked weight parts must share the input size, got " +
                                                               describe(hosts.front()) + " and " + describe(host));
      rows += host.dim(0);
    }
    check(cudaSetDevice(device_), "cudaSetDevice");
    Tensor t;
    t.dtype = kHalf;
    t.shape = {rows, hosts.front().dim(1)};
    t.storage = arena_.take(t.nbytes());
    t.data = t.storage.get();
    int64_t offset = 0;
    for (size_t i = 0; i < hosts.size(); ++i) {
      upload(hosts[i], ptr(t) + offset, t.dtype,
             "part " + std::to_string(i + 1) + " of " + std::to_string(hosts.size()) + " of a stacked weight, " +
                 describe(hosts[i]));
      offset += hosts[i].numel();
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
    const int64_t longest = checks_.batch(batch);
    if (vocab_ > 0) checks_.token_ids(batch.token_ids, vocab_);
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
    checks_.require(table.dtype == kHalf && table.shape.size() == 2,
                    std::string("embedding table must be a ") + dtype_name(kHalf) +
                        " [vocab, hidden] weight from load_weight, got " + describe(table));
    const int64_t hidden = table.dim(1);
    checks_.act(x, tokens_ * hidden, "embed_tokens output");
    timed("embed_tokens", 0, 4.0 * tokens_ * hidden,
          [&] { cuda::embed_gather(ptr(table), ids_, ptr(x), tokens_, hidden, stream_); });
  }

  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    weights_ready();
    const OpChecks::Rows size = checks_.rms_norm(x, w, out);
    timed("rms_norm", 0, 4.0 * x.numel(),
          [&] { cuda::rms_norm(ptr(x), w.as<float>(), ptr(out), size.rows, size.n, eps, stream_); });
  }

  void add_rms_norm(Tensor& residual, const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    weights_ready();
    const OpChecks::Rows size = checks_.add_rms_norm(residual, x, w, out);
    timed("add_rms_norm", 0, 8.0 * residual.numel(), [&] {
      cuda::add_rms_norm(ptr(residual), ptr(x), w.as<float>(), ptr(out), size.rows, size.n, eps, stream_);
    });
  }

  void linear(const Tensor& x, const Tensor& w, Tensor& out) override {
    weights_ready();
    const OpChecks::Matmul size = checks_.linear(x, w, out);
    const int64_t m = size.m, n = size.n, k = size.k;
    const auto run = [&] { gemm_->run(x.data, w.data, out.data, m, n, k, stream_); };
    if (!profile_) return run();
    timed("linear N=" + std::to_string(n) + " K=" + std::to_string(k), 2.0 * m * n * k, 2.0 * (m * k + n * k + m * n),
          run);
  }

  void qk_norm_rope(Tensor& qkv, int64_t q_heads, const Tensor& q_norm, const Tensor& k_norm, float eps,
                    float theta) override {
    weights_ready();
    const int64_t T = tokens_;
    const OpChecks::Heads heads = checks_.qk_norm_rope(qkv, q_heads, q_norm, k_norm, T, cuda::kMaxHeadDim);
    const int64_t kv_heads = heads.kv_heads, d = heads.d;
    if (rope_d_ != d || rope_theta_ != theta) {
      // Every step in fp32 like the HF rotary embedding (and the CPU backend's rope_table).
      for (int64_t i = 0; i < d / 2; ++i) {
        rope_.inv_freq[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(d));
      }
      rope_d_ = d;
      rope_theta_ = theta;
    }
    timed("qk_norm_rope", 0, 4.0 * T * (q_heads + kv_heads) * d, [&] {
      cuda::qk_norm_rope(ptr(qkv), q_norm.as<float>(), k_norm.as<float>(), positions_, T,
                         static_cast<int>(q_heads), static_cast<int>(kv_heads), static_cast<int>(d), eps, rope_,
                         stream_);
    });
  }

  // q, k and v are read in place from the fused projection output: column blocks of each row.
  void attention(const Tensor& qkv, Tensor& out) override {
    weights_ready();
    const int64_t T = tokens_;
    const OpChecks::Heads heads = checks_.attention(qkv, out, T);
    const int64_t hq = heads.q_heads, hkv = heads.kv_heads, d = heads.d;
    const int64_t row = (hq + 2 * hkv) * d;
    const Half* q = ptr(qkv);
    timed("attention", 0, 0, [&] {
      cuda::attention_varlen(q, q + hq * d, q + (hq + hkv) * d, ptr(out), offsets_, static_cast<int>(sequences_),
                             T, static_cast<int>(max_seq_len_), static_cast<int>(hq), static_cast<int>(hkv),
                             static_cast<int>(d), stream_, row, row);
    });
  }

  void swiglu(const Tensor& gate_up, Tensor& out) override {
    weights_ready();
    const OpChecks::Rows size = checks_.swiglu(gate_up, out);
    timed("swiglu", 0, 3.0 * gate_up.numel(),
          [&] { cuda::swiglu(ptr(gate_up), ptr(out), size.rows, size.n, stream_); });
  }

  void gather_last_tokens(const Tensor& x, Tensor& out) override {
    weights_ready();
    const int64_t T = tokens_, S = sequences_;
    const int64_t n = checks_.gather_last_tokens(x, out, T, S);
    timed("gather_last_tokens", 0, 4.0 * S * n,
          [&] { cuda::gather_last_tokens(ptr(x), offsets_, ptr(out), S, n, stream_); });
  }

  std::vector<float> to_host_f32(const Tensor& t) override {
    checks_.to_host_f32(t);
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

  // Converts host: [n] into dst on the device; `what` names the weight when F16 cannot hold a value.
  void upload(const Tensor& host, void* dst, DType dst_dtype, const std::string& what) {
    try {
      uploader_.upload(host.data, host.dtype, dst, dst_dtype, host.numel());
    } catch (const cuda::F16RangeError& e) {
      throw Error("CUDA backend: " + what + ": " + e.what() + "; run this model in bfloat16");
    }
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

  void check_host_weight(const Tensor& host, WeightKind kind) const {
    checks_.require(host.dtype == DType::F32 || host.dtype == DType::F16 || host.dtype == DType::BF16,
                    "weights must be F32, F16 or BF16, got " + describe(host));
    checks_.require(kind == WeightKind::Vector || host.shape.size() == 2,
                    "matrix and embedding weights must be 2-D, got " + describe(host));
  }

  const OpChecks checks_{"CUDA backend", kHalf};
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

std::unique_ptr<Backend> make_cuda_backend(Precision precision, HalfType half_type, int device_index,
                                           const CudaBackendOptions& options) {
  if (precision == Precision::Exact) {
    throw Error("exact precision runs on the CPU; the CUDA backend computes in bfloat16 or float16 (fast)");
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
  if (half_type == HalfType::Float16) return std::make_unique<CudaBackend<cuda::f16>>(device_index, options);
  return std::make_unique<CudaBackend<cuda::bf16>>(device_index, options);
}

}  // namespace ember
