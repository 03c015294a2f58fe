#pragma once
// Device helpers shared by the kernel files: the 16-bit activation types (bf16, and fp16 by
// option) and their fp32 conversions, loads and stores of V consecutive elements (V = 8 is one
// 128-bit access, used when rows are 16-byte aligned), and reductions.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace ember::cuda {

// Conversions of one 16-bit type T (__nv_bfloat16 or __half) to and from fp32, singly and in pairs.
template <class T>
struct Half;

template <>
struct Half<__nv_bfloat16> {
  using Pair = __nv_bfloat162;
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float f) { return __float2bfloat16_rn(f); }
  static __device__ __forceinline__ float2 to_float2(Pair v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ Pair from_float2(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
};

template <>
struct Half<__half> {
  using Pair = __half2;
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float f) { return __float2half_rn(f); }
  static __device__ __forceinline__ float2 to_float2(Pair v) { return __half22float2(v); }
  static __device__ __forceinline__ Pair from_float2(float lo, float hi) { return __floats2half2_rn(lo, hi); }
};

template <int V, class T>
__device__ __forceinline__ void load_half(const T* p, float* f) {
  if constexpr (V == 8) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const auto* h = reinterpret_cast<const typename Half<T>::Pair*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 t = Half<T>::to_float2(h[i]);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) f[i] = Half<T>::to_float(p[i]);
  }
}

template <int V, class T>
__device__ __forceinline__ void store_half(T* p, const float* f) {
  if constexpr (V == 8) {
    uint4 u;
    auto* h = reinterpret_cast<typename Half<T>::Pair*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = Half<T>::from_float2(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = u;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = Half<T>::from_float(f[i]);
  }
}

template <int V>
__device__ __forceinline__ void load_f32(const float* p, float* f) {
  if constexpr (V == 8) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) f[i] = p[i];
  }
}

// x rounded to T and back, as a value stored in T and read again would be.
template <class T>
__device__ __forceinline__ float round_to(float x) {
  return Half<T>::to_float(Half<T>::from_float(x));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block, the same value in every thread. Call at most once per kernel.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  float total = 0.0f;
  const int warps = (blockDim.x + 31) >> 5;
  for (int i = 0; i < warps; ++i) total += warp_sums[i];
  return total;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace ember::cuda
