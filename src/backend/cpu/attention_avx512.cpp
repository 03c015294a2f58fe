// The AVX-512 attention kernel. This file is compiled with AVX-512 flags and only entered after a
// runtime CPU check, so it defines nothing but internal-linkage helpers plus attention_avx512():
// any inline function shared with other files (std:: templates included) could otherwise be
// emitted here with AVX-512 instructions and picked by the linker for the portable code.
//
// Layout trick: scores are kept transposed, S^T[key][query], and the output as O^T[d][query],
// so every vector runs across 16 queries. K and V are then only read as broadcast scalars in
// their natural row-major layout, and the online-softmax max/sum are vertical operations.
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

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// e^x with cephes' expf polynomial (~1 ulp); exactly 0 below -86 so masked scores vanish and no
// result is subnormal (slow). Dropped terms are < e^-86 of the row's largest, which is 1.
__m512 exp_ps(__m512 x) {
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

float load_scalar(const void* base, int64_t i, bool bf16) {
  if (!bf16) return static_cast<const float*>(base)[i];
  const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16;
  return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128(static_cast<int>(bits))));
}

// dst[0..n) = src[0..n) as fp32.
void load_row(const void* src, int64_t offset, bool bf16, int n, float* dst) {
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
void store_row(const float* src, int n, bool bf16, void* dst, int64_t offset) {
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

// s: [R, B] = scale * kb: [R, d] · qt: [d, B]
template <int R>
void score_rows(const float* kb, int d, const float* qt, float scale, float* s) {
  __m512 acc[R][kChunks];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kChunks; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int e = 0; e < d; ++e) {
    __m512 qv[kChunks];
    for (int c = 0; c < kChunks; ++c) qv[c] = _mm512_loadu_ps(qt + e * B + c * 16);
    for (int r = 0; r < R; ++r) {
      const __m512 kv = _mm512_set1_ps(kb[r * d + e]);
      for (int c = 0; c < kChunks; ++c) acc[r][c] = _mm512_fmadd_ps(kv, qv[c], acc[r][c]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kChunks; ++c) _mm512_storeu_ps(s + r * B + c * 16, _mm512_mul_ps(acc[r][c], sc));
}

// ot rows [e0, e0 + R): [R, B] = ot * alpha + vb[:, e0:e0+R]^T · p, with p: [nk, B], vb: [nk, d]
template <int R>
void pv_rows(const float* vb, int d, int e0, const float* p, int nk, const __m512* alpha, float* ot) {
  __m512 acc[R][kChunks];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kChunks; ++c)
      acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(ot + (e0 + r) * B + c * 16), alpha[c]);
  for (int j = 0; j < nk; ++j) {
    __m512 pv[kChunks];
    for (int c = 0; c < kChunks; ++c) pv[c] = _mm512_loadu_ps(p + j * B + c * 16);
    for (int r = 0; r < R; ++r) {
      const __m512 vv = _mm512_set1_ps(vb[j * d + e0 + r]);
      for (int c = 0; c < kChunks; ++c) acc[r][c] = _mm512_fmadd_ps(vv, pv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kChunks; ++c) _mm512_storeu_ps(ot + (e0 + r) * B + c * 16, acc[r][c]);
}

struct Buffers {
  float* qt;     // [group, d, B] queries of each head of the group, transposed, zero-padded
  float* ot;     // [group, d, B] output accumulators, transposed
  float* m;      // [group, B] running max of the scaled scores
  float* l;      // [group, B] running softmax denominator
  float* kb;     // [B, d] key block as fp32, zero rows past the end
  float* vb;     // [B, d] value block as fp32
  float* s;      // [B, B] scores, then probabilities, transposed
};

Buffers carve(float* base, int group, int d) {
  auto align = [](float* p) {
    return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t{63});
  };
  Buffers b;
  b.qt = align(base);
  b.ot = b.qt + int64_t{group} * d * B;
  b.m = b.ot + int64_t{group} * d * B;
  b.l = b.m + group * B;
  b.kb = b.l + group * B;
  b.vb = b.kb + B * d;
  b.s = b.vb + B * d;
  return b;
}

// Online softmax over one key block for one head: turns s into probabilities, updates m and l,
// returns the factor the accumulated output must be rescaled by.
void softmax_block(float* s, int nk, float* m, float* l, __m512* alpha) {
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
void mask_block(float* s, int nk, int nk_valid, int64_t k0, int64_t q0) {
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

void run_block(const AttentionArgs& a, const AttentionBlock& blk, int g, const Buffers& buf) {
  const int d = a.d, group = a.hq / a.hkv;
  const int nq = static_cast<int>(min64(B, blk.seq_end - blk.q0));
  const int64_t q_stride = int64_t{a.hq} * d, kv_stride = int64_t{a.hkv} * d;

  for (int hh = 0; hh < group; ++hh) {
    const int h = g * group + hh;
    float* qt = buf.qt + int64_t{hh} * d * B;
    float* row = buf.s;  // borrowed as a one-row staging buffer
    for (int i = 0; i < B; ++i) {
      if (i < nq) {
        load_row(a.q, (blk.q0 + i) * q_stride + int64_t{h} * d, a.bf16, d, row);
        for (int e = 0; e < d; ++e) qt[e * B + i] = row[e];
      } else {
        for (int e = 0; e < d; ++e) qt[e * B + i] = 0.0f;
      }
    }
    float* ot = buf.ot + int64_t{hh} * d * B;
    for (int64_t e = 0; e < int64_t{d} * B; ++e) ot[e] = 0.0f;
    for (int i = 0; i < B; ++i) {
      buf.m[hh * B + i] = kMaskedScore;
      buf.l[hh * B + i] = 0.0f;
    }
  }

  const int64_t k_end = blk.q0 + nq;
  for (int64_t k0 = blk.seq_begin; k0 < k_end; k0 += B) {
    const int nk_valid = static_cast<int>(min64(B, k_end - k0));
    const int nk = (nk_valid + 3) & ~3;
    for (int j = 0; j < nk; ++j) {
      if (j < nk_valid) {
        load_row(a.k, (k0 + j) * kv_stride + int64_t{g} * d, a.bf16, d, buf.kb + j * d);
        load_row(a.v, (k0 + j) * kv_stride + int64_t{g} * d, a.bf16, d, buf.vb + j * d);
      } else {
        for (int e = 0; e < d; ++e) buf.kb[j * d + e] = buf.vb[j * d + e] = 0.0f;
      }
    }
    const bool needs_mask = k0 + nk - 1 > blk.q0 || nk_valid < nk;
    for (int hh = 0; hh < group; ++hh) {
      const float* qt = buf.qt + int64_t{hh} * d * B;
      for (int j = 0; j < nk; j += 4) score_rows<4>(buf.kb + j * d, d, qt, a.scale, buf.s + j * B);
      if (needs_mask) mask_block(buf.s, nk, nk_valid, k0, blk.q0);
      __m512 alpha[kChunks];
      softmax_block(buf.s, nk, buf.m + hh * B, buf.l + hh * B, alpha);
      float* ot = buf.ot + int64_t{hh} * d * B;
      int e = 0;
      for (; e + 4 <= d; e += 4) pv_rows<4>(buf.vb, d, e, buf.s, nk, alpha, ot);
      for (; e < d; ++e) pv_rows<1>(buf.vb, d, e, buf.s, nk, alpha, ot);
    }
  }

  for (int hh = 0; hh < group; ++hh) {
    const int h = g * group + hh;
    const float* ot = buf.ot + int64_t{hh} * d * B;
    float inv_l[B];
    for (int i = 0; i < B; ++i) inv_l[i] = 1.0f / buf.l[hh * B + i];
    float* row = buf.s;  // scores are no longer needed: one output row at a time
    for (int i = 0; i < nq; ++i) {
      for (int e = 0; e < d; ++e) row[e] = ot[e * B + i] * inv_l[i];
      store_row(row, d, a.bf16, a.out, (blk.q0 + i) * q_stride + int64_t{h} * d);
    }
  }
}

}  // namespace

void attention_avx512(const AttentionArgs& args, const AttentionBlock* blocks, int64_t n_blocks, float* scratch,
                      int64_t scratch_stride) {
  const int64_t items = n_blocks * args.hkv;
  const int group = args.hq / args.hkv;
#pragma omp parallel
  {
    const Buffers buf = carve(scratch + omp_get_thread_num() * scratch_stride, group, args.d);
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      run_block(args, blocks[it / args.hkv], static_cast<int>(it % args.hkv), buf);
    }
  }
}

}  // namespace ember::cpu
