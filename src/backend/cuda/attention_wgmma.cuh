#pragma once
// FlashAttention-3 style kernel for Hopper (sm_90a), head_dim 64 or 128. A CTA takes 128 query
// rows of one sequence: 128 / P consecutive tokens of P query heads that share a key/value head
// (P = 1 for one head; P > 1 packs a GQA group, so a short sequence fills the tile and its key and
// value blocks are loaded once for P heads). Row r of the tile is token r / P of head r % P. Two
// consumer warpgroups own 64 rows each and run
// S = Q·K^T with both operands in shared memory and O += P·V with P straight from the score
// registers (wgmma's accumulator layout is its A-fragment layout); a producer warpgroup streams K/V
// blocks with bulk tensor copies (TMA, 128-byte swizzle, zero fill past the batch end) through a
// ring of shared-memory stages guarded by full/empty mbarriers. The producer is a whole warpgroup
// (one thread of it issues the copies) so setmaxnreg can hand its registers to the consumers.
// T, the type of q, k, v and out, is __nv_bfloat16 or __half (both 2 bytes: one layout).
#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/attention_ptx.cuh"

namespace ember::cuda {

template <class T>
struct WgmmaParams {
  T* out;                      // [tokens, hq, D]
  const int32_t* seq_offsets;  // [S + 1]
  int hq, group;               // group = hq / hkv
  int pack_shift;              // log2(P): P query heads per CTA, P dividing group and kBM
  float scale_log2;            // log2(e) / sqrt(D)
};

template <int D>
struct WgmmaConfig {
  static constexpr int kBM = 128;  // queries per CTA (two warpgroups of 64)
  static constexpr int kBN = 128;  // keys per block
  // Three stages let the producer run a whole block ahead of the slower warpgroup (measured on
  // H100 at 32k tokens: 628 TFLOP/s against 495 with two); they fill the 227 KB for D = 128.
  static constexpr int kStages = 3;
  static constexpr int kConsumerWarps = 8;
  // Two consumer warpgroups and a producer warpgroup. The register file is split unevenly with
  // setmaxnreg: 2 x 128 x 232 + 128 x 40 = 64512 of the 65536 registers.
  static constexpr int kThreads = 384;
  static constexpr int kConsumerRegs = 232;
  static constexpr int kProducerRegs = 40;
  static constexpr int kPanels = D / 64;                     // 128-byte column panels per row
  static constexpr int kTileQ = kBM * D * 2;                 // bytes
  static constexpr int kTileKV = kBN * D * 2;
  static constexpr int kBarrierBytes = 8 * (1 + 2 * kStages);
  // 1 KB of slack: the swizzled tiles need 1024-byte alignment.
  static constexpr int kSmemBytes = 1024 + kTileQ + 2 * kStages * kTileKV + kBarrierBytes;
};

// Per-thread view of one warp's 16 rows of a [64, 128] score tile in wgmma's accumulator layout:
// sc[4j + 2hh + e] is row g + 8hh, column 8j + 2t + e.
constexpr int kScoreRegs = 64;

// Hides keys after each query (positions relative to the sequence start). The warp's rows start
// at tile row r0; tile row r is the query at position q_start + (r >> shift).
__device__ __forceinline__ void causal_mask(float (&sc)[kScoreRegs], int key0, int q_start, int r0, int shift, int g,
                                            int t) {
  if (key0 + 127 <= q_start + (r0 >> shift)) return;
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + 8 * j + 2 * t + (e & 1);
      const int pos = q_start + ((r0 + g + 8 * (e >> 1)) >> shift);
      if (key > pos) sc[4 * j + e] = -INFINITY;
    }
}

// Online softmax over one score block: turns sc into unnormalised probabilities against the
// updated running maxima, adds them to the running sums and returns in corr the factor the
// output rows must be rescaled by. A row with no visible key yet keeps max -inf, gives zeros.
__device__ __forceinline__ void softmax_block(float (&sc)[kScoreRegs], float (&row_max)[2], float (&row_sum)[2],
                                              float (&corr)[2], float scale_log2) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < 16; ++j) mx = fmaxf(mx, fmaxf(sc[4 * j + 2 * hh], sc[4 * j + 2 * hh + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(row_max[hh], mx * scale_log2);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    corr[hh] = ptx::exp2_approx(row_max[hh] - m_use);
    row_max[hh] = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float pv = ptx::exp2_approx(fmaf(sc[4 * j + 2 * hh + e], scale_log2, -m_use));
        sc[4 * j + 2 * hh + e] = pv;
        sum += pv;
      }
    row_sum[hh] = row_sum[hh] * corr[hh] + sum;
  }
}

