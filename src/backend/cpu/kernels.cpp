#include "backend/cpu/kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "ember/error.h"

namespace ember::cpu {
namespace {

// Below this many elements an op runs on the calling thread: waking the team costs more.
constexpr int64_t kParallelMin = 1 << 14;

using bf16 = uint16_t;

void to_f32(const float* s, float* d, int64_t n) { std::memcpy(d, s, static_cast<size_t>(n) * 4); }

void to_f32(const bf16* s, float* d, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = std::bit_cast<float>(static_cast<uint32_t>(s[i]) << 16);
}

void to_f32_f16(const uint16_t* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  }
  for (; i < n; ++i) d[i] = f16_to_f32(s[i]);
}

void from_f32(const float* s, float* d, int64_t n) { std::memcpy(d, s, static_cast<size_t>(n) * 4); }

// Branch-free copy of core/dtype.h's f32_to_bf16 (nearest even, NaN stays quiet) so it vectorises.
void from_f32(const float* s, bf16* d, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = std::bit_cast<uint32_t>(s[i]);
    const uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    const uint32_t nan = (b >> 16) | 0x40u;
    d[i] = static_cast<bf16>((b & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
}

// e^x, 8 lanes (cephes expf polynomial, ~1 ulp), saturating outside [-86, 88] so results stay
// normal (subnormals take a slow path). Written with intrinsics: GCC's own if-conversion of a
// scalar version evaluated both clamp branches and ran 4x slower on ordinary inputs.
__m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-86.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

// g: [n] = silu(g) * u
void silu_mul(float* g, const float* u, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
    const __m256 silu = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    _mm256_storeu_ps(g + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

float inv_rms(const float* v, int64_t n, float eps) {
  float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < n; ++i) ss += v[i] * v[i];
  return 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
}

void scale_by(float* v, int64_t n, float inv, const float* w) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) v[i] = v[i] * inv * w[i];
}

template <class T>
void rms_norm_t(const T* x, T* out, const float* w, float eps, int64_t rows, int64_t n) {
#pragma omp parallel if (rows * n >= kParallelMin)
  {
    std::vector<float> buf(static_cast<size_t>(n));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      to_f32(x + r * n, buf.data(), n);
      scale_by(buf.data(), n, inv_rms(buf.data(), n, eps), w);
      from_f32(buf.data(), out + r * n, n);
    }
  }
}

template <class T>
void add_rms_norm_t(T* residual, const T* x, T* out, const float* w, float eps, int64_t rows, int64_t n) {
#pragma omp parallel if (rows * n >= kParallelMin)
  {
    std::vector<float> buf(static_cast<size_t>(n)), add(static_cast<size_t>(n));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      to_f32(residual + r * n, buf.data(), n);
      to_f32(x + r * n, add.data(), n);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) buf[i] += add[i];
      // The norm reads the residual as stored (rounded to T), as the next layer will.
      from_f32(buf.data(), residual + r * n, n);
      to_f32(residual + r * n, buf.data(), n);
      scale_by(buf.data(), n, inv_rms(buf.data(), n, eps), w);
      from_f32(buf.data(), out + r * n, n);
    }
  }
}

template <class T>
void head_norm_rope_t(T* x, int64_t tokens, int64_t row_stride, int64_t heads, int64_t d, const float* w, float eps,
                      const float* cos, const float* sin) {
  const int64_t half = d / 2;
#pragma omp parallel if (tokens * heads * d >= kParallelMin)
  {
    std::vector<float> buf(static_cast<size_t>(d)), rot(static_cast<size_t>(d));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const float* c = cos + t * half;
      const float* s = sin + t * half;
      for (int64_t h = 0; h < heads; ++h) {
        T* row = x + t * row_stride + h * d;
        to_f32(row, buf.data(), d);
        scale_by(buf.data(), d, inv_rms(buf.data(), d, eps), w);
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          rot[i] = buf[i] * c[i] - buf[i + half] * s[i];
          rot[i + half] = buf[i + half] * c[i] + buf[i] * s[i];
        }
        from_f32(rot.data(), row, d);
      }
    }
  }
}

template <class T>
void swiglu_t(const T* gate_up, T* out, int64_t rows, int64_t n) {
  constexpr int64_t kChunk = 4096;
  const int64_t per_row = (n + kChunk - 1) / kChunk;
#pragma omp parallel if (rows * n >= kParallelMin)
  {
    std::vector<float> g(kChunk), u(kChunk);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < rows * per_row; ++c) {
      const int64_t r = c / per_row, begin = c % per_row * kChunk, len = std::min(kChunk, n - begin);
      const T* gate = gate_up + r * 2 * n + begin;
      to_f32(gate, g.data(), len);
      to_f32(gate + n, u.data(), len);
      silu_mul(g.data(), u.data(), len);
      from_f32(g.data(), out + r * n + begin, len);
    }
  }
}

