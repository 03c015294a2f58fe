// Parity of the CUDA attention kernels with a double-precision CPU reference over packed
// variable-length batches: odd lengths, tile boundaries, GQA ratios, every head_dim, long
// sequences (sampled rows), causality and isolation between sequences. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "backend/cuda/attention.h"
#include "core/dtype.h"
#include "ember/error.h"

namespace {

using ember::cuda::AttentionKernel;

bool has_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

bool device_is_sm90() {
  int dev = 0, major = 0, minor = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!has_device()) GTEST_SKIP() << "no CUDA device"

const char* kernel_name(AttentionKernel k) {
  return k == AttentionKernel::Mma ? "mma" : k == AttentionKernel::Wgmma ? "wgmma" : "auto";
}

// Every kernel that can run this head_dim here.
std::vector<AttentionKernel> kernels_for(int d) {
  std::vector<AttentionKernel> ks{AttentionKernel::Mma};
  if ((d == 64 || d == 128) && device_is_sm90()) ks.push_back(AttentionKernel::Wgmma);
  return ks;
}

void cuda_ok(cudaError_t e, const char* what) { ASSERT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e); }

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) {
    if (cudaMalloc(&ptr_, std::max<size_t>(bytes, 16)) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

struct Problem {
  std::vector<int> lens;
  int hq = 0, hkv = 0, d = 0;
  std::vector<int32_t> offsets;  // [S + 1]
  int64_t tokens = 0;
  int max_len = 0;
  std::vector<uint16_t> q, k, v;  // bf16 bits, [T, H, D]
};

// Deterministic values in [-1, 1).
struct Rng {
  uint64_t state;
  float next() {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<int32_t>(state >> 32)) * (1.0f / 2147483648.0f);
  }
};

// Queries are scaled up so the softmax is peaked (scores of a few units), which exercises the
// running maximum; keys and values stay in [-1, 1).
Problem make_problem(std::vector<int> lens, int hq, int hkv, int d, uint64_t seed = 1) {
  Problem p;
  p.lens = std::move(lens);
  p.hq = hq;
  p.hkv = hkv;
  p.d = d;
  p.offsets.push_back(0);
  for (int l : p.lens) p.offsets.push_back(p.offsets.back() + l);
  p.tokens = p.offsets.back();
  p.max_len = *std::max_element(p.lens.begin(), p.lens.end());
  Rng rng{seed * 0x9E3779B97F4A7C15ull + 7};
  p.q.resize(p.tokens * hq * d);
  p.k.resize(p.tokens * hkv * d);
  p.v.resize(p.tokens * hkv * d);
  for (auto& x : p.q) x = ember::f32_to_bf16(8.0f * rng.next());
  for (auto& x : p.k) x = ember::f32_to_bf16(rng.next());
  for (auto& x : p.v) x = ember::f32_to_bf16(rng.next());
  return p;
}

// A problem's tensors in device memory.
struct DeviceProblem {
  const Problem& p;
  DeviceBuffer q, k, v, out, offsets;

  explicit DeviceProblem(const Problem& prob)
      : p(prob),
        q(prob.q.size() * 2),
        k(prob.k.size() * 2),
        v(prob.v.size() * 2),
        out(prob.q.size() * 2),
        offsets(prob.offsets.size() * 4) {
    EXPECT_TRUE(q.as<void>() && k.as<void>() && v.as<void>() && out.as<void>() && offsets.as<void>());
    cudaMemcpy(q.as<void>(), p.q.data(), p.q.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(k.as<void>(), p.k.data(), p.k.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(v.as<void>(), p.v.data(), p.v.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(offsets.as<void>(), p.offsets.data(), p.offsets.size() * 4, cudaMemcpyHostToDevice);
    clear_output();
  }
  // NaN fill: a row the kernel forgets to write fails the comparison.
  void clear_output() { cudaMemset(out.as<void>(), 0xFF, p.q.size() * 2); }
  void launch(AttentionKernel kernel, cudaStream_t stream) {
    ember::cuda::attention_varlen_with(kernel, q.as<__nv_bfloat16>(), k.as<__nv_bfloat16>(), v.as<__nv_bfloat16>(),
                                       out.as<__nv_bfloat16>(), offsets.as<int32_t>(),
                                       static_cast<int>(p.lens.size()), p.tokens, p.max_len, p.hq, p.hkv, p.d,
                                       stream);
  }
  std::vector<uint16_t> download() {
    std::vector<uint16_t> result(p.q.size());
    cuda_ok(cudaDeviceSynchronize(), "attention kernel");
    cudaMemcpy(result.data(), out.as<void>(), p.q.size() * 2, cudaMemcpyDeviceToHost);
    return result;
  }
};

std::vector<uint16_t> run(const Problem& p, AttentionKernel kernel) {
  DeviceProblem dev(p);
  dev.launch(kernel, nullptr);
  return dev.download();
}

// out[t, h, :] in double precision from the same bf16 inputs.
std::vector<double> reference_row(const Problem& p, int64_t t, int h) {
  const int64_t s = std::upper_bound(p.offsets.begin(), p.offsets.end(), t) - p.offsets.begin() - 1;
  const int64_t begin = p.offsets[s];
  const int d = p.d, g = h / (p.hq / p.hkv);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> qrow(d), scores(t - begin + 1), acc(d, 0.0);
  for (int e = 0; e < d; ++e) qrow[e] = ember::bf16_to_f32(p.q[(t * p.hq + h) * d + e]);
  double mx = -INFINITY;
  for (int64_t j = begin; j <= t; ++j) {
    const uint16_t* kr = &p.k[(j * p.hkv + g) * d];
    double dot = 0.0;
    for (int e = 0; e < d; ++e) dot += qrow[e] * ember::bf16_to_f32(kr[e]);
    scores[j - begin] = dot * scale;
    mx = std::max(mx, scores[j - begin]);
  }
  double sum = 0.0;
  for (int64_t j = begin; j <= t; ++j) {
    const double w = std::exp(scores[j - begin] - mx);
    sum += w;
    const uint16_t* vr = &p.v[(j * p.hkv + g) * d];
    for (int e = 0; e < d; ++e) acc[e] += w * ember::bf16_to_f32(vr[e]);
  }
  for (auto& x : acc) x /= sum;
  return acc;
}

// Reference rows [rows][head][dim].
using Reference = std::vector<std::vector<std::vector<double>>>;

Reference reference(const Problem& p, const std::vector<int64_t>& rows) {
  Reference ref(rows.size());
  for (size_t i = 0; i < rows.size(); ++i)
    for (int h = 0; h < p.hq; ++h) ref[i].push_back(reference_row(p, rows[i], h));
  return ref;
}

// Compares the given token rows (every head) against the reference. The tolerance covers bf16
// rounding of the output and of the softmax weights fed to the P·V product.
void expect_matches(const Problem& p, const std::vector<uint16_t>& out, const std::vector<int64_t>& rows,
                    const Reference& ref, const std::string& what) {
  int64_t bad = 0;
  double worst = 0.0;
  std::string first;
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t t = rows[i];
    for (int h = 0; h < p.hq; ++h) {
      for (int e = 0; e < p.d; ++e) {
        const double want = ref[i][h][e];
        const double got = ember::bf16_to_f32(out[(t * p.hq + h) * p.d + e]);
        const double err = std::abs(got - want);
        if (!(err <= 6e-3 + 1e-2 * std::abs(want))) {
          if (bad++ == 0)
            first = "token " + std::to_string(t) + " head " + std::to_string(h) + " dim " + std::to_string(e) +
                    ": got " + std::to_string(got) + ", want " + std::to_string(want);
        }
        worst = std::isnan(err) ? INFINITY : std::max(worst, err);
      }
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " elements off, first at " << first << "; worst error " << worst;
}

std::vector<int64_t> all_rows(const Problem& p) {
  std::vector<int64_t> rows(p.tokens);
  std::iota(rows.begin(), rows.end(), 0);
  return rows;
}

// Rows at and around tile boundaries, the ends, and a stride through the middle.
std::vector<int64_t> sample_rows(const Problem& p, int64_t stride) {
  std::vector<int64_t> rows;
  for (int64_t t = 0; t < p.tokens; t += stride) rows.push_back(t);
  for (int64_t b = 64; b < p.tokens; b *= 2)
    for (int64_t t : {b - 1, b, b + 1}) rows.push_back(t);
  for (int64_t t = std::max<int64_t>(0, p.tokens - 3); t < p.tokens; ++t) rows.push_back(t);
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

std::string describe(const Problem& p, AttentionKernel k) {
  return std::string(kernel_name(k)) + " d=" + std::to_string(p.d) + " hq=" + std::to_string(p.hq) +
         " hkv=" + std::to_string(p.hkv) + " T=" + std::to_string(p.tokens);
}

// Runs every kernel for this head_dim (plus `extra`) and checks `rows` of each output.
void check_kernels(const Problem& p, const std::vector<int64_t>& rows, std::vector<AttentionKernel> extra = {}) {
  const Reference ref = reference(p, rows);
  std::vector<AttentionKernel> ks = kernels_for(p.d);
  ks.insert(ks.end(), extra.begin(), extra.end());
  for (AttentionKernel k : ks) expect_matches(p, run(p, k), rows, ref, describe(p, k));
}

TEST(CudaAttention, SingleTokenSequence) {
  SKIP_WITHOUT_GPU();
  for (int d : {16, 64, 128, 256}) {
    const Problem p = make_problem({1}, 4, 1, d);
    check_kernels(p, all_rows(p));
  }
}

TEST(CudaAttention, PackedOddLengthsEveryHeadDimAndGroupRatio) {
  SKIP_WITHOUT_GPU();
  for (int d : {16, 32, 64, 128, 256}) {
    for (int ratio : {1, 2, 4, 8}) {
      const Problem p = make_problem({1, 7, 33, 100, 129}, 8, 8 / ratio, d, d * 10 + ratio);
      check_kernels(p, all_rows(p));
    }
  }
}

TEST(CudaAttention, LengthsAroundTileBoundaries) {
  SKIP_WITHOUT_GPU();
  for (int d : {64, 128}) {
    const Problem p = make_problem({63, 64, 65, 2, 127, 128, 129, 255, 256, 257, 300}, 4, 2, d, 3);
    check_kernels(p, all_rows(p));
  }
}

TEST(CudaAttention, ManyShortSequencesQwenShape) {
  SKIP_WITHOUT_GPU();
  const Problem p = make_problem(std::vector<int>(256, 32), 32, 8, 128, 4);
  std::vector<int64_t> rows;
  for (int64_t t = 0; t < p.tokens; t += 5) rows.push_back(t);
  check_kernels(p, rows, {AttentionKernel::Auto});
}

// q, k and v read in place from one fused [T, (hq + 2 hkv) * d] projection output through row
// strides, as the CUDA backend runs them; GQA groups that pack into the wgmma tile (2, 4, 8) and
// one that does not (3).
TEST(CudaAttention, FusedQkvRowStrides) {
  SKIP_WITHOUT_GPU();
  struct Heads {
    int hq, hkv;
  };
  for (int d : {64, 128}) {
    for (const Heads h : {Heads{32, 8}, Heads{6, 2}, Heads{16, 2}, Heads{4, 2}}) {
      const Problem p = make_problem({1, 31, 32, 33, 200, 5}, h.hq, h.hkv, d, 20 + d + h.hq);
      const int64_t row = int64_t{h.hq + 2 * h.hkv} * d;
      std::vector<uint16_t> fused(p.tokens * row);
      for (int64_t t = 0; t < p.tokens; ++t) {
        std::copy_n(&p.q[t * h.hq * d], h.hq * d, &fused[t * row]);
        std::copy_n(&p.k[t * h.hkv * d], h.hkv * d, &fused[t * row + h.hq * d]);
        std::copy_n(&p.v[t * h.hkv * d], h.hkv * d, &fused[t * row + (h.hq + h.hkv) * d]);
      }
      DeviceBuffer qkv(fused.size() * 2), out(p.q.size() * 2), offsets(p.offsets.size() * 4);
      cudaMemcpy(qkv.as<void>(), fused.data(), fused.size() * 2, cudaMemcpyHostToDevice);
      cudaMemcpy(offsets.as<void>(), p.offsets.data(), p.offsets.size() * 4, cudaMemcpyHostToDevice);
      const Reference ref = reference(p, all_rows(p));
      for (AttentionKernel k : kernels_for(d)) {
        cudaMemset(out.as<void>(), 0xFF, p.q.size() * 2);
        const __nv_bfloat16* base = qkv.as<__nv_bfloat16>();
        ember::cuda::attention_varlen_with(k, base, base + h.hq * d, base + (h.hq + h.hkv) * d,
                                           out.as<__nv_bfloat16>(), offsets.as<int32_t>(),
                                           static_cast<int>(p.lens.size()), p.tokens, p.max_len, h.hq, h.hkv, d,
                                           nullptr, row, row);
        std::vector<uint16_t> result(p.q.size());
        cuda_ok(cudaDeviceSynchronize(), "attention kernel");
        cudaMemcpy(result.data(), out.as<void>(), result.size() * 2, cudaMemcpyDeviceToHost);
        expect_matches(p, result, all_rows(p), ref, describe(p, k) + " fused qkv");
      }
    }
  }
}

TEST(CudaAttention, Sequence4096) {
  SKIP_WITHOUT_GPU();
  const Problem p = make_problem({4096}, 8, 2, 128, 5);
  check_kernels(p, sample_rows(p, 61));
}

TEST(CudaAttention, Sequence32768SampledRows) {
  SKIP_WITHOUT_GPU();
  const Problem p = make_problem({32768}, 8, 2, 128, 6);
  check_kernels(p, sample_rows(p, 1499));
}

// Changing the keys/values of later tokens of a sequence, or anything in other sequences, must
// leave earlier outputs bit-identical.
TEST(CudaAttention, CausalAndSequencesIsolated) {
  SKIP_WITHOUT_GPU();
  for (int d : {64, 128}) {
    const Problem p = make_problem({50, 200, 77}, 4, 2, d, 7);
    Problem changed = p;
    const int64_t cut = p.offsets[1] + 120;  // last unchanged token of sequence 1
    Rng rng{99};
    for (int64_t t = 0; t < p.tokens; ++t) {
      if (t >= p.offsets[1] && t <= cut) continue;
      for (int64_t i = t * p.hkv * d; i < (t + 1) * p.hkv * d; ++i) {
        changed.k[i] = ember::f32_to_bf16(rng.next());
        changed.v[i] = ember::f32_to_bf16(rng.next());
      }
    }
    const Reference ref = reference(changed, all_rows(changed));
    for (AttentionKernel k : kernels_for(d)) {
      const std::vector<uint16_t> a = run(p, k), b = run(changed, k);
      int64_t diff = 0;
      for (int64_t i = p.offsets[1] * p.hq * d; i < (cut + 1) * p.hq * d; ++i) diff += a[i] != b[i];
      EXPECT_EQ(diff, 0) << describe(p, k) << ": outputs moved when only future or foreign tokens changed";
      expect_matches(changed, b, all_rows(changed), ref, describe(changed, k));
    }
  }
}

// The CUDA backend records whole forward passes into CUDA graphs: a captured launch must replay
// to the same bits as a direct one.
TEST(CudaAttention, ReplaysFromCudaGraph) {
  SKIP_WITHOUT_GPU();
  const Problem p = make_problem({5, 130, 300}, 8, 2, 128, 8);
  for (AttentionKernel k : kernels_for(p.d)) {
    DeviceProblem dev(p);
    dev.launch(k, nullptr);
    const std::vector<uint16_t> direct = dev.download();
    dev.clear_output();
    cudaStream_t stream;
    cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
    dev.launch(k, stream);
    cuda_ok(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
    cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
    cuda_ok(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    const std::vector<uint16_t> replayed = dev.download();
    int64_t diff = 0;
    for (size_t i = 0; i < direct.size(); ++i) diff += replayed[i] != direct[i];
    EXPECT_EQ(diff, 0) << kernel_name(k) << ": graph replay differs from the direct launch";
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  }
}

TEST(CudaAttention, RejectsUnsupportedShapes) {
  const auto call = [](int hq, int hkv, int d, AttentionKernel k = AttentionKernel::Auto) {
    ember::cuda::attention_varlen_with(k, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 1, hq, hkv, d, nullptr);
  };
  EXPECT_THROW(call(4, 4, 48), ember::Error);
  EXPECT_THROW(call(4, 4, 512), ember::Error);
  EXPECT_THROW(call(6, 4, 64), ember::Error);
  EXPECT_THROW(call(4, 0, 64), ember::Error);
  EXPECT_THROW(call(4, 4, 32, AttentionKernel::Wgmma), ember::Error);
  const __nv_bfloat16* any = reinterpret_cast<const __nv_bfloat16*>(uintptr_t{256});
  const auto strided = [&](int64_t q_stride, int64_t kv_stride) {
    ember::cuda::attention_varlen_with(AttentionKernel::Mma, any, any, any, const_cast<__nv_bfloat16*>(any), nullptr,
                                       1, 1, 1, 4, 2, 64, nullptr, q_stride, kv_stride);
  };
  EXPECT_THROW(strided(4 * 64 - 8, 0), ember::Error);  // rows overlap
  EXPECT_THROW(strided(0, 2 * 64 + 4), ember::Error);  // not 16-byte steps
}

TEST(CudaAttention, EmptyBatchLaunchesNothing) {
  EXPECT_NO_THROW(ember::cuda::attention_varlen(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0, 0, 32, 8, 128,
                                                nullptr));
}

}  // namespace