template <int N>
__device__ __forceinline__ void rescale_rows(float (&o)[N], const float (&corr)[2]) {
#pragma unroll
  for (int j = 0; j < N / 4; ++j) {
    o[4 * j] *= corr[0];
    o[4 * j + 1] *= corr[0];
    o[4 * j + 2] *= corr[1];
    o[4 * j + 3] *= corr[1];
  }
}

// P in T as the A operand of P·V: for keys 16kk..16kk+15 the fragment is exactly the
// accumulator registers of those columns.
template <class T>
__device__ __forceinline__ void pack_p(const float (&sc)[kScoreRegs], uint32_t (&pa)[8][4]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    pa[kk][0] = ptx::pack<T>(sc[8 * kk + 0], sc[8 * kk + 1]);
    pa[kk][1] = ptx::pack<T>(sc[8 * kk + 2], sc[8 * kk + 3]);
    pa[kk][2] = ptx::pack<T>(sc[8 * kk + 4], sc[8 * kk + 5]);
    pa[kk][3] = ptx::pack<T>(sc[8 * kk + 6], sc[8 * kk + 7]);
  }
}

// Issues S: [64, 128] = Q · K^T for this warpgroup (not committed). Both operands are K-major;
// a 16-wide k step is a 32-byte step inside a 128-byte swizzled row, a new panel every 4 steps.
template <int D, class T>
__device__ __forceinline__ void issue_qk(float (&sc)[kScoreRegs], uint32_t sQ_wg, uint32_t sK) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint64_t da = ptx::wgmma_desc(sQ_wg + (kk / 4) * 128 * 128 + (kk % 4) * 32, 16, 1024);
    const uint64_t db = ptx::wgmma_desc(sK + (kk / 4) * 128 * 128 + (kk % 4) * 32, 16, 1024);
    ptx::wgmma_m64n128k16_ss<T>(sc, da, db, kk > 0 ? 1 : 0);
  }
}

// Issues O: [64, D] += P · V (not committed); V is [keys, D] with D contiguous: MN-major.
template <int D, class T>
__device__ __forceinline__ void issue_pv(float (&o)[D / 2], const uint32_t (&pa)[8][4], uint32_t sV) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    const uint64_t db = ptx::wgmma_desc(sV + kk * 16 * 128, 128 * 128, 1024);
    if constexpr (D == 128) {
      ptx::wgmma_m64n128k16_rs_tb<T>(o, pa[kk], db);
    } else {
      ptx::wgmma_m64n64k16_rs_tb<T>(o, pa[kk], db);
    }
  }
}

// Named barriers 3 and 4: the two consumer warpgroups take turns issuing their GEMMs, so one's
// softmax runs while the other's matrix products keep the tensor cores busy.
__device__ __forceinline__ void wait_my_turn(int wg) { ptx::named_barrier_sync(3 + wg, 256); }
__device__ __forceinline__ void pass_turn(int wg) { ptx::named_barrier_arrive(3 + (1 - wg), 256); }

