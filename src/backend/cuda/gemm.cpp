#include "backend/cuda/gemm.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "backend/cuda/cuda_check.h"

namespace ember::cuda {
namespace {

// Batch sizes vary from call to call; past this many shapes the plans are rebuilt from scratch.
constexpr size_t kMaxPlans = 2048;
// Heuristic candidates considered when tuning a shape class.
constexpr int kCandidates = 12;
// Rough time one tuning may take: large GEMMs time fewer candidates, once each.
constexpr double kTuneBudgetUs = 40000;

int alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int bytes = 256;
  while (bytes > 2 && a % bytes != 0) bytes /= 2;
  return bytes;
}

std::string shape_text(int64_t m, int64_t n, int64_t k) {
  std::string s = "[";
  s += std::to_string(m) + " x " + std::to_string(k) + "] x [";
  s += std::to_string(k) + " x " + std::to_string(n) + "]";
  return s;
}

int64_t pow2_ceil(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

// A first guess of one call's time on an H100 (about 600 TFLOP/s, 3 TB/s) to size the tuning.
double estimate_us(int64_t m, int64_t n, int64_t k) {
  const double flops = 2.0 * m * n * k, bytes = 2.0 * (m * k + n * k + m * n);
  return std::max(flops / 600e12, bytes / 3e12) * 1e6;
}

}  // namespace

Gemm::Gemm(const std::shared_ptr<MemoryCounter>& counter, bool tune, DType dtype)
    : tune_(tune), dtype_(dtype), type_(dtype == DType::F16 ? CUDA_R_16F : CUDA_R_16BF) {
  if (dtype != DType::BF16 && dtype != DType::F16) {
    throw Error(std::string("CUDA backend: GEMMs take BF16 or F16 operands, not ") + dtype_name(dtype));
  }
  check(cublasLtCreate(&handle_), "cublasLtCreate");
  workspace_ = device_alloc(kWorkspaceBytes, counter, "the cuBLASLt workspace");
  check(cudaEventCreate(&start_), "cudaEventCreate (GEMM tuning)");
  check(cudaEventCreate(&stop_), "cudaEventCreate (GEMM tuning)");
}

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) destroy(p);
  cudaEventDestroy(start_);
  cudaEventDestroy(stop_);
  cublasLtDestroy(handle_);
}

void Gemm::destroy(Plan& p) {
  if (p.a) cublasLtMatrixLayoutDestroy(p.a);
  if (p.b) cublasLtMatrixLayoutDestroy(p.b);
  if (p.c) cublasLtMatrixLayoutDestroy(p.c);
  if (p.desc) cublasLtMatmulDescDestroy(p.desc);
}

void Gemm::launch(const Plan& p, const cublasLtMatmulAlgo_t& algo, const void* x, const void* w, void* out,
                  cudaStream_t stream, cublasStatus_t* status) {
  const float alpha = 1.0f, beta = 0.0f;
  *status = cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, out, p.c, out, p.c, &algo,
                           workspace_.get(), kWorkspaceBytes, stream);
}

int Gemm::fastest(const Plan& p, const std::vector<cublasLtMatmulHeuristicResult_t>& candidates, int reps, const void* x,
                  const void* w, void* out, cudaStream_t stream, std::vector<double>& us) {
  int best = 0;
  us.assign(candidates.size(), -1.0);
  for (size_t i = 0; i < candidates.size(); ++i) {
    cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
    launch(p, candidates[i].algo, x, w, out, stream, &status);  // loads the kernel
    if (status != CUBLAS_STATUS_SUCCESS) continue;
    check(cudaEventRecord(start_, stream), "cudaEventRecord (GEMM tuning)");
    for (int r = 0; r < reps && status == CUBLAS_STATUS_SUCCESS; ++r) launch(p, candidates[i].algo, x, w, out, stream, &status);
    check(cudaEventRecord(stop_, stream), "cudaEventRecord (GEMM tuning)");
    check(cudaEventSynchronize(stop_), "timing GEMM candidates");
    if (status != CUBLAS_STATUS_SUCCESS) continue;
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime (GEMM tuning)");
    us[i] = 1e3 * ms / reps;
    if (us[best] < 0 || us[i] < us[best]) best = static_cast<int>(i);
  }
  return best;
}

