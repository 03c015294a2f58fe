#include "backend/cuda/gemm.h"

#include <string>

#include "backend/cuda/cuda_check.h"

namespace ember::cuda {
namespace {

// Batch sizes vary from call to call; past this many shapes the plans are rebuilt from scratch.
constexpr size_t kMaxPlans = 2048;

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

}  // namespace

Gemm::Gemm(const std::shared_ptr<MemoryCounter>& counter) {
  check(cublasLtCreate(&handle_), "cublasLtCreate");
  workspace_ = device_alloc(kWorkspaceBytes, counter, "the cuBLASLt workspace");
}

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) destroy(p);
  cublasLtDestroy(handle_);
}

void Gemm::destroy(Plan& p) {
  if (p.a) cublasLtMatrixLayoutDestroy(p.a);
  if (p.b) cublasLtMatrixLayoutDestroy(p.b);
  if (p.c) cublasLtMatrixLayoutDestroy(p.c);
  if (p.desc) cublasLtMatmulDescDestroy(p.desc);
}

// Row-major out[m, n] = x[m, k] · w[n, k]^T is column-major out^T[n, m] = w^T · x, where w and x,
// read column-major, are [k, n] and [k, m]: cuBLASLt's "TN" case with A = w (transposed), B = x.
Gemm::Plan& Gemm::plan(const Key& key) {
  if (auto it = plans_.find(key); it != plans_.end()) return it->second;
  if (plans_.size() >= kMaxPlans) {
    for (auto& [k, p] : plans_) destroy(p);
    plans_.clear();
  }
  const auto [m, n, k, align_a, align_b, align_c] = key;
  Plan p;
  cublasLtMatmulPreference_t pref = nullptr;
  try {
    check(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof(transa)),
          "setting TRANSA");
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof(transb)),
          "setting TRANSB");
    check(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, k, n, k), "cublasLtMatrixLayoutCreate (weights)");
    check(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, k, m, k), "cublasLtMatrixLayoutCreate (input)");
    check(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_16BF, n, m, n), "cublasLtMatrixLayoutCreate (output)");
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
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    check(cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found),
          ("choosing a GEMM algorithm for " + shape_text(m, n, k)).c_str());
    if (found == 0) {
      throw Error("CUDA backend: cuBLASLt has no bf16 GEMM algorithm for " + shape_text(m, n, k));
    }
    p.algo = result.algo;
    cublasLtMatmulPreferenceDestroy(pref);
  } catch (...) {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    destroy(p);
    throw;
  }
  return plans_.emplace(key, p).first->second;
}

void Gemm::run(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* out, int64_t m, int64_t n, int64_t k,
               cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  const Plan& p = plan(Key{m, n, k, alignment(w), alignment(x), alignment(out)});
  const float alpha = 1.0f, beta = 0.0f;
  check(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, out, p.c, out, p.c, &p.algo, workspace_.get(),
                       kWorkspaceBytes, stream),
        ("cublasLtMatmul " + shape_text(m, n, k)).c_str());
}

}  // namespace ember::cuda
