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

// e^x for vectorised loops (cephes expf polynomial, ~1 ulp), saturating outside [-86, 88]: the
// low clamp keeps results normal, as subnormal results cost a slow microcode path.
inline float exp_approx(float x) {
  x = x < -86.0f ? -86.0f : (x > 88.0f ? 88.0f : x);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // nearest integer
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + (r + 1.0f);
  const uint32_t scale = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(scale);
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
void head_norm_rope_t(T* x, int64_t tokens, int64_t heads, int64_t d, const float* w, float eps, const float* cos,
                      const float* sin) {
  const int64_t half = d / 2;
#pragma omp parallel if (tokens * heads * d >= kParallelMin)
  {
    std::vector<float> buf(static_cast<size_t>(d)), rot(static_cast<size_t>(d));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const float* c = cos + t * half;
      const float* s = sin + t * half;
      for (int64_t h = 0; h < heads; ++h) {
        T* row = x + (t * heads + h) * d;
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
void swiglu_t(const T* gate, const T* up, T* out, int64_t n) {
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel if (n >= kParallelMin)
  {
    std::vector<float> g(kChunk), u(kChunk);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
      to_f32(gate + begin, g.data(), len);
      to_f32(up + begin, u.data(), len);
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) g[i] = g[i] / (1.0f + exp_approx(-g[i])) * u[i];
      from_f32(g.data(), out + begin, len);
    }
  }
}

void load_any(const void* src, DType dt, int64_t offset, float* dst, int64_t n) {
  switch (dt) {
    case DType::F32: return to_f32(static_cast<const float*>(src) + offset, dst, n);
    case DType::BF16: return to_f32(static_cast<const bf16*>(src) + offset, dst, n);
    case DType::F16: return to_f32_f16(static_cast<const uint16_t*>(src) + offset, dst, n);
    default: throw Error(std::string("CPU backend: cannot read ") + dtype_name(dt) + " as floating point");
  }
}

void store_any(const float* src, void* dst, DType dt, int64_t offset, int64_t n) {
  switch (dt) {
    case DType::F32: return from_f32(src, static_cast<float*>(dst) + offset, n);
    case DType::BF16: return from_f32(src, static_cast<bf16*>(dst) + offset, n);
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
    add_rms_norm_t(static_cast<bf16*>(residual), static_cast<const bf16*>(x), static_cast<bf16*>(out), w, eps, rows,
                   n);
  } else {
    add_rms_norm_t(static_cast<float*>(residual), static_cast<const float*>(x), static_cast<float*>(out), w, eps,
                   rows, n);
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

void head_norm_rope(void* x, DType dt, int64_t tokens, int64_t heads, int64_t d, const float* w, float eps,
                    const float* cos, const float* sin) {
  if (is_bf16(dt)) {
    head_norm_rope_t(static_cast<bf16*>(x), tokens, heads, d, w, eps, cos, sin);
  } else {
    head_norm_rope_t(static_cast<float*>(x), tokens, heads, d, w, eps, cos, sin);
  }
}

void swiglu(const void* gate, const void* up, void* out, DType dt, int64_t n) {
  if (is_bf16(dt)) {
    swiglu_t(static_cast<const bf16*>(gate), static_cast<const bf16*>(up), static_cast<bf16*>(out), n);
  } else {
    swiglu_t(static_cast<const float*>(gate), static_cast<const float*>(up), static_cast<float*>(out), n);
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
