// Launchers for the attention kernels: argument checks, kernel choice, grid shape and, for the
// Hopper kernel, the TMA tensor maps (encoded on the host through the driver entry point, so
// nothing here links libcuda or touches the stream beyond the launch itself).
#include "backend/cuda/attention.h"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <cmath>
#include <string>

#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/attention_wgmma.cuh"
#include "ember/error.h"

namespace ember::cuda {
namespace {

void check(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw Error("attention: " + what + ": " + cudaGetErrorString(e));
}

bool device_is_sm90() {
  int dev = 0, major = 0, minor = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "reading the compute capability");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "reading the compute capability");
  return major == 9 && minor == 0;
}

dim3 grid_for(int num_q_heads, int num_seqs, int max_seq_len, int block_m) {
  const int64_t x = int64_t{num_q_heads} * num_seqs;
  const int64_t y = (int64_t{max_seq_len} + block_m - 1) / block_m;
  if (x > 0x7fffffff || y > 65535)
    throw Error("attention: batch too large for one launch (" + std::to_string(num_seqs) + " sequences x " +
                std::to_string(num_q_heads) + " heads, longest sequence " + std::to_string(max_seq_len) + ")");
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y));
}

template <int D, class T>
void launch_mma(const AttentionParams<T>& p, int num_seqs, int max_seq_len, cudaStream_t stream) {
  using C = MmaConfig<D>;
  check(cudaFuncSetAttribute(attention_mma_kernel<D, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes),
        "raising the shared-memory limit of the mma kernel");
  attention_mma_kernel<D, T><<<grid_for(p.hq, num_seqs, max_seq_len, C::kBM), C::kThreads, C::kSmemBytes, stream>>>(p);
  check(cudaGetLastError(), "launching the mma kernel (head_dim " + std::to_string(D) + ")");
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t e =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found);
    return e == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f)
               : nullptr;
  }();
  if (!fn) throw Error("attention: the CUDA driver does not provide cuTensorMapEncodeTiled (driver too old?)");
  return fn;
}

// x: [tokens, heads, d] of T with token rows row_stride elements apart, viewed as a 3-D tensor;
// one box is 64 columns (128 bytes, the swizzle width) of `box_heads` consecutive heads for
// `rows` consecutive tokens, landing in shared memory as rows * box_heads rows of 128 bytes.
template <class T>
CUtensorMap tensor_map(const T* x, int64_t tokens, int heads, int d, int64_t row_stride, int box_heads, int rows) {
  constexpr CUtensorMapDataType type =
      ptx::kIsF16<T> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  CUtensorMap map;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(d), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(tokens)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(d) * 2, static_cast<cuuint64_t>(row_stride) * 2};
  const cuuint32_t box[3] = {64, static_cast<cuuint32_t>(box_heads), static_cast<cuuint32_t>(rows)};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUresult r = tensor_map_encoder()(&map, type, 3, const_cast<T*>(x), dims,
                                          strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                          CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) throw Error("attention: cuTensorMapEncodeTiled failed with CUresult " + std::to_string(r));
  return map;
}

// Query heads per wgmma tile: the largest power of two dividing the GQA group (so the tile's heads
// share one key/value head) and the tile's 128 rows. Packing never adds tiles (hq * len / 128 of
// them either way) and removes the mostly empty ones of sequences shorter than 128 tokens.
int pack_shift(int group, int block_m) {
  int shift = 0;
  while (group % (2 << shift) == 0 && block_m % (2 << shift) == 0) ++shift;
  return shift;
}

template <int D, class T>
void launch_wgmma(const AttentionParams<T>& p, int num_seqs, int max_seq_len, cudaStream_t stream) {
  using C = WgmmaConfig<D>;
  const int shift = pack_shift(p.group, C::kBM);
  const CUtensorMap tm_q = tensor_map(p.q, p.tokens, p.hq, D, p.q_stride, 1 << shift, C::kBM >> shift);
  const CUtensorMap tm_k = tensor_map(p.k, p.tokens, p.hkv, D, p.kv_stride, 1, C::kBN);
  const CUtensorMap tm_v = tensor_map(p.v, p.tokens, p.hkv, D, p.kv_stride, 1, C::kBN);
  const WgmmaParams<T> wp{p.out, p.seq_offsets, p.hq, p.group, shift, p.scale_log2};
  const auto kernel = attention_wgmma_kernel<D, T>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes),
        "raising the shared-memory limit of the wgmma kernel");
  kernel<<<grid_for(p.hq >> shift, num_seqs, max_seq_len, C::kBM >> shift), C::kThreads, C::kSmemBytes, stream>>>(
      tm_q, tm_k, tm_v, wp);
  check(cudaGetLastError(), "launching the wgmma kernel (head_dim " + std::to_string(D) + ")");
}

constexpr double kLog2e = 1.4426950408889634;

}  // namespace