// One consumer warpgroup (wg = warp / 4) over all key blocks of its 64 query rows, then the
// normalised output. Each warpgroup issues S(n) = Q·K(n)^T together with O += P(n-1)·V(n-1) and
// does the softmax of block n while that P·V product runs (FlashAttention-3's intra-warpgroup
// overlap), and the two warpgroups take turns issuing. On H100 at 32k tokens this gives
// 628 TFLOP/s against 575 for plain issue / wait / softmax / issue / wait.
template <int D, class T>
__device__ __forceinline__ void consume(const WgmmaParams<T>& p, uint32_t sQ, uint8_t* q_ptr, uint32_t sK0, uint32_t sV0,
                                        uint32_t bar_q, uint32_t bar_full0, uint32_t bar_empty0, int h0, int seq_begin,
                                        int len, int q_start, int n_blocks, int warp, int lane) {
  using C = WgmmaConfig<D>;
  constexpr int BM = C::kBM, BN = C::kBN, ST = C::kStages;
  const int wg = warp / 4, wq = warp % 4, g = lane / 4, t = lane % 4;
  const int shift = p.pack_shift;
  const int r0 = wg * 64 + wq * 16;  // this warp's first tile row
  const uint32_t sQ_wg = sQ + wg * 64 * 128;
  auto stage_k = [&](int it) { return sK0 + (it % ST) * C::kTileKV; };
  auto stage_v = [&](int it) { return sV0 + (it % ST) * C::kTileKV; };
  auto wait_full = [&](int it) { ptx::mbar_wait(bar_full0 + 8 * (it % ST), (it / ST) & 1); };
  auto release = [&](int it) {
    __syncwarp();
    if (lane == 0) ptx::mbar_arrive(bar_empty0 + 8 * (it % ST));
  };

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float sc[kScoreRegs];
#pragma unroll
  for (int i = 0; i < kScoreRegs; ++i) sc[i] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f}, corr[2];
  uint32_t pa[8][4];

  ptx::mbar_wait(bar_q, 0);
  // Each issue point is one turn; warpgroup 1 lets warpgroup 0 go first and does not pass its
  // last turn, so both barriers end balanced.
  if (wg == 1) pass_turn(1);
  wait_full(0);
  wait_my_turn(wg);
  ptx::fence_regs(sc);
  ptx::wgmma_fence();
  issue_qk<D, T>(sc, sQ_wg, stage_k(0));
  ptx::wgmma_commit();
  pass_turn(wg);
  ptx::wgmma_wait<0>();
  ptx::fence_regs(sc);
  causal_mask(sc, (n_blocks - 1) * BN, q_start, r0, shift, g, t);
  softmax_block(sc, row_max, row_sum, corr, p.scale_log2);
  pack_p<T>(sc, pa);
  for (int it = 1; it < n_blocks; ++it) {
    wait_full(it);
    wait_my_turn(wg);
    ptx::fence_regs(sc);
    ptx::fence_regs(o);
    ptx::wgmma_fence();
    issue_qk<D, T>(sc, sQ_wg, stage_k(it));
    ptx::wgmma_commit();
    issue_pv<D, T>(o, pa, stage_v(it - 1));
    ptx::wgmma_commit();
    pass_turn(wg);
    ptx::wgmma_wait<1>();  // S(it) is done; P(it-1)·V(it-1) may still run
    ptx::fence_regs(sc);
    causal_mask(sc, (n_blocks - 1 - it) * BN, q_start, r0, shift, g, t);
    softmax_block(sc, row_max, row_sum, corr, p.scale_log2);
    ptx::wgmma_wait<0>();
    ptx::fence_regs(o);
    release(it - 1);
    rescale_rows(o, corr);
    pack_p<T>(sc, pa);
  }
  wait_my_turn(wg);
  ptx::fence_regs(o);
  ptx::wgmma_fence();
  issue_pv<D, T>(o, pa, stage_v(n_blocks - 1));
  ptx::wgmma_commit();
  if (wg == 0) pass_turn(wg);
  ptx::wgmma_wait<0>();
  ptx::fence_regs(o);
  release(n_blocks - 1);

  // Normalise, then stage this warpgroup's 64 rows through its own rows of the Q tile (same
  // swizzle, so the 4-byte writes spread over all banks) and store whole 16-byte pieces.
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float sum = row_sum[hh];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int r = wg * 64 + wq * 16 + g + 8 * hh;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const int c = 8 * j + 2 * t;
      const int off = (c / 64) * BM * 128 + r * 128 + ((((c % 64) / 8) ^ (r % 8)) << 4) + (c % 8) * 2;
      *reinterpret_cast<uint32_t*>(q_ptr + off) = ptx::pack<T>(o[4 * j + 2 * hh] * inv, o[4 * j + 2 * hh + 1] * inv);
    }
  }
  ptx::named_barrier_sync(1 + wg, 128);
  constexpr int CH = D / 8;
  for (int idx = (warp % 4) * 32 + lane; idx < 64 * CH; idx += 128) {
    const int r = wg * 64 + idx / CH, cc = idx % CH;
    const int pos = q_start + (r >> shift), h = h0 + (r & ((1 << shift) - 1));
    if (pos < len) {
      const int off = (cc / 8) * BM * 128 + r * 128 + (((cc % 8) ^ (r % 8)) << 4);
      *reinterpret_cast<uint4*>(p.out + (int64_t{seq_begin} + pos) * p.hq * D + int64_t{h} * D + cc * 8) =
          *reinterpret_cast<const uint4*>(q_ptr + off);
    }
  }
}

