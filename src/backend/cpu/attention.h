#pragma once
// Causal grouped-query attention over a packed batch, flash-attention style: queries are taken
// in blocks and keys streamed in blocks with an online softmax, so memory stays O(T) however
// long a sequence is. AVX-512 kernels run where the CPU has them; a plain per-row loop elsewhere.
#include <cstdint>
#include <vector>

namespace ember::cpu {

// Queries and keys per block of the AVX-512 kernel.
inline constexpr int kAttnBlock = 64;

struct AttentionArgs {
  const void* q;  // [T, hq, d], token rows q_row_stride() elements apart
  const void* k;  // [T, hkv, d], token rows kv_row_stride() elements apart
  const void* v;  // [T, hkv, d], token rows kv_row_stride() elements apart
  void* out;      // [T, hq, d], contiguous
  bool bf16;      // element type of q/k/v/out: bf16 if true, else fp32
  int64_t tokens;
  int hq, hkv, d;
  const int32_t* seq_offsets;  // [sequences + 1]
  int64_t sequences;
  float scale;
  // Elements between token rows of q, and of k and v; 0 means contiguous (hq * d, hkv * d). Larger
  // when q, k and v are column blocks of one fused projection output.
  int64_t q_stride = 0, kv_stride = 0;
};

inline int64_t q_row_stride(const AttentionArgs& a) { return a.q_stride > 0 ? a.q_stride : int64_t{a.hq} * a.d; }
inline int64_t kv_row_stride(const AttentionArgs& a) { return a.kv_stride > 0 ? a.kv_stride : int64_t{a.hkv} * a.d; }

// One block of queries of one sequence: rows [q0, q0 + kAttnBlock) clipped to seq_end.
struct AttentionBlock {
  int64_t seq_begin, seq_end, q0;
};

// fp32 scratch one thread of an AVX-512 kernel needs (either kernel).
inline int64_t attention_scratch_floats(int group, int d) {
  const int64_t b = kAttnBlock;
  return 2 * group * d * b + 2 * group * b + 2 * b * d + b * b + b * b / 2 + b * d + 64;
}

enum class AttentionKernel {
  Generic,     // portable per-query loop, fp32
  Avx512,      // fp32 FMAs on fp32 or bf16 inputs
  Avx512Bf16,  // bf16 dot products (vdpbf16ps), fp32 softmax; bf16 inputs only
};

// The kernels this CPU can run for `args`, fastest first (Generic always last).
std::vector<AttentionKernel> attention_kernels(const AttentionArgs& args);

// Runs the fastest kernel, or the one named (which must be in attention_kernels(args)).
void attention(const AttentionArgs& args);
void attention(const AttentionArgs& args, AttentionKernel kernel);

// Entry points of the AVX-512 files, built with AVX-512 flags: call only through attention().
// blocks: [n_blocks], scratch: [omp_get_max_threads() * scratch_stride] floats.
void attention_avx512(const AttentionArgs& args, const AttentionBlock* blocks, int64_t n_blocks, float* scratch,
                      int64_t scratch_stride);
void attention_avx512_bf16(const AttentionArgs& args, const AttentionBlock* blocks, int64_t n_blocks, float* scratch,
                           int64_t scratch_stride);

}  // namespace ember::cpu
