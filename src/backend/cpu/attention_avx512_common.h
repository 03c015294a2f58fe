#pragma once
// Helpers shared by the AVX-512 attention kernels (attention_avx512*.cpp). Include only from
// files built with AVX-512 flags: everything here has internal linkage, so no AVX-512 code can
// leak into the portable part of the library through the linker picking an inline definition.
//
// Layout: scores are kept transposed, S^T[key][query], and the output as O^T[d][query], so every
// vector runs across 16 queries. K and V are then only read as broadcast scalars (or bf16 pairs)
// and the online-softmax max/sum are vertical operations.
// GCC 12's own _mm512_undefined_ps() (used inside max/min/scalef) trips -Wmaybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <cstdint>

#include "backend/cpu/attention.h"

namespace ember::cpu {
namespace {

constexpr int B = kAttnBlock;  // queries per block (4 zmm) and keys per block
constexpr int kChunks = B / 16;
constexpr float kMaskedScore = -1e30f;

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// e^x with cephes' expf polynomial (~1 ulp); exactly 0 below -86 so masked scores vanish and no
// result is subnormal (slow). Dropped terms are < e^-86 of the row's largest, which is 1.
inline __m512 exp_ps(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-86.0f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-86.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~tiny), _mm512_scalef_ps(p, n));
}

inline float load_scalar(const void* base, int64_t i, bool bf16) {
  if (!bf16) return static_cast<const float*>(base)[i];
  const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16;
  return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128(static_cast<int>(bits))));
}

// dst[0..n) = src[0..n) as fp32.
inline void load_row(const void* src, int64_t offset, bool bf16, int n, float* dst) {
  int i = 0;
  if (bf16) {
    const uint16_t* s = static_cast<const uint16_t*>(src) + offset;
    for (; i + 16 <= n; i += 16) {
      const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
  } else {
    const float* s = static_cast<const float*>(src) + offset;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_loadu_ps(s + i));
  }
  for (; i < n; ++i) dst[i] = load_scalar(src, offset + i, bf16);
}

// dst[offset..offset + n) = src[0..n), rounded to bf16 (nearest even, NaN kept quiet: the rule
// of core/dtype.h's f32_to_bf16) or stored as fp32.
inline void store_row(const float* src, int n, bool bf16, void* dst, int64_t offset) {
  int i = 0;
  if (bf16) {
    uint16_t* d = static_cast<uint16_t*>(dst) + offset;
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
    for (; i < n; i += 16) {
      const __mmask16 live = n - i >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1);
      const __m512i b = _mm512_castps_si512(_mm512_maskz_loadu_ps(live, src + i));
      __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(b, 16), one)));
      const __mmask16 nan = _mm512_cmp_epi32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000), _MM_CMPINT_NLE);
      r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(b, _mm512_set1_epi32(0x400000)));
      _mm256_mask_storeu_epi16(d + i, live, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
    }
  } else {
    float* d = static_cast<float*>(dst) + offset;
    for (; i < n; i += 16) {
      const __mmask16 live = n - i >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1);
      _mm512_mask_storeu_ps(d + i, live, _mm512_maskz_loadu_ps(live, src + i));
    }
  }
}

// Online softmax over one key block for one head: turns s into probabilities, updates m and l,
// returns the factor the accumulated output must be rescaled by.
inline void softmax_block(float* s, int nk, float* m, float* l, __m512* alpha) {
  for (int c = 0; c < kChunks; ++c) {
    __m512 mx = _mm512_loadu_ps(m + c * 16);
    const __m512 m_old = mx;
    for (int j = 0; j < nk; ++j) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j * B + c * 16));
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < nk; ++j) {
      const __m512 p = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j * B + c * 16), mx));
      _mm512_storeu_ps(s + j * B + c * 16, p);
      sum = _mm512_add_ps(sum, p);
    }
    alpha[c] = exp_ps(_mm512_sub_ps(m_old, mx));
    _mm512_storeu_ps(m + c * 16, mx);
    _mm512_storeu_ps(l + c * 16, _mm512_fmadd_ps(_mm512_loadu_ps(l + c * 16), alpha[c], sum));
  }
}

