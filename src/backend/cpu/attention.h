#pragma once
// Causal grouped-query attention over a packed batch, flash-attention style: queries are taken
// in blocks and keys streamed in blocks with an online softmax, so memory stays O(T) however
// long a sequence is. An AVX-512 kernel runs where the CPU has it; a plain per-row loop elsewhere.
#include <cstdint>

namespace ember::cpu {

// Queries and keys per block of the AVX-512 kernel.
inline constexpr int kAttnBlock = 64;

struct AttentionArgs {
  const void* q;  // [T, hq, d]
  const void* k;  // [T, hkv, d]
  const void* v;  // [T, hkv, d]
  void* out;      // [T, hq, d]
  bool bf16;      // element type of q/k/v/out: bf16 if true, else fp32
  int64_t tokens;
  int hq, hkv, d;
  const int32_t* seq_offsets;  // [sequences + 1]
  int64_t sequences;
  float scale;
};

// One block of queries of one sequence: rows [q0, q0 + kAttnBlock) clipped to seq_end.
struct AttentionBlock {
  int64_t seq_begin, seq_end, q0;
};

// fp32 scratch one thread of the AVX-512 kernel needs.
inline int64_t attention_scratch_floats(int group, int d) {
  const int64_t b = kAttnBlock;
  return 2 * group * d * b + 2 * group * b + 2 * b * d + b * b + 64;
}

bool cpu_has_avx512();

// Picks the kernel for this CPU. `threads` is the OpenMP thread count already set by the caller.
void attention(const AttentionArgs& args);

// The portable kernel, also callable directly so tests cover it on AVX-512 machines.
void attention_generic(const AttentionArgs& args);

// AVX-512 kernel (attention_avx512.cpp, built with AVX-512 flags; call only when
// cpu_has_avx512()). blocks: [n_blocks], scratch: [omp_get_max_threads() * scratch_stride].
void attention_avx512(const AttentionArgs& args, const AttentionBlock* blocks, int64_t n_blocks, float* scratch,
                      int64_t scratch_stride);

}  // namespace ember::cpu