// Row-major out[m, n] = x[m, k] · w[n, k]^T is column-major out^T[n, m] = w^T · x, where w and x,
// read column-major, are [k, n] and [k, m]: cuBLASLt's "TN" case with A = w (transposed), B = x.
Gemm::Plan& Gemm::plan(const Key& key, const void* x, const void* w, void* out, cudaStream_t stream) {
  if (auto it = plans_.find(key); it != plans_.end()) return it->second;
  if (plans_.size() >= kMaxPlans) {
    for (auto& [k, p] : plans_) destroy(p);
    plans_.clear();
  }
  const auto [m, n, k, align_a, align_b, align_c] = key;
  Key class_key = key;
  std::get<0>(class_key) = pow2_ceil(m);
  Plan p;
  cublasLtMatmulPreference_t pref = nullptr;
  try {
    check(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof(transa)),
          "setting TRANSA");
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof(transb)),
          "setting TRANSB");
    check(cublasLtMatrixLayoutCreate(&p.a, type_, k, n, k), "cublasLtMatrixLayoutCreate (weights)");
    check(cublasLtMatrixLayoutCreate(&p.b, type_, k, m, k), "cublasLtMatrixLayoutCreate (input)");
    check(cublasLtMatrixLayoutCreate(&p.c, type_, n, m, n), "cublasLtMatrixLayoutCreate (output)");

    // A shape class already tuned: its algorithm, if it takes this exact shape.
    if (auto t = tuned_.find(class_key); t != tuned_.end()) {
      cublasLtMatmulHeuristicResult_t result{};
      if (cublasLtMatmulAlgoCheck(handle_, p.desc, p.a, p.b, p.c, p.c, &t->second, &result) ==
              CUBLAS_STATUS_SUCCESS &&
          result.workspaceSize <= kWorkspaceBytes) {
        p.algo = t->second;
        return plans_.emplace(key, p).first->second;
      }
    }

    check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    const size_t ws = kWorkspaceBytes;
    check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
          "setting the workspace size");
    const uint32_t aa = align_a, ab = align_b, ac = align_c;
    check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)),
          "setting the weight alignment");
    check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)),
          "setting the input alignment");
    check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac)),
          "setting the output alignment");
    check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac)),
          "setting the output alignment");
    std::vector<cublasLtMatmulHeuristicResult_t> results(kCandidates);
    int found = 0;
    check(cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, pref, kCandidates, results.data(),
                                         &found),
          ("choosing a GEMM algorithm for " + shape_text(m, n, k)).c_str());
    cublasLtMatmulPreferenceDestroy(pref);
    pref = nullptr;
    if (found == 0) {
      throw Error(std::string("CUDA backend: cuBLASLt has no ") + dtype_name(dtype_) + " GEMM algorithm for " +
                  shape_text(m, n, k));
    }
    results.resize(found);
    p.algo = results[0].algo;
    // Timing needs the stream to itself: never inside a graph capture (the backend runs every
    // shape eagerly before recording it, so captures find their plans made).
    if (tune_ && found > 1 && !capturing(stream)) {
      const double est = estimate_us(m, n, k);
      const int reps = est < 50 ? 5 : est < 500 ? 2 : 1;
      const int count = static_cast<int>(std::clamp<double>(kTuneBudgetUs / ((reps + 1) * est), 4, found));
      results.resize(std::min(found, count));
      std::vector<double> us;
      const int best = fastest(p, results, reps, x, w, out, stream, us);
      if (us[best] > 0) {
        p.algo = results[best].algo;
        tuned_[class_key] = p.algo;
        char line[200];
        std::snprintf(line, sizeof line, "%-30s heuristic's first %8.1f us, fastest (#%d of %zu) %8.1f us",
                      shape_text(m, n, k).c_str(), us[0], best + 1, results.size(), us[best]);
        tuning_log_.push_back(line);
      }
    }
  } catch (...) {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    destroy(p);
    throw;
  }
  return plans_.emplace(key, p).first->second;
}

void Gemm::run(const void* x, const void* w, void* out, int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  const Plan& p = plan(Key{m, n, k, alignment(w), alignment(x), alignment(out)}, x, w, out, stream);
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  launch(p, p.algo, x, w, out, stream, &status);
  check(status, ("cublasLtMatmul " + shape_text(m, n, k)).c_str());
}

}  // namespace ember::cuda
