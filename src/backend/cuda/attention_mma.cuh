#pragma once
// FlashAttention-2 style kernel on mma.sync m16n8k16 (sm_80 and later); covers every supported
// head_dim. One CTA takes one block of kBM queries of one (sequence, query head); each warp owns
// 16 query rows and keeps their Q fragments, scores and output accumulators in registers. Key and
// value blocks are double-buffered in shared memory with cp.async and read with ldmatrix; rows are
// padded by 16 bytes so those reads are free of bank conflicts for every head_dim. T, the type
// of q, k, v and out, is __nv_bfloat16 or __half.
#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/attention_ptx.cuh"

namespace ember::cuda {

template <class T>
struct AttentionParams {
  const T* q;  // [tokens, hq, D], rows q_stride elements apart
  const T* k;  // [tokens, hkv, D], rows kv_stride elements apart
  const T* v;  // [tokens, hkv, D], rows kv_stride elements apart
  T* out;      // [tokens, hq, D], contiguous
  const int32_t* seq_offsets;  // [S + 1]
  int64_t tokens;
  int64_t q_stride, kv_stride;
  int hq, hkv, group;  // group = hq / hkv
  float scale_log2;    // log2(e) / sqrt(D): scores go straight to exp2
};

template <int D>
struct MmaConfig {
  static constexpr int kWarps = D <= 128 ? 8 : 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBM = 16 * kWarps;        // queries per CTA
  static constexpr int kBN = D <= 128 ? 64 : 32;  // keys per block
  static constexpr int kLd = D + 8;               // padded shared-memory row, elements
  static constexpr int kSmemBytes = (kBM + 4 * kBN) * kLd * 2;  // Q + two stages of K and V
};

// grid: (hq * S, ceil(max_seq_len / kBM)); blockIdx.y counts down from the last query block so
// the longest-running blocks of every sequence start first.
template <int D, class T>
__global__ void __launch_bounds__(MmaConfig<D>::kThreads) attention_mma_kernel(AttentionParams<T> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using C = MmaConfig<D>;
  constexpr int BM = C::kBM, BN = C::kBN, LD = C::kLd, CH = D / 8;

  const int h = blockIdx.x % p.hq;
  const int s = blockIdx.x / p.hq;
  const int m_block = gridDim.y - 1 - blockIdx.y;
  const int64_t seq_begin = p.seq_offsets[s];
  const int len = p.seq_offsets[s + 1] - p.seq_offsets[s];
  const int q_start = m_block * BM;
  if (q_start >= len) return;
  const int hk = h / p.group;

  extern __shared__ __align__(16) uint8_t smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * LD;
  T* sV = sK + 2 * BN * LD;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t q_row_stride = p.q_stride, kv_row_stride = p.kv_stride, out_row_stride = int64_t{p.hq} * D;
  const T* q_base = p.q + int64_t{h} * D;
  const T* k_base = p.k + int64_t{hk} * D;
  const T* v_base = p.v + int64_t{hk} * D;

  // Rows past the end of the batch are zero-filled; rows of the next sequence are loaded but
  // never reach a valid output (the causal mask hides keys past each query).
  auto load_rows = [&](T* dst, const T* base, int64_t row_stride, int64_t tok0, int rows) {
    for (int c = tid; c < rows * CH; c += C::kThreads) {
      const int r = c / CH, ch = c % CH;
      const int64_t tok = tok0 + r;
      const bool ok = tok < p.tokens;
      ptx::cp_async_16(ptx::smem_addr(dst + r * LD + ch * 8), base + (ok ? tok : 0) * row_stride + ch * 8,
                       ok ? 16 : 0);
    }
  };

  const int n_blocks = (min(len, q_start + BM) + BN - 1) / BN;
  int n = n_blocks - 1;
  load_rows(sQ, q_base, q_row_stride, seq_begin + q_start, BM);
  load_rows(sK, k_base, kv_row_stride, seq_begin + int64_t{n} * BN, BN);
  load_rows(sV, v_base, kv_row_stride, seq_begin + int64_t{n} * BN, BN);
  ptx::cp_async_commit();

  const int warp_row0 = q_start + warp * 16;  // position of this warp's first query in its sequence
  const bool warp_active = warp_row0 < len;
  const int g = lane / 4, t = lane % 4;

  uint32_t qf[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

  for (int it = 0; it < n_blocks; ++it, --n) {
    const int stage = it & 1;
    ptx::cp_async_wait<0>();
    __syncthreads();  // this stage has landed for everyone, and everyone is done with the other one
    if (n > 0) {
      const int64_t tok0 = seq_begin + int64_t{n - 1} * BN;
      load_rows(sK + (stage ^ 1) * BN * LD, k_base, kv_row_stride, tok0, BN);
      load_rows(sV + (stage ^ 1) * BN * LD, v_base, kv_row_stride, tok0, BN);
      ptx::cp_async_commit();
    }
    if (it == 0 && warp_active) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        ptx::ldmatrix_x4(qf[kk], ptx::smem_addr(sQ + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8));
    }
    const int key0 = n * BN;
    if (!warp_active || key0 > warp_row0 + 15) continue;  // every key of this block is in the future
    const T* k_s = sK + stage * BN * LD;
    const T* v_s = sV + stage * BN * LD;

    // S: [16, BN] = Q · K^T
    float sc[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t b[4];
        ptx::ldmatrix_x4(b, ptx::smem_addr(k_s + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 +
                                           ((lane >> 3) & 1) * 8));
        ptx::mma_16816<T>(sc[2 * np], qf[kk], b[0], b[1]);
        ptx::mma_16816<T>(sc[2 * np + 1], qf[kk], b[2], b[3]);
      }
    }
    if (key0 + BN - 1 > warp_row0) {
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + nt * 8 + 2 * t + (e & 1);
          const int row = warp_row0 + g + 8 * (e >> 1);
          if (key > row) sc[nt][e] = -INFINITY;
        }
    }