void load_any(const void* src, DType dt, int64_t offset, float* dst, int64_t n) {
  switch (dt) {
    case DType::F32:
      return to_f32(static_cast<const float*>(src) + offset, dst, n);
    case DType::BF16:
      return to_f32(static_cast<const bf16*>(src) + offset, dst, n);
    case DType::F16:
      return to_f32_f16(static_cast<const uint16_t*>(src) + offset, dst, n);
    default:
      throw Error(std::string("CPU backend: cannot read ") + dtype_name(dt) + " as floating point");
  }
}

void store_any(const float* src, void* dst, DType dt, int64_t offset, int64_t n) {
  switch (dt) {
    case DType::F32:
      return from_f32(src, static_cast<float*>(dst) + offset, n);
    case DType::BF16:
      return from_f32(src, static_cast<bf16*>(dst) + offset, n);
    default: {
      for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[offset + i] = f32_to_f16(src[i]);
    }
  }
}

bool is_bf16(DType dt) {
  if (dt != DType::F32 && dt != DType::BF16) {
    throw Error(std::string("CPU backend: activations must be F32 or BF16, got ") + dtype_name(dt));
  }
  return dt == DType::BF16;
}

}  // namespace

void rms_norm(const void* x, void* out, DType dt, const float* w, float eps, int64_t rows, int64_t n) {
  if (is_bf16(dt)) {
    rms_norm_t(static_cast<const bf16*>(x), static_cast<bf16*>(out), w, eps, rows, n);
  } else {
    rms_norm_t(static_cast<const float*>(x), static_cast<float*>(out), w, eps, rows, n);
  }
}

void add_rms_norm(void* residual, const void* x, void* out, DType dt, const float* w, float eps, int64_t rows,
                  int64_t n) {
  if (is_bf16(dt)) {
    add_rms_norm_t(static_cast<bf16*>(residual), static_cast<const bf16*>(x), static_cast<bf16*>(out), w, eps, rows, n);
  } else {
    add_rms_norm_t(static_cast<float*>(residual), static_cast<const float*>(x), static_cast<float*>(out), w, eps, rows,
                   n);
  }
}

void rope_table(const int32_t* positions, int64_t tokens, int64_t d, float theta, float* cos, float* sin) {
  const int64_t half = d / 2;
  // inv_freq = 1 / theta^(arange(0, d, 2) / d), every step in fp32 like the HF rotary embedding.
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(d));
  }
#pragma omp parallel for schedule(static) if (tokens * half >= kParallelMin)
  for (int64_t t = 0; t < tokens; ++t) {
    const float pos = static_cast<float>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[i];
      cos[t * half + i] = std::cos(angle);
      sin[t * half + i] = std::sin(angle);
    }
  }
}

void head_norm_rope(void* x, DType dt, int64_t tokens, int64_t row_stride, int64_t heads, int64_t d, const float* w,
                    float eps, const float* cos, const float* sin) {
  if (is_bf16(dt)) {
    head_norm_rope_t(static_cast<bf16*>(x), tokens, row_stride, heads, d, w, eps, cos, sin);
  } else {
    head_norm_rope_t(static_cast<float*>(x), tokens, row_stride, heads, d, w, eps, cos, sin);
  }
}

void swiglu(const void* gate_up, void* out, DType dt, int64_t rows, int64_t n) {
  if (is_bf16(dt)) {
    swiglu_t(static_cast<const bf16*>(gate_up), static_cast<bf16*>(out), rows, n);
  } else {
    swiglu_t(static_cast<const float*>(gate_up), static_cast<float*>(out), rows, n);
  }
}

void copy_into_columns(const void* src, void* dst, int64_t dst_cols, int64_t col0, int64_t rows, int64_t cols,
                       DType dt) {
  const auto size = static_cast<int64_t>(dtype_size(dt));
  const auto* s = static_cast<const char*>(src);
  auto* d = static_cast<char*>(dst);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(d + (r * dst_cols + col0) * size, s + r * cols * size, static_cast<size_t>(cols * size));
  }
}

void gather_rows(const void* table, DType table_dt, int64_t n, const int32_t* idx, int64_t count, void* out,
                 DType out_dt) {
#pragma omp parallel if (count * n >= kParallelMin)
  {
    std::vector<float> buf(static_cast<size_t>(n));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < count; ++r) {
      load_any(table, table_dt, static_cast<int64_t>(idx[r]) * n, buf.data(), n);
      store_any(buf.data(), out, out_dt, r * n, n);
    }
  }
}

void convert_parallel(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel if (n >= kParallelMin)
  {
    std::vector<float> buf(kChunk);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
      load_any(src, src_dt, begin, buf.data(), len);
      store_any(buf.data(), dst, dst_dt, begin, len);
    }
  }
}

}  // namespace ember::cpu
