// The bf16 AVX-512 attention kernel for fast precision: vdpbf16ps multiplies bf16 pairs with fp32
// accumulation, twice the work per instruction of fp32 FMAs. Q·K^T reads the bf16 q and k as
// stored; the probabilities are rounded to bf16 for P·V, as flash attention does on a GPU, while
// the softmax itself (max, exp, sums, rescaling) stays fp32. Built with AVX-512 + AVX512_BF16
// flags and entered only after a runtime CPU check; see attention_avx512_common.h for the layout.
#include <cstring>

#include "backend/cpu/attention_avx512_common.h"

namespace ember::cpu {
namespace {

__m512bh as_bh(__m512i x) { return reinterpret_cast<__m512bh&>(x); }

uint32_t load_pair(const uint16_t* p) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

// s: [R, B] = scale * kb: [R, d] (bf16 rows) · q, with qt2: [d / 2, B] bf16 pairs (q[i][2p], q[i][2p+1])
template <int R>
void score_rows(const uint16_t* kb, int d, const uint32_t* qt2, float scale, float* s) {
  __m512 acc[R][kChunks];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kChunks; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int p = 0; p < d / 2; ++p) {
    __m512bh qv[kChunks];
    for (int c = 0; c < kChunks; ++c) qv[c] = as_bh(_mm512_loadu_si512(qt2 + p * B + c * 16));
    for (int r = 0; r < R; ++r) {
      const __m512bh kv = as_bh(_mm512_set1_epi32(static_cast<int>(load_pair(kb + r * d + 2 * p))));
      for (int c = 0; c < kChunks; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], kv, qv[c]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kChunks; ++c) _mm512_storeu_ps(s + r * B + c * 16, _mm512_mul_ps(acc[r][c], sc));
}

// ot rows [e0, e0 + R): [R, B] = ot * alpha + v^T · p over `pairs` key pairs, with
// vt2: [pairs, d] pairs (v[2j][e], v[2j+1][e]) and p2: [pairs, B] pairs (p[2j][i], p[2j+1][i]).
template <int R>
void pv_rows(const uint32_t* vt2, int d, int e0, const uint32_t* p2, int pairs, const __m512* alpha, float* ot) {
  __m512 acc[R][kChunks];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kChunks; ++c) acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(ot + (e0 + r) * B + c * 16), alpha[c]);
  for (int j = 0; j < pairs; ++j) {
    __m512bh pv[kChunks];
    for (int c = 0; c < kChunks; ++c) pv[c] = as_bh(_mm512_loadu_si512(p2 + j * B + c * 16));
    for (int r = 0; r < R; ++r) {
      const __m512bh vv = as_bh(_mm512_set1_epi32(static_cast<int>(vt2[j * d + e0 + r])));
      for (int c = 0; c < kChunks; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], vv, pv[c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kChunks; ++c) _mm512_storeu_ps(ot + (e0 + r) * B + c * 16, acc[r][c]);
}

// p2: [nk / 2, B] = bf16 pairs of the probability rows in s: [nk, B].
void pack_probabilities(const float* s, int nk, uint32_t* p2) {
  // word i of the result takes p[2j][i] in its low half and p[2j+1][i] in its high half
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int j = 0; j < nk / 2; ++j) {
    for (int c = 0; c < kChunks; ++c) {
      const __m512bh both =
          _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + (2 * j + 1) * B + c * 16), _mm512_loadu_ps(s + 2 * j * B + c * 16));
      _mm512_storeu_si512(p2 + j * B + c * 16,
                          _mm512_permutexvar_epi16(interleave, reinterpret_cast<const __m512i&>(both)));
    }
  }
}

struct Buffers {
  uint32_t* qt2;  // [group, d / 2, B] query pairs of each head of the group, zero-padded
  float* ot;      // [group, d, B] output accumulators, transposed
  float* m;       // [group, B] running max of the scaled scores
  float* l;       // [group, B] running softmax denominator
  uint16_t* kb;   // [B, d] key block, zero rows past the end
  uint32_t* vt2;  // [B / 2, d] value pairs of consecutive keys
  float* s;       // [B, B] scores, then probabilities, transposed
  uint32_t* p2;   // [B / 2, B] probability pairs
  float* stage;   // [B, d] rows being transposed
};