    // Online softmax; a row with no visible key yet keeps max -inf and contributes zeros.
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) mx = fmaxf(mx, fmaxf(sc[nt][2 * hh], sc[nt][2 * hh + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(row_max[hh], mx * p.scale_log2);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float corr = ptx::exp2_approx(row_max[hh] - m_use);
      row_max[hh] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pv = ptx::exp2_approx(fmaf(sc[nt][2 * hh + e], p.scale_log2, -m_use));
          sc[nt][2 * hh + e] = pv;
          sum += pv;
        }
      row_sum[hh] = row_sum[hh] * corr + sum;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o[dt][2 * hh] *= corr;
        o[dt][2 * hh + 1] *= corr;
      }
    }

    // O: [16, D] += P · V
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const uint32_t a[4] = {ptx::pack<T>(sc[2 * kk][0], sc[2 * kk][1]), ptx::pack<T>(sc[2 * kk][2], sc[2 * kk][3]),
                             ptx::pack<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                             ptx::pack<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        ptx::ldmatrix_x4_trans(b, ptx::smem_addr(v_s + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD +
                                                 dp * 16 + (lane >> 4) * 8));
        ptx::mma_16816<T>(o[2 * dp], a, b[0], b[1]);
        ptx::mma_16816<T>(o[2 * dp + 1], a, b[2], b[3]);
      }
    }
  }

  if (!warp_active) return;
  // Normalise and stage this warp's rows through its own (no longer needed) rows of sQ, so the
  // global stores are whole 16-byte pieces of each output row.
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float sum = row_sum[hh];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    T* row = sQ + (warp * 16 + g + 8 * hh) * LD;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<uint32_t*>(row + dt * 8 + 2 * t) = ptx::pack<T>(o[dt][2 * hh] * inv, o[dt][2 * hh + 1] * inv);
  }
  __syncwarp();
  for (int c = lane; c < 16 * CH; c += 32) {
    const int r = c / CH, ch = c % CH;
    const int pos = warp_row0 + r;
    if (pos < len)
      *reinterpret_cast<uint4*>(p.out + (seq_begin + pos) * out_row_stride + int64_t{h} * D + ch * 8) =
          *reinterpret_cast<const uint4*>(sQ + (warp * 16 + r) * LD + ch * 8);
  }
#endif
}

}  // namespace ember::cuda