// tm_q: [tokens, hq, D] with boxes of {64, P, 128 / P}, tm_k / tm_v: [tokens, hkv, D] with boxes of
// {64, 1, 128}, all tensor maps of T. grid: (hq / P * S, ceil(max_seq_len * P / 128)), counting
// query blocks down as in the mma kernel.
template <int D, class T>
__global__ void __launch_bounds__(WgmmaConfig<D>::kThreads, 1)
    attention_wgmma_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                           const __grid_constant__ CUtensorMap tm_v, WgmmaParams<T> p) {
#if defined(__CUDA_ARCH__)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = WgmmaConfig<D>;
  constexpr int BM = C::kBM, BN = C::kBN, ST = C::kStages;

  const int head_groups = p.hq >> p.pack_shift;
  const int h0 = (blockIdx.x % head_groups) << p.pack_shift;  // first of the tile's P query heads
  const int s = blockIdx.x / head_groups;
  const int m_block = gridDim.y - 1 - blockIdx.y;
  const int seq_begin = p.seq_offsets[s];
  const int len = p.seq_offsets[s + 1] - seq_begin;
  const int tile_tokens = BM >> p.pack_shift;
  const int q_start = m_block * tile_tokens;
  if (q_start >= len) return;
  const int hk = h0 / p.group;
  const int n_blocks = (min(len, q_start + tile_tokens) + BN - 1) / BN;

  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw_addr = ptx::smem_addr(smem_raw);
  const uint32_t sQ = (raw_addr + 1023) & ~1023u;
  uint8_t* q_ptr = smem_raw + (sQ - raw_addr);
  const uint32_t sK0 = sQ + C::kTileQ;
  const uint32_t sV0 = sK0 + ST * C::kTileKV;
  const uint32_t bar_q = sV0 + ST * C::kTileKV;
  const uint32_t bar_full0 = bar_q + 8;
  const uint32_t bar_empty0 = bar_full0 + 8 * ST;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  if (tid == 0) {
    ptx::mbar_init(bar_q, 1);
    for (int i = 0; i < ST; ++i) {
      ptx::mbar_init(bar_full0 + 8 * i, 1);
      ptx::mbar_init(bar_empty0 + 8 * i, C::kConsumerWarps);
    }
    ptx::mbar_init_fence();
  }
  __syncthreads();

  if (warp >= C::kConsumerWarps) {
    ptx::setmaxnreg_dec<C::kProducerRegs>();
    if (warp == C::kConsumerWarps && lane == 0) {
      ptx::prefetch_tmap(&tm_q);
      ptx::prefetch_tmap(&tm_k);
      ptx::prefetch_tmap(&tm_v);
      ptx::mbar_arrive_expect_tx(bar_q, C::kTileQ);
      for (int pan = 0; pan < C::kPanels; ++pan)
        ptx::tma_load_3d(sQ + pan * BM * 128, &tm_q, pan * 64, h0, seq_begin + q_start, bar_q);
      for (int it = 0; it < n_blocks; ++it) {
        const int st = it % ST;
        if (it >= ST) ptx::mbar_wait(bar_empty0 + 8 * st, ((it / ST) - 1) & 1);
        const uint32_t full = bar_full0 + 8 * st;
        ptx::mbar_arrive_expect_tx(full, 2 * C::kTileKV);
        const int tok = seq_begin + (n_blocks - 1 - it) * BN;
        for (int pan = 0; pan < C::kPanels; ++pan) {
          ptx::tma_load_3d(sK0 + st * C::kTileKV + pan * BN * 128, &tm_k, pan * 64, hk, tok, full);
          ptx::tma_load_3d(sV0 + st * C::kTileKV + pan * BN * 128, &tm_v, pan * 64, hk, tok, full);
        }
      }
    }
  } else {
    ptx::setmaxnreg_inc<C::kConsumerRegs>();
    consume<D, T>(p, sQ, q_ptr, sK0, sV0, bar_q, bar_full0, bar_empty0, h0, seq_begin, len, q_start, n_blocks, warp,
               lane);
  }
#else
  __trap();
#endif
#endif
}

}  // namespace ember::cuda