Buffers carve(float* base, int group, int d) {
  Buffers b;
  float* f = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(base) + 63) & ~uintptr_t{63});
  b.qt2 = reinterpret_cast<uint32_t*>(f);
  f += int64_t{group} * d / 2 * B;
  b.ot = f;
  f += int64_t{group} * d * B;
  b.m = f;
  b.l = f + group * B;
  f += 2 * group * B;
  b.kb = reinterpret_cast<uint16_t*>(f);
  f += B * d / 2;
  b.vt2 = reinterpret_cast<uint32_t*>(f);
  f += B / 2 * d;
  b.s = f;
  b.p2 = reinterpret_cast<uint32_t*>(f + B * B);
  b.stage = f + B * B + B * B / 2;
  return b;
}

void run_block(const AttentionArgs& a, const AttentionBlock& blk, int g, float* scratch) {
  const int d = a.d, half = a.d / 2, group = a.hq / a.hkv;
  const Buffers buf = carve(scratch, group, d);
  const int nq = static_cast<int>(min64(B, blk.seq_end - blk.q0));
  const int64_t q_stride = q_row_stride(a), kv_stride = kv_row_stride(a);
  const uint16_t* q = static_cast<const uint16_t*>(a.q);
  const uint16_t* k = static_cast<const uint16_t*>(a.k);
  const uint16_t* v = static_cast<const uint16_t*>(a.v);

  for (int hh = 0; hh < group; ++hh) {
    // q rows as d / 2 words of bf16 pairs, transposed to [d / 2, B]
    for (int i = 0; i < nq; ++i) {
      std::memcpy(buf.stage + i * half, q + (blk.q0 + i) * q_stride + int64_t{g * group + hh} * d,
                  sizeof(uint16_t) * d);
    }
    transpose_queries(buf.stage, half, nq, reinterpret_cast<float*>(buf.qt2 + int64_t{hh} * half * B));
  }
  reset_state(buf.ot, buf.m, buf.l, group, d);

  const int64_t k_end = blk.q0 + nq;
  for (int64_t k0 = blk.seq_begin; k0 < k_end; k0 += B) {
    const int nk_valid = static_cast<int>(min64(B, k_end - k0));
    const int nk = (nk_valid + 3) & ~3;
    for (int j = 0; j < nk; ++j) {
      uint16_t* dst = buf.kb + j * d;
      if (j < nk_valid) {
        std::memcpy(dst, k + (k0 + j) * kv_stride + int64_t{g} * d, sizeof(uint16_t) * d);
      } else {
        std::memset(dst, 0, sizeof(uint16_t) * d);
      }
    }
    for (int j = 0; j < nk / 2; ++j) {
      const uint16_t* even = v + (k0 + 2 * j) * kv_stride + int64_t{g} * d;
      const uint16_t* odd = even + kv_stride;
      const bool has_even = 2 * j < nk_valid, has_odd = 2 * j + 1 < nk_valid;
      uint32_t* dst = buf.vt2 + j * d;
      int e = 0;
      if (has_odd) {
        for (; e + 16 <= d; e += 16) {
          const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(even + e)));
          const __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(odd + e)));
          _mm512_storeu_si512(dst + e, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
      }
      for (; e < d; ++e) {
        dst[e] = (has_even ? uint32_t{even[e]} : 0u) | (has_odd ? uint32_t{odd[e]} << 16 : 0u);
      }
    }
    const bool needs_mask = k0 + nk - 1 > blk.q0 || nk_valid < nk;
    for (int hh = 0; hh < group; ++hh) {
      const uint32_t* qt2 = buf.qt2 + int64_t{hh} * half * B;
      for (int j = 0; j < nk; j += 4) score_rows<4>(buf.kb + j * d, d, qt2, a.scale, buf.s + j * B);
      if (needs_mask) mask_block(buf.s, nk, nk_valid, k0, blk.q0);
      __m512 alpha[kChunks];
      softmax_block(buf.s, nk, buf.m + hh * B, buf.l + hh * B, alpha);
      pack_probabilities(buf.s, nk, buf.p2);
      float* ot = buf.ot + int64_t{hh} * d * B;
      int e = 0;
      for (; e + 4 <= d; e += 4) pv_rows<4>(buf.vt2, d, e, buf.p2, nk / 2, alpha, ot);
      for (; e < d; ++e) pv_rows<1>(buf.vt2, d, e, buf.p2, nk / 2, alpha, ot);
    }
  }

  for (int hh = 0; hh < group; ++hh) {
    write_output(a, blk.q0, nq, g * group + hh, buf.ot + int64_t{hh} * d * B, buf.l + hh * B, buf.stage);
  }
}

}  // namespace

void attention_avx512_bf16(const AttentionArgs& args, const AttentionBlock* blocks, int64_t n_blocks, float* scratch,
                           int64_t scratch_stride) {
  for_each_block(args, blocks, n_blocks, scratch, scratch_stride, run_block);
}

}  // namespace ember::cpu
