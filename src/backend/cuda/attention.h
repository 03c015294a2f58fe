#pragma once
// FlashAttention-style causal grouped-query attention over a packed variable-length batch on
// NVIDIA GPUs. No padding and no [L, L] score matrix: each block of queries streams its key
// blocks through shared memory with an online softmax. Two kernels: a Hopper one (sm_90a: TMA
// loads, wgmma, a producer warp) for head_dim 64 and 128, and an mma.sync one (sm_80 and later)
// for every supported head_dim. Launch shapes depend only on the arguments, so calls can be
// recorded into CUDA graphs; nothing is allocated and the host never waits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ember::cuda {

// Causal grouped-query attention inside each packed sequence; softmax scale 1/sqrt(head_dim), fp32 softmax/accumulation.
// T: __nv_bfloat16 or __half, the type of every tensor (the softmax weights are rounded to T for P·V).
// q: [tokens, Hq, D], k, v: [tokens, Hkv, D], out: [tokens, Hq, D] (device memory; out contiguous)
// The token rows of q are q_row_stride elements apart, those of k and v kv_row_stride (0: Hq * D
// and Hkv * D, contiguous); strides let q, k and v be column blocks of one fused [tokens, (Hq + 2 Hkv) * D]
// projection output. Strides and pointers must be multiples of 16 bytes.
// seq_offsets: [S + 1] int32 device array, seq_offsets[0] = 0, seq_offsets[S] = tokens
// max_seq_len: longest sequence in the batch (host value, sizes the grid)
// Supports head_dim in {16, 32, 64, 128, 256} (throws ember::Error otherwise) and Hq % Hkv == 0.
template <class T>
void attention_varlen(const T* q, const T* k, const T* v, T* out, const int32_t* seq_offsets, int num_seqs,
                      int64_t total_tokens, int max_seq_len, int num_q_heads, int num_kv_heads, int head_dim,
                      cudaStream_t stream, int64_t q_row_stride = 0, int64_t kv_row_stride = 0);

// Which kernel attention_varlen_with runs; Auto is what attention_varlen does (Wgmma on sm_90
// devices for head_dim 64/128, Mma otherwise). Tests and benchmarks force one to cover both.
enum class AttentionKernel { Auto, Mma, Wgmma };

// attention_varlen with an explicit kernel choice; Wgmma throws ember::Error where it can't run
// (head_dim other than 64/128, or a device that is not sm_90).
template <class T>
void attention_varlen_with(AttentionKernel kernel, const T* q, const T* k, const T* v, T* out,
                           const int32_t* seq_offsets, int num_seqs, int64_t total_tokens, int max_seq_len,
                           int num_q_heads, int num_kv_heads, int head_dim, cudaStream_t stream,
                           int64_t q_row_stride = 0, int64_t kv_row_stride = 0);

}  // namespace ember::cuda
