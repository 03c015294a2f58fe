// RMSNorm, residual add + RMSNorm, and per-head RMSNorm + RoPE. One block per token row; rows are
// read twice (sum of squares, then scale), the second read coming from L1/L2.
#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/vector_io.cuh"

namespace ember::cuda {
namespace {

template <int V, class T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const float* __restrict__ w, T* __restrict__ out, int n,
                                float eps) {
  const int64_t row = blockIdx.x;
  x += row * n;
  out += row * n;
  float ss = 0.0f;
  for (int i = threadIdx.x * V; i < n; i += blockDim.x * V) {
    float f[V];
    load_half<V>(x + i, f);
#pragma unroll
    for (int j = 0; j < V; ++j) ss += f[j] * f[j];
  }
  const float inv = 1.0f / sqrtf(block_sum(ss) / static_cast<float>(n) + eps);
  for (int i = threadIdx.x * V; i < n; i += blockDim.x * V) {
    float f[V], g[V];
    load_half<V>(x + i, f);
    load_f32<V>(w + i, g);
#pragma unroll
    for (int j = 0; j < V; ++j) f[j] = f[j] * inv * g[j];
    store_half<V>(out + i, f);
  }
}

// The norm reads the residual as stored (rounded to T), as the next layer will. Each thread
// re-reads only the elements it wrote, so no barrier is needed between the passes.
template <int V, class T>
__global__ void add_rms_norm_kernel(T* residual, const T* x, const float* __restrict__ w, T* out, int n, float eps) {
  const int64_t row = blockIdx.x;
  residual += row * n;
  x += row * n;
  out += row * n;
  float ss = 0.0f;
  for (int i = threadIdx.x * V; i < n; i += blockDim.x * V) {
    float r[V], a[V];
    load_half<V>(residual + i, r);
    load_half<V>(x + i, a);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      r[j] = round_to<T>(r[j] + a[j]);
      ss += r[j] * r[j];
    }
    store_half<V>(residual + i, r);
  }
  const float inv = 1.0f / sqrtf(block_sum(ss) / static_cast<float>(n) + eps);
  for (int i = threadIdx.x * V; i < n; i += blockDim.x * V) {
    float r[V], g[V];
    load_half<V>(residual + i, r);
    load_f32<V>(w + i, g);
#pragma unroll
    for (int j = 0; j < V; ++j) r[j] = r[j] * inv * g[j];
    store_half<V>(out + i, r);
  }
}

// Block (t, y) takes token t: cos/sin of its position go to shared memory once, then each warp
// normalises and rotates whole heads (q heads first, then k heads), the gridDim.y blocks of a
// token sharing its heads out. Lane l holds the rotate-half pairs (j, j + d/2) for
// j = l, l + 32, ...: P pairs at most.
template <int P, class T>
__global__ void qk_norm_rope_kernel(T* qkv, const float* __restrict__ q_norm, const float* __restrict__ k_norm,
                                    const int32_t* __restrict__ positions, int hq, int hkv, int d, float eps,
                                    const __grid_constant__ RopeFreqs freqs) {
  extern __shared__ float trig[];  // cos: [d / 2], then sin: [d / 2]
  const int half = d / 2;
  const int64_t t = blockIdx.x;
  const float pos = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = pos * freqs.inv_freq[i];
    trig[i] = cosf(angle);
    trig[half + i] = sinf(angle);
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int h = blockIdx.y * warps + (threadIdx.x >> 5); h < hq + hkv; h += gridDim.y * warps) {
    T* row = qkv + (t * (hq + 2 * hkv) + h) * d;
    const float* w = h < hq ? q_norm : k_norm;
    float a[P], b[P];
    float ss = 0.0f;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int j = lane + 32 * p;
      a[p] = j < half ? Half<T>::to_float(row[j]) : 0.0f;
      b[p] = j < half ? Half<T>::to_float(row[j + half]) : 0.0f;
      ss += a[p] * a[p] + b[p] * b[p];
    }
    const float inv = 1.0f / sqrtf(warp_sum(ss) / static_cast<float>(d) + eps);
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int j = lane + 32 * p;
      if (j < half) {
        const float x1 = a[p] * inv * w[j], x2 = b[p] * inv * w[j + half];
        const float c = trig[j], s = trig[half + j];
        row[j] = Half<T>::from_float(x1 * c - x2 * s);
        row[j + half] = Half<T>::from_float(x2 * c + x1 * s);
      }
    }
  }
}