template <class T>
void attention_varlen_with(AttentionKernel kernel, const T* q, const T* k, const T* v, T* out,
                           const int32_t* seq_offsets, int num_seqs, int64_t total_tokens, int max_seq_len,
                           int num_q_heads, int num_kv_heads, int head_dim, cudaStream_t stream,
                           int64_t q_row_stride, int64_t kv_row_stride) {
  if (head_dim != 16 && head_dim != 32 && head_dim != 64 && head_dim != 128 && head_dim != 256)
    throw Error("attention: head_dim " + std::to_string(head_dim) + " is not supported (16, 32, 64, 128 or 256)");
  if (num_q_heads <= 0 || num_kv_heads <= 0 || num_q_heads % num_kv_heads != 0)
    throw Error("attention: " + std::to_string(num_q_heads) + " query heads is not a multiple of " +
                std::to_string(num_kv_heads) + " key/value heads");
  if (num_seqs < 0 || total_tokens < 0 || max_seq_len < 0)
    throw Error("attention: negative batch size (" + std::to_string(num_seqs) + " sequences, " +
                std::to_string(total_tokens) + " tokens, longest " + std::to_string(max_seq_len) + ")");
  if (num_seqs == 0 || total_tokens == 0 || max_seq_len == 0) return;
  if (!aligned16(q) || !aligned16(k) || !aligned16(v) || !aligned16(out))
    throw Error("attention: q, k, v and out must be 16-byte aligned device buffers");
  if (q_row_stride == 0) q_row_stride = int64_t{num_q_heads} * head_dim;
  if (kv_row_stride == 0) kv_row_stride = int64_t{num_kv_heads} * head_dim;
  if (q_row_stride < int64_t{num_q_heads} * head_dim || kv_row_stride < int64_t{num_kv_heads} * head_dim ||
      q_row_stride % 8 != 0 || kv_row_stride % 8 != 0)
    throw Error("attention: row strides (" + std::to_string(q_row_stride) + ", " + std::to_string(kv_row_stride) +
                " elements) must cover the heads and be multiples of 8 elements");

  const AttentionParams<T> p{q,
                          k,
                          v,
                          out,
                          seq_offsets,
                          total_tokens,
                          q_row_stride,
                          kv_row_stride,
                          num_q_heads,
                          num_kv_heads,
                          num_q_heads / num_kv_heads,
                          static_cast<float>(kLog2e / std::sqrt(static_cast<double>(head_dim)))};

  const bool wgmma_shape = head_dim == 64 || head_dim == 128;
  if (kernel == AttentionKernel::Auto)
    kernel = wgmma_shape && device_is_sm90() ? AttentionKernel::Wgmma : AttentionKernel::Mma;
  if (kernel == AttentionKernel::Wgmma) {
    if (!wgmma_shape) throw Error("attention: the wgmma kernel takes head_dim 64 or 128 only");
    if (!device_is_sm90()) throw Error("attention: the wgmma kernel needs an sm_90 (Hopper) device");
    if (head_dim == 64) {
      launch_wgmma<64>(p, num_seqs, max_seq_len, stream);
    } else {
      launch_wgmma<128>(p, num_seqs, max_seq_len, stream);
    }
    return;
  }
  switch (head_dim) {
    case 16: launch_mma<16>(p, num_seqs, max_seq_len, stream); break;
    case 32: launch_mma<32>(p, num_seqs, max_seq_len, stream); break;
    case 64: launch_mma<64>(p, num_seqs, max_seq_len, stream); break;
    case 128: launch_mma<128>(p, num_seqs, max_seq_len, stream); break;
    default: launch_mma<256>(p, num_seqs, max_seq_len, stream); break;
  }
}

template <class T>
void attention_varlen(const T* q, const T* k, const T* v, T* out, const int32_t* seq_offsets, int num_seqs,
                      int64_t total_tokens, int max_seq_len, int num_q_heads, int num_kv_heads, int head_dim,
                      cudaStream_t stream, int64_t q_row_stride, int64_t kv_row_stride) {
  attention_varlen_with(AttentionKernel::Auto, q, k, v, out, seq_offsets, num_seqs, total_tokens, max_seq_len,
                        num_q_heads, num_kv_heads, head_dim, stream, q_row_stride, kv_row_stride);
}

#define EMBER_ATTENTION(T)                                                                                      \
  template void attention_varlen<T>(const T*, const T*, const T*, T*, const int32_t*, int, int64_t, int, int, int, \
                                    int, cudaStream_t, int64_t, int64_t);                                        \
  template void attention_varlen_with<T>(AttentionKernel, const T*, const T*, const T*, T*, const int32_t*, int,  \
                                         int64_t, int, int, int, int, cudaStream_t, int64_t, int64_t);
EMBER_ATTENTION(__nv_bfloat16)
EMBER_ATTENTION(__half)
#undef EMBER_ATTENTION

}  // namespace ember::cuda
