// Row gathers, SwiGLU and dtype conversion: memory-bound kernels with 128-bit accesses where the
// operands allow.
#include <algorithm>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/vector_io.cuh"

namespace ember::cuda {
namespace {

// One block per output row: out[r] = src[index(r)].
template <int V, class T>
__global__ void gather_rows_kernel(const T* __restrict__ src, const int32_t* __restrict__ ids,
                                   const int32_t* __restrict__ seq_offsets, T* __restrict__ out, int n) {
  const int64_t r = blockIdx.x;
  const int64_t from = ids != nullptr ? ids[r] : seq_offsets[r + 1] - 1;
  const T* s = src + from * n;
  T* o = out + r * n;
  for (int i = threadIdx.x * V; i < n; i += blockDim.x * V) {
    if constexpr (V == 8) {
      *reinterpret_cast<uint4*>(o + i) = *reinterpret_cast<const uint4*>(s + i);
    } else {
      o[i] = s[i];
    }
  }
}

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// Rows r = blockIdx.y, blockIdx.y + gridDim.y, ...; V columns per thread along the row.
template <int V, class T>
__global__ void swiglu_kernel(const T* __restrict__ gate_up, T* __restrict__ out, int64_t rows, int n) {
  const int stride = gridDim.x * blockDim.x * V;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* gate = gate_up + r * 2 * n;
    for (int i = (blockIdx.x * blockDim.x + threadIdx.x) * V; i < n; i += stride) {
      float g[V], u[V];
      load_half<V>(gate + i, g);
      load_half<V>(gate + n + i, u);
#pragma unroll
      for (int j = 0; j < V; ++j) g[j] = silu_mul(g[j], u[j]);
      store_half<V>(out + r * n + i, g);
    }
  }
}

template <class T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return Half<T>::to_float(v);
  }
}

template <class S, class D>
__global__ void convert_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float f = to_float(src[i]);
    if constexpr (std::is_same_v<D, float>) {
      dst[i] = f;
    } else {
      dst[i] = Half<D>::from_float(f);
    }
  }
}

__global__ void fill_random_kernel(bf16* x, int64_t n, uint32_t seed) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9e3779b9u ^ seed;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    x[i] = __float2bfloat16_rn(static_cast<float>(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
  }
}

int elementwise_blocks(int64_t work, int threads) {
  return static_cast<int>(std::clamp<int64_t>((work + threads - 1) / threads, 1, 132 * 16));
}

int row_threads(int64_t n, int v) {
  return static_cast<int>(std::clamp<int64_t>((n / v + 31) / 32 * 32, 32, 512));
}

template <class T>
void gather_rows(const T* src, const int32_t* ids, const int32_t* seq_offsets, T* out, int64_t rows, int64_t n,
                 cudaStream_t stream, const char* what) {
  if (rows == 0) return;
  if (n % 8 == 0 && aligned16(src) && aligned16(out)) {
    gather_rows_kernel<8><<<rows, row_threads(n, 8), 0, stream>>>(src, ids, seq_offsets, out, static_cast<int>(n));
  } else {
    gather_rows_kernel<1><<<rows, row_threads(n, 1), 0, stream>>>(src, ids, seq_offsets, out, static_cast<int>(n));
  }
  check(cudaGetLastError(), what);
}

template <class S>
void convert_from(const S* src, void* dst, DType dst_dtype, int64_t n, cudaStream_t stream) {
  const int threads = 256, blocks = elementwise_blocks(n, threads);
  if (dst_dtype == DType::F32) {
    convert_kernel<<<blocks, threads, 0, stream>>>(src, static_cast<float*>(dst), n);
  } else if (dst_dtype == DType::BF16) {
    convert_kernel<<<blocks, threads, 0, stream>>>(src, static_cast<bf16*>(dst), n);
  } else if (dst_dtype == DType::F16) {
    convert_kernel<<<blocks, threads, 0, stream>>>(src, static_cast<f16*>(dst), n);
  } else {
    throw Error(std::string("CUDA backend: cannot convert to ") + dtype_name(dst_dtype));
  }
}

}  // namespace

template <class T>
void embed_gather(const T* table, const int32_t* ids, T* out, int64_t rows, int64_t n, cudaStream_t stream) {
  gather_rows(table, ids, nullptr, out, rows, n, stream, "launching embed_gather");
}

template <class T>
void gather_last_tokens(const T* x, const int32_t* seq_offsets, T* out, int64_t seqs, int64_t n, cudaStream_t stream) {
  gather_rows(x, nullptr, seq_offsets, out, seqs, n, stream, "launching gather_last_tokens");
}

template <class T>
void swiglu(const T* gate_up, T* out, int64_t rows, int64_t n, cudaStream_t stream) {
  if (rows == 0 || n == 0) return;
  const int threads = 256;
  const int v = n % 8 == 0 && aligned16(gate_up) && aligned16(out) ? 8 : 1;
  const dim3 grid(static_cast<unsigned>((n / v + threads - 1) / threads),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  if (v == 8) {
    swiglu_kernel<8><<<grid, threads, 0, stream>>>(gate_up, out, rows, static_cast<int>(n));
  } else {
    swiglu_kernel<1><<<grid, threads, 0, stream>>>(gate_up, out, rows, static_cast<int>(n));
  }
  check(cudaGetLastError(), "launching swiglu");
}

void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  switch (src_dtype) {
    case DType::F32: convert_from(static_cast<const float*>(src), dst, dst_dtype, n, stream); break;
    case DType::F16: convert_from(static_cast<const f16*>(src), dst, dst_dtype, n, stream); break;
    case DType::BF16: convert_from(static_cast<const bf16*>(src), dst, dst_dtype, n, stream); break;
    default: throw Error(std::string("CUDA backend: cannot convert from ") + dtype_name(src_dtype));
  }
  check(cudaGetLastError(), "launching convert");
}

#define EMBER_ELEMENTWISE_KERNELS(T)                                                                         \
  template void embed_gather<T>(const T*, const int32_t*, T*, int64_t, int64_t, cudaStream_t);             \
  template void gather_last_tokens<T>(const T*, const int32_t*, T*, int64_t, int64_t, cudaStream_t);       \
  template void swiglu<T>(const T*, T*, int64_t, int64_t, cudaStream_t);
EMBER_ELEMENTWISE_KERNELS(bf16)
EMBER_ELEMENTWISE_KERNELS(f16)
#undef EMBER_ELEMENTWISE_KERNELS

void fill_random(bf16* x, int64_t n, uint32_t seed, cudaStream_t stream) {
  const int threads = 256;
  fill_random_kernel<<<elementwise_blocks(n, threads), threads, 0, stream>>>(x, n, seed);
  check(cudaGetLastError(), "launching fill_random");
}

}  // namespace ember::cuda
