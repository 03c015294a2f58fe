#include "backend/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "core/dtype.h"
#include "ember/error.h"

namespace ember::cpu {

namespace {

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return has;
}

bool cpu_has_avx512_bf16() {
  static const bool has = cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
  return has;
}

float element(const void* base, int64_t i, bool bf16) {
  return bf16 ? bf16_to_f32(static_cast<const uint16_t*>(base)[i]) : static_cast<const float*>(base)[i];
}

// Blocks of queries of every sequence, costliest (latest in their sequence) first, so the
// dynamic schedule finishes with small items and threads end together.
std::vector<AttentionBlock> query_blocks(const AttentionArgs& a) {
  std::vector<AttentionBlock> blocks;
  for (int64_t s = 0; s < a.sequences; ++s) {
    const int64_t begin = a.seq_offsets[s], end = a.seq_offsets[s + 1];
    for (int64_t q0 = begin; q0 < end; q0 += kAttnBlock) blocks.push_back({begin, end, q0});
  }
  std::stable_sort(blocks.begin(), blocks.end(), [](const AttentionBlock& x, const AttentionBlock& y) {
    return x.q0 - x.seq_begin > y.q0 - y.seq_begin;
  });
  return blocks;
}

void attention_generic(const AttentionArgs& a) {
  const int d = a.d, group = a.hq / a.hkv;
  const int64_t q_stride = q_row_stride(a), kv_stride = kv_row_stride(a), out_stride = int64_t{a.hq} * d;
#pragma omp parallel
  {
    std::vector<float> qrow(d), acc(d), krow(d), scores;
#pragma omp for collapse(2) schedule(dynamic, 16)
    for (int64_t t = 0; t < a.tokens; ++t) {
      for (int h = 0; h < a.hq; ++h) {
        const int64_t s = std::upper_bound(a.seq_offsets, a.seq_offsets + a.sequences + 1, t) - a.seq_offsets - 1;
        const int64_t begin = a.seq_offsets[s];
        const int g = h / group;
        for (int e = 0; e < d; ++e) qrow[e] = element(a.q, t * q_stride + int64_t{h} * d + e, a.bf16);
        scores.resize(static_cast<size_t>(t - begin + 1));
        float mx = -INFINITY;
        for (int64_t j = begin; j <= t; ++j) {
          for (int e = 0; e < d; ++e) krow[e] = element(a.k, j * kv_stride + int64_t{g} * d + e, a.bf16);
          float dot = 0.0f;
          for (int e = 0; e < d; ++e) dot += qrow[e] * krow[e];
          scores[j - begin] = dot * a.scale;
          mx = std::max(mx, scores[j - begin]);
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        float sum = 0.0f;
        for (int64_t j = begin; j <= t; ++j) {
          const float p = std::exp(scores[j - begin] - mx);
          sum += p;
          for (int e = 0; e < d; ++e) acc[e] += p * element(a.v, j * kv_stride + int64_t{g} * d + e, a.bf16);
        }
        const int64_t o = t * out_stride + int64_t{h} * d;
        for (int e = 0; e < d; ++e) {
          const float y = acc[e] / sum;
          if (a.bf16) {
            static_cast<uint16_t*>(a.out)[o + e] = f32_to_bf16(y);
          } else {
            static_cast<float*>(a.out)[o + e] = y;
          }
        }
      }
    }
  }
}

// Scratch of the calling thread's attention calls, kept between calls (it is a few hundred KB,
// which malloc would otherwise map and fault in afresh every layer).
float* thread_scratch(size_t floats) {
  thread_local std::unique_ptr<float, decltype(&std::free)> buffer(nullptr, &std::free);
  thread_local size_t capacity = 0;
  if (floats > capacity) {
    buffer.reset(static_cast<float*>(std::aligned_alloc(64, (floats * sizeof(float) + 63) & ~size_t{63})));
    if (!buffer) {
      capacity = 0;
      throw std::bad_alloc();
    }
    capacity = floats;
  }
  return buffer.get();
}

}  // namespace

std::vector<AttentionKernel> attention_kernels(const AttentionArgs& args) {
  std::vector<AttentionKernel> kernels;
  if (args.bf16 && args.d % 2 == 0 && cpu_has_avx512_bf16()) kernels.push_back(AttentionKernel::Avx512Bf16);
  if (cpu_has_avx512()) kernels.push_back(AttentionKernel::Avx512);
  kernels.push_back(AttentionKernel::Generic);
  return kernels;
}

void attention(const AttentionArgs& args) { attention(args, attention_kernels(args).front()); }

void attention(const AttentionArgs& args, AttentionKernel kernel) {
  const std::vector<AttentionKernel> usable = attention_kernels(args);
  if (std::find(usable.begin(), usable.end(), kernel) == usable.end()) {
    throw Error("CPU attention: the requested kernel cannot run on this CPU or with these inputs");
  }
  if (kernel == AttentionKernel::Generic) {
    attention_generic(args);
    return;
  }
  const std::vector<AttentionBlock> blocks = query_blocks(args);
  const int64_t stride = (attention_scratch_floats(args.hq / args.hkv, args.d) + 15) & ~int64_t{15};
  float* scratch = thread_scratch(static_cast<size_t>(stride) * omp_get_max_threads());
  const auto n = static_cast<int64_t>(blocks.size());
  if (kernel == AttentionKernel::Avx512Bf16) {
    attention_avx512_bf16(args, blocks.data(), n, scratch, stride);
  } else {
    attention_avx512(args, blocks.data(), n, scratch, stride);
  }
}

}  // namespace ember::cpu
