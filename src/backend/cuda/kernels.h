#pragma once
// Launchers of the CUDA backend's own kernels (the GEMMs are cuBLASLt's, attention is in
// attention.cu). Every kernel computes in fp32 and rounds its output once to the 16-bit
// activation type T: bf16 (like the CPU backend in fast precision) or fp16, each launcher
// instantiated for both. All launches go to `stream` and are safe to record in a CUDA graph.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace ember::cuda {

using bf16 = __nv_bfloat16;
using f16 = __half;

// Largest head_dim qk_norm_rope supports; RoPE inverse frequencies travel as a kernel argument.
constexpr int kMaxHeadDim = 512;

// inv_freq[i] = 1 / theta^(2i / head_dim) in fp32, computed on the host exactly as the CPU backend.
struct RopeFreqs {
  float inv_freq[kMaxHeadDim / 2];
};

// T is bf16 or f16 throughout.
// out: [rows, n] = table: [vocab, n] at rows ids: [rows]
template <class T>
void embed_gather(const T* table, const int32_t* ids, T* out, int64_t rows, int64_t n, cudaStream_t stream);

// out: [rows, n] = rmsnorm(x: [rows, n]) * w: [n]
template <class T>
void rms_norm(const T* x, const float* w, T* out, int64_t rows, int64_t n, float eps, cudaStream_t stream);

// residual: [rows, n] += x: [rows, n] (rounded to T); out: [rows, n] = rmsnorm(residual) * w: [n]
template <class T>
void add_rms_norm(T* residual, const T* x, const float* w, T* out, int64_t rows, int64_t n, float eps,
                  cudaStream_t stream);

// qkv: [tokens, hq + 2 hkv, d], in place on the first hq (q) and next hkv (k) heads of each row:
// per-head RMSNorm with q_norm / k_norm: [d], then rotate-half RoPE at positions: [tokens]. d is
// even and at most kMaxHeadDim.
template <class T>
void qk_norm_rope(T* qkv, const float* q_norm, const float* k_norm, const int32_t* positions, int64_t tokens,
                  int hq, int hkv, int d, float eps, const RopeFreqs& freqs, cudaStream_t stream);

// out: [rows, n] = silu(gate) * up, gate_up: [rows, 2n] holding each row's gate, then its up
template <class T>
void swiglu(const T* gate_up, T* out, int64_t rows, int64_t n, cudaStream_t stream);

// out: [seqs, n] = x: [tokens, n] at rows seq_offsets[s + 1] - 1, seq_offsets: [seqs + 1]
template <class T>
void gather_last_tokens(const T* x, const int32_t* seq_offsets, T* out, int64_t seqs, int64_t n, cudaStream_t stream);

// dst: [n] (F32, F16 or BF16) = src: [n] (F32, F16 or BF16). Values beyond F16's range become inf:
// weights are range-checked on the host before they get here.
void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, cudaStream_t stream);

// x: [n] = deterministic pseudo-random values in [-1, 1) (benchmark operands)
void fill_random(bf16* x, int64_t n, uint32_t seed, cudaStream_t stream);

}  // namespace ember::cuda
