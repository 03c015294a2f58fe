// Parity of the CUDA attention kernels with a double-precision CPU reference over packed
// variable-length batches: odd lengths, tile boundaries, GQA ratios, every head_dim, long
// sequences (sampled rows), causality and isolation between sequences; each with bf16 and with
// fp16 tensors. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/cuda/attention.h"
#include "core/dtype.h"
#include "ember/error.h"

namespace {

using ember::DType;
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

// The 16-bit type's bits of x (rounded to nearest even), and the value of such bits.
uint16_t to_bits(DType dt, float x) { return dt == DType::F16 ? ember::f32_to_f16(x) : ember::f32_to_bf16(x); }
float from_bits(DType dt, uint16_t h) { return dt == DType::F16 ? ember::f16_to_f32(h) : ember::bf16_to_f32(h); }

struct Problem {
  std::vector<int> lens;
  int hq = 0, hkv = 0, d = 0;
  std::vector<int32_t> offsets;  // [S + 1]
  int64_t tokens = 0;
  int max_len = 0;
  DType dtype = DType::BF16;      // BF16 or F16
  std::vector<uint16_t> q, k, v;  // bits of dtype, [T, H, D]
  float value(uint16_t h) const { return from_bits(dtype, h); }
};

// attention_varlen_with on tensors of p.dtype.
void launch_attention(const Problem& p, AttentionKernel kernel, const void* q, const void* k, const void* v, void* out,
                      const int32_t* offsets, cudaStream_t stream, int64_t q_row_stride = 0,
                      int64_t kv_row_stride = 0) {
  const auto run = [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    ember::cuda::attention_varlen_with<T>(kernel, static_cast<const T*>(q), static_cast<const T*>(k),
                                          static_cast<const T*>(v), static_cast<T*>(out), offsets,
                                          static_cast<int>(p.lens.size()), p.tokens, p.max_len, p.hq, p.hkv, p.d,
                                          stream, q_row_stride, kv_row_stride);
  };
  if (p.dtype == DType::F16) {
    run(static_cast<__half*>(nullptr));
  } else {
    run(static_cast<__nv_bfloat16*>(nullptr));
  }
}

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
Problem make_problem(DType dtype, std::vector<int> lens, int hq, int hkv, int d, uint64_t seed = 1) {
  Problem p;
  p.dtype = dtype;
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
  for (auto& x : p.q) x = to_bits(dtype, 8.0f * rng.next());
  for (auto& x : p.k) x = to_bits(dtype, rng.next());
  for (auto& x : p.v) x = to_bits(dtype, rng.next());
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
    launch_attention(p, kernel, q.as<void>(), k.as<void>(), v.as<void>(), out.as<void>(), offsets.as<int32_t>(),
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

// out[t, h, :] in double precision from the same 16-bit inputs.
std::vector<double> reference_row(const Problem& p, int64_t t, int h) {
  const int64_t s = std::upper_bound(p.offsets.begin(), p.offsets.end(), t) - p.offsets.begin() - 1;
  const int64_t begin = p.offsets[s];
  const int d = p.d, g = h / (p.hq / p.hkv);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> qrow(d), scores(t - begin + 1), acc(d, 0.0);
  for (int e = 0; e < d; ++e) qrow[e] = p.value(p.q[(t * p.hq + h) * d + e]);
  double mx = -INFINITY;
  for (int64_t j = begin; j <= t; ++j) {
    const uint16_t* kr = &p.k[(j * p.hkv + g) * d];
    double dot = 0.0;
    for (int e = 0; e < d; ++e) dot += qrow[e] * p.value(kr[e]);
    scores[j - begin] = dot * scale;
    mx = std::max(mx, scores[j - begin]);
  }
  double sum = 0.0;
  for (int64_t j = begin; j <= t; ++j) {
    const double w = std::exp(scores[j - begin] - mx);
    sum += w;
    const uint16_t* vr = &p.v[(j * p.hkv + g) * d];
    for (int e = 0; e < d; ++e) acc[e] += w * p.value(vr[e]);
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

// Compares the given token rows (every head) against the reference. The tolerance covers the
// rounding (bf16's, the coarser) of the output and of the softmax weights fed to the P·V product.
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
        const double got = p.value(out[(t * p.hq + h) * p.d + e]);
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
  return std::string(kernel_name(k)) + " " + ember::dtype_name(p.dtype) + " d=" + std::to_string(p.d) + " hq=" + std::to_string(p.hq) +
         " hkv=" + std::to_string(p.hkv) + " T=" + std::to_string(p.tokens);
}

// Runs every kernel for this head_dim (plus `extra`) and checks `rows` of each output.
void check_kernels(const Problem& p, const std::vector<int64_t>& rows, std::vector<AttentionKernel> extra = {}) {
  const Reference ref = reference(p, rows);
  std::vector<AttentionKernel> ks = kernels_for(p.d);
  ks.insert(ks.end(), extra.begin(), extra.end());
  for (AttentionKernel k : ks) expect_matches(p, run(p, k), rows, ref, describe(p, k));
}

class CudaAttention : public ::testing::TestWithParam<DType> {};

INSTANTIATE_TEST_SUITE_P(HalfTypes, CudaAttention, ::testing::Values(DType::BF16, DType::F16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return info.param == DType::F16 ? "fp16" : "bf16";
                         });

TEST_P(CudaAttention, SingleTokenSequence) {
  SKIP_WITHOUT_GPU();
  for (int d : {16, 64, 128, 256}) {
    const Problem p = make_problem(GetParam(), {1}, 4, 1, d);
    check_kernels(p, all_rows(p));
  }
}

TEST_P(CudaAttention, PackedOddLengthsEveryHeadDimAndGroupRatio) {
  SKIP_WITHOUT_GPU();
  for (int d : {16, 32, 64, 128, 256}) {
    for (int ratio : {1, 2, 4, 8}) {
      const Problem p = make_problem(GetParam(), {1, 7, 33, 100, 129}, 8, 8 / ratio, d, d * 10 + ratio);
      check_kernels(p, all_rows(p));
    }
  }
}

TEST_P(CudaAttention, LengthsAroundTileBoundaries) {
  SKIP_WITHOUT_GPU();
  for (int d : {64, 128}) {
    const Problem p = make_problem(GetParam(), {63, 64, 65, 2, 127, 128, 129, 255, 256, 257, 300}, 4, 2, d, 3);
    check_kernels(p, all_rows(p));
  }
}

TEST_P(CudaAttention, ManyShortSequencesQwenShape) {
  SKIP_WITHOUT_GPU();
  const Problem p = make_problem(GetParam(), std::vector<int>(256, 32), 32, 8, 128, 4);
  std::vector<int64_t> rows;
  for (int64_t t = 0; t < p.tokens; t += 5) rows.push_back(t);
  check_kernels(p, rows, {AttentionKernel::Auto});
}

// q, k and v read in place from one fused [T, (hq + 2 hkv) * d] projection output through row
// strides, as the CUDA backend runs them; GQA groups that pack into the wgmma tile (2, 4, 8) and
// one that does not (3).
TEST_P(CudaAttention, FusedQkvRowStrides) {
  SKIP_WITHOUT_GPU();
  struct Heads {
    int hq, hkv;
  };
  for (int d : {64, 128}) {
    for (const Heads h : {Heads{32, 8}, Heads{6, 2}, Heads{16, 2}, Heads{4, 2}}) {
      const Problem p = make_problem(GetParam(), {1, 31, 32, 33, 200, 5}, h.hq, h.hkv, d, 20 + d + h.hq);
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
        const uint16_t* base = qkv.as<uint16_t>();
        launch_attention(p, k, base, base + h.hq * d, base + (h.hq + h.hkv) * d, out.as<void>(), offsets.as<int32_t>(),
                         nullptr, row, row);
        std::vector<uint16_t> result(p.q.size());
        cuda_ok(cudaDeviceSynchronize(), "attention kernel");
        cudaMemcpy(result.data(), out.as<void>(), result.size() * 2, cudaMemcpyDeviceToHost);
        expect_matches(p, result, all_rows(p), ref, describe(p, k) + " fused qkv");
      }
    }
  }
}

TEST_P(CudaAttention, Sequence4096) {
  SKIP_WITHOUT_GPU();
  const Problem p = make_problem(GetParam(), {4096}, 8, 2, 128, 5);
  check_kernels(p, sample_rows(p, 61));
}

TEST_P(CudaAttention, Sequence32768SampledRows) {
  SKIP_WITHOUT_GPU();
  const Problem p = make_problem(GetParam(), {32768}, 8, 2, 128, 6);
  check_kernels(p, sample_rows(p, 1499));
}

// Changing the keys/values of later tokens of a sequence, or anything in other sequences, must
// leave earlier outputs bit-identical.
TEST_P(CudaAttention, CausalAndSequencesIsolated) {
  SKIP_WITHOUT_GPU();
  for (int d : {64, 128}) {
    const Problem p = make_problem(GetParam(), {50, 200, 77}, 4, 2, d, 7);
    Problem changed = p;
    const int64_t cut = p.offsets[1] + 120;  // last unchanged token of sequence 1
    Rng rng{99};
    for (int64_t t = 0; t < p.tokens; ++t) {
      if (t >= p.offsets[1] && t <= cut) continue;
      for (int64_t i = t * p.hkv * d; i < (t + 1) * p.hkv * d; ++i) {
        changed.k[i] = to_bits(p.dtype, rng.next());
        changed.v[i] = to_bits(p.dtype, rng.next());
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
TEST_P(CudaAttention, ReplaysFromCudaGraph) {
  SKIP_WITHOUT_GPU();
  const Problem p = make_problem(GetParam(), {5, 130, 300}, 8, 2, 128, 8);
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

TEST(CudaAttentionArguments, RejectsUnsupportedShapes) {
  const auto call = [](int hq, int hkv, int d, AttentionKernel k = AttentionKernel::Auto) {
    ember::cuda::attention_varlen_with<__nv_bfloat16>(k, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 1, hq, hkv,
                                                      d, nullptr);
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

TEST(CudaAttentionArguments, EmptyBatchLaunchesNothing) {
  EXPECT_NO_THROW(ember::cuda::attention_varlen<__half>(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0, 0, 32, 8,
                                                        128, nullptr));
}

}  // namespace
