// The fp32 AVX-512 attention kernel: fp32 FMAs on scores and outputs, for exact precision (and
// for bf16 activations where the CPU lacks AVX512_BF16). Built with AVX-512 flags and entered only
// after a runtime CPU check; see attention_avx512_common.h for the layout.
#include "backend/cpu/attention_avx512_common.h"

namespace ember::cpu {
namespace {

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
    for (int c = 0; c < kChunks; ++c) acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(ot + (e0 + r) * B + c * 16), alpha[c]);
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
  float* stage;  // [B, d] rows being transposed
};

Buffers carve(float* base, int group, int d) {
  Buffers b;
  b.qt = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(base) + 63) & ~uintptr_t{63});
  b.ot = b.qt + int64_t{group} * d * B;
  b.m = b.ot + int64_t{group} * d * B;
  b.l = b.m + group * B;
  b.kb = b.l + group * B;
  b.vb = b.kb + B * d;
  b.s = b.vb + B * d;
  b.stage = b.s + B * B;
  return b;
}

void run_block(const AttentionArgs& a, const AttentionBlock& blk, int g, float* scratch) {
  const int d = a.d, group = a.hq / a.hkv;
  const Buffers buf = carve(scratch, group, d);
  const int nq = static_cast<int>(min64(B, blk.seq_end - blk.q0));
  const int64_t q_stride = q_row_stride(a), kv_stride = kv_row_stride(a);

  for (int hh = 0; hh < group; ++hh) {
    for (int i = 0; i < nq; ++i) {
      load_row(a.q, (blk.q0 + i) * q_stride + int64_t{g * group + hh} * d, a.bf16, d, buf.stage + i * d);
    }
    transpose_queries(buf.stage, d, nq, buf.qt + int64_t{hh} * d * B);
  }
  reset_state(buf.ot, buf.m, buf.l, group, d);

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
    write_output(a, blk.q0, nq, g * group + hh, buf.ot + int64_t{hh} * d * B, buf.l + hh * B, buf.stage);
  }
}

}  // namespace

void attention_avx512(const AttentionArgs& args, const AttentionBlock* blocks, int64_t n_blocks, float* scratch,
                      int64_t scratch_stride) {
  for_each_block(args, blocks, n_blocks, scratch, scratch_stride, run_block);
}

}  // namespace ember::cpu