// Threads per row block: enough for one pass over the row, in whole warps.
int row_threads(int64_t n, int v) {
  const int64_t needed = (n / v + 31) / 32 * 32;
  return static_cast<int>(std::clamp<int64_t>(needed, 32, 1024));
}

}  // namespace

template <class T>
void rms_norm(const T* x, const float* w, T* out, int64_t rows, int64_t n, float eps, cudaStream_t stream) {
  if (rows == 0) return;
  if (n % 8 == 0 && aligned16(x) && aligned16(w) && aligned16(out)) {
    rms_norm_kernel<8><<<rows, row_threads(n, 8), 0, stream>>>(x, w, out, static_cast<int>(n), eps);
  } else {
    rms_norm_kernel<1><<<rows, row_threads(n, 1), 0, stream>>>(x, w, out, static_cast<int>(n), eps);
  }
  check(cudaGetLastError(), "launching rms_norm");
}

template <class T>
void add_rms_norm(T* residual, const T* x, const float* w, T* out, int64_t rows, int64_t n, float eps,
                  cudaStream_t stream) {
  if (rows == 0) return;
  if (n % 8 == 0 && aligned16(residual) && aligned16(x) && aligned16(w) && aligned16(out)) {
    add_rms_norm_kernel<8><<<rows, row_threads(n, 8), 0, stream>>>(residual, x, w, out, static_cast<int>(n), eps);
  } else {
    add_rms_norm_kernel<1><<<rows, row_threads(n, 1), 0, stream>>>(residual, x, w, out, static_cast<int>(n), eps);
  }
  check(cudaGetLastError(), "launching add_rms_norm");
}

template <class T>
void qk_norm_rope(T* qkv, const float* q_norm, const float* k_norm, const int32_t* positions, int64_t tokens,
                  int hq, int hkv, int d, float eps, const RopeFreqs& freqs, cudaStream_t stream) {
  if (tokens == 0) return;
  const int warps = std::min(8, hq + hkv);
  // A few tokens alone would leave most SMs idle and each warp a chain of heads: then a token's
  // heads spread over several blocks, one head per warp (each block recomputes cos/sin).
  constexpr int64_t kBlocksWanted = 512;
  const int64_t per_token = std::clamp<int64_t>(kBlocksWanted / tokens, 1, (hq + hkv + warps - 1) / warps);
  const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(per_token));
  const size_t smem = static_cast<size_t>(d) * sizeof(float);
  const int half = d / 2;
  if (half <= 32) {
    qk_norm_rope_kernel<1><<<grid, 32 * warps, smem, stream>>>(qkv, q_norm, k_norm, positions, hq, hkv, d, eps, freqs);
  } else if (half <= 64) {
    qk_norm_rope_kernel<2><<<grid, 32 * warps, smem, stream>>>(qkv, q_norm, k_norm, positions, hq, hkv, d, eps, freqs);
  } else if (half <= 128) {
    qk_norm_rope_kernel<4><<<grid, 32 * warps, smem, stream>>>(qkv, q_norm, k_norm, positions, hq, hkv, d, eps, freqs);
  } else {
    qk_norm_rope_kernel<8><<<grid, 32 * warps, smem, stream>>>(qkv, q_norm, k_norm, positions, hq, hkv, d, eps, freqs);
  }
  check(cudaGetLastError(), "launching qk_norm_rope");
}

#define EMBER_NORM_KERNELS(T)                                                                                    \
  template void rms_norm<T>(const T*, const float*, T*, int64_t, int64_t, float, cudaStream_t);                  \
  template void add_rms_norm<T>(T*, const T*, const float*, T*, int64_t, int64_t, float, cudaStream_t);          \
  template void qk_norm_rope<T>(T*, const float*, const float*, const int32_t*, int64_t, int, int, int, float, \
                                const RopeFreqs&, cudaStream_t);
EMBER_NORM_KERNELS(bf16)
EMBER_NORM_KERNELS(f16)
#undef EMBER_NORM_KERNELS

}  // namespace ember::cuda