// Scores of key rows at or past `limit` relative to a query column are masked: key k0+j is
// visible to query q0+i only if k0 + j <= q0 + i, and only if j < nk_valid.
inline void mask_block(float* s, int nk, int nk_valid, int64_t k0, int64_t q0) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 masked = _mm512_set1_ps(kMaskedScore);
  for (int j = 0; j < nk; ++j) {
    // first visible query column for this key
    const int64_t first = k0 + j - q0;
    for (int c = 0; c < kChunks; ++c) {
      float* row = s + j * B + c * 16;
      if (j >= nk_valid) {
        _mm512_storeu_ps(row, masked);
        continue;
      }
      if (first <= c * 16) continue;
      const __m512i col = _mm512_add_epi32(iota, _mm512_set1_epi32(c * 16));
      const __mmask16 hide =
          _mm512_cmp_epi32_mask(col, _mm512_set1_epi32(static_cast<int>(min64(first, B))), _MM_CMPINT_LT);
      _mm512_storeu_ps(row, _mm512_mask_mov_ps(_mm512_loadu_ps(row), hide, masked));
    }
  }
}

// Zeroes the output accumulators and resets the softmax state of `group` heads.
inline void reset_state(float* ot, float* m, float* l, int group, int d) {
  for (int64_t e = 0; e < int64_t{group} * d * B; ++e) ot[e] = 0.0f;
  for (int i = 0; i < group * B; ++i) {
    m[i] = kMaskedScore;
    l[i] = 0.0f;
  }
}

// In-register transpose of a 16x16 tile of 32-bit values (pure data movement: bf16 pairs pass
// through bit for bit).
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

inline __mmask16 first_lanes(int n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << n) - 1);
}

// dst[c * dst_stride + k] = src[k * src_stride + c] * scale[c] for c < cols, over rows k < 16 of
// which those at or past `rows` read as zero; only lanes k < store_rows are written.
inline void transpose_panel(const float* src, int64_t src_stride, int rows, int cols, const float* scale, float* dst,
                            int64_t dst_stride, int store_rows) {
  const __mmask16 col_mask = first_lanes(cols);
  const __m512 sc = scale ? _mm512_maskz_loadu_ps(col_mask, scale) : _mm512_set1_ps(1.0f);
  __m512 r[16];
  for (int k = 0; k < 16; ++k) {
    r[k] = k < rows ? _mm512_maskz_loadu_ps(col_mask, src + k * src_stride) : _mm512_setzero_ps();
    if (scale) r[k] = _mm512_mul_ps(r[k], sc);
  }
  transpose16(r);
  const __mmask16 store_mask = first_lanes(store_rows);
  for (int c = 0; c < cols; ++c) _mm512_mask_storeu_ps(dst + c * dst_stride, store_mask, r[c]);
}

// qt: [width, B] = the first nq rows of stage: [16 * ceil(B / 16), width] transposed, columns of
// rows past nq zero. Works on 32-bit words: fp32 values or bf16 pairs.
inline void transpose_queries(const float* stage, int width, int nq, float* qt) {
  for (int i0 = 0; i0 < B; i0 += 16) {
    for (int e0 = 0; e0 < width; e0 += 16) {
      const int cols = static_cast<int>(min64(16, width - e0));
      transpose_panel(stage + int64_t{i0} * width + e0, width, nq - i0, cols, nullptr, qt + int64_t{e0} * B + i0, B,
                      16);
    }
  }
}

// out rows [q0, q0 + nq) of head h = ot: [d, B] transposed, divided by the softmax sums l: [B].
// stage: [16, d] floats of scratch.
inline void write_output(const AttentionArgs& a, int64_t q0, int nq, int h, const float* ot, const float* l,
                         float* stage) {
  alignas(64) float inv_l[B];
  for (int i = 0; i < B; ++i) inv_l[i] = 1.0f / l[i];
  const int d = a.d;
  for (int i0 = 0; i0 < nq; i0 += 16) {
    const int cols = static_cast<int>(min64(16, nq - i0));
    for (int e0 = 0; e0 < d; e0 += 16) {
      const int rows = static_cast<int>(min64(16, d - e0));
      transpose_panel(ot + int64_t{e0} * B + i0, B, rows, cols, inv_l + i0, stage + e0, d, rows);
    }
    for (int c = 0; c < cols; ++c) {
      store_row(stage + int64_t{c} * d, d, a.bf16, a.out, (q0 + i0 + c) * int64_t{a.hq} * d + int64_t{h} * d);
    }
  }
}

// Runs `block(args, blk, kv_head, thread_scratch)` over every (query block, kv head) pair.
template <class Fn>
inline void for_each_block(const AttentionArgs& args, const AttentionBlock* blocks, int64_t n_blocks, float* scratch,
                           int64_t scratch_stride, Fn block) {
  const int64_t items = n_blocks * args.hkv;
#pragma omp parallel
  {
    float* mine = scratch + omp_get_thread_num() * scratch_stride;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      block(args, blocks[it / args.hkv], static_cast<int>(it % args.hkv), mine);
    }
  }
}

}  // namespace
}  // namespace ember::cpu
