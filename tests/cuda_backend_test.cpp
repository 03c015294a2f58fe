// Parity of every CUDA backend op with the CPU backend, over odd shapes: single tokens, ragged
// sequences, sizes that are no multiple of any tile, GQA ratios 1/2/4, head_dim 16..128 and weights
// stored F32/F16/BF16. Each test runs twice: with bf16 against the CPU backend in fast precision
// (bf16 activations, fp32 math) on identical bf16 inputs, and with fp16 against the CPU backend in
// exact precision (fp32 throughout) on inputs rounded to fp16, within fp16 rounding steps.
// Skips when the machine has no CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm_peak.h"
#include "core/dtype.h"
#include "cuda_test_support.h"
#include "ember/error.h"
#include "tensor_support.h"
#include "test_support.h"

namespace ember {
namespace {

using ember_test::host_tensor;
using ember_test::random_values;
using ember_test::Values;

// The same values (rounded to the CUDA backend's 16-bit type once) in a CPU and a CUDA
// activation tensor.
struct Pair {
  Tensor cpu, gpu;
};

class CudaParity : public ::testing::TestWithParam<HalfType> {
 protected:
  void SetUp() override {
    REQUIRE_CUDA();
    f16_ = GetParam() == HalfType::Float16;
    cpu_ = make_cpu_backend(f16_ ? Precision::Exact : Precision::Fast, 0);
    gpu_ = make_cuda_backend(Precision::Fast, GetParam(), 0);
  }

  DType half() const { return f16_ ? DType::F16 : DType::BF16; }
  // Explicit bits of the 16-bit type: one rounding step is 2^-bits of the value or less.
  int mantissa_bits() const { return f16_ ? 10 : 7; }
  float round(float x) const {
    uint16_t h = 0;
    float r = 0;
    convert(&x, DType::F32, &h, half(), 1);
    convert(&h, half(), &r, DType::F32, 1);
    return r;
  }
  Values rounded(Values v) const {
    for (float& x : v) x = round(x);
    return v;
  }

  Pair activation(std::vector<int64_t> shape, const Values& v) {
    Pair p = empty(std::move(shape));
    const Values r = rounded(v);
    convert(r.data(), DType::F32, p.cpu.data, p.cpu.dtype, r.size());
    std::vector<uint16_t> bits(r.size());
    convert(r.data(), DType::F32, bits.data(), half(), r.size());
    EXPECT_EQ(cudaMemcpy(p.gpu.data, bits.data(), p.gpu.nbytes(), cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    return p;
  }

  Pair empty(std::vector<int64_t> shape) {
    return {cpu_->allocate(cpu_->activation_dtype(), shape), gpu_->allocate(gpu_->activation_dtype(), shape)};
  }

  // With fp16, the values are first rounded to fp16 so that both backends see the same weights.
  Pair weight(DType dt, std::vector<int64_t> shape, const Values& v, WeightKind kind) {
    const Tensor host = host_tensor(dt, std::move(shape), f16_ ? rounded(v) : v);
    return {cpu_->load_weight(host, kind), gpu_->load_weight(host, kind)};
  }

  void set_batch(const PackedBatch& b) {
    cpu_->set_batch(b);
    gpu_->set_batch(b);
  }

  // Equal up to one rounding step of the 16-bit type: both sides compute in fp32 but may sum in
  // another order (and with fp16, only the CUDA side rounds).
  void expect_match(const Pair& p, const std::string& what, double ulps = 1.0) {
    const Values c = cpu_->to_host_f32(p.cpu), g = gpu_->to_host_f32(p.gpu);
    ASSERT_EQ(c.size(), g.size()) << what;
    double max_abs = 0;
    for (float x : c) max_abs = std::max(max_abs, double{std::fabs(x)});
    int bad = 0;
    for (size_t i = 0; i < c.size(); ++i) {
      const double tol =
          ulps * 1.01 * std::ldexp(std::max(std::fabs(c[i]), std::fabs(g[i])), -mantissa_bits()) + 1e-5 * max_abs;
      if (!(std::fabs(double{c[i]} - g[i]) <= tol) && ++bad <= 5) {
        ADD_FAILURE() << what << " element " << i << ": cuda " << g[i] << ", cpu " << c[i];
      }
    }
    EXPECT_EQ(bad, 0) << what << " (" << c.size() << " elements)";
  }

  // The CUDA result is the CPU result rounded to the 16-bit type (a no-op for bf16, whose CPU
  // backend rounds too).
  void expect_equal(const Pair& p, const std::string& what) {
    const Values c = rounded(cpu_->to_host_f32(p.cpu)), g = gpu_->to_host_f32(p.gpu);
    ASSERT_EQ(c.size(), g.size()) << what;
    int bad = 0;
    for (size_t i = 0; i < c.size(); ++i) {
      if (c[i] != g[i] && ++bad <= 5) ADD_FAILURE() << what << " element " << i << ": cuda " << g[i] << ", cpu " << c[i];
    }
    EXPECT_EQ(bad, 0) << what;
  }

  bool f16_ = false;
  std::unique_ptr<Backend> cpu_, gpu_;
};

INSTANTIATE_TEST_SUITE_P(HalfTypes, CudaParity, ::testing::Values(HalfType::BFloat16, HalfType::Float16),
                         [](const ::testing::TestParamInfo<HalfType>& info) {
                           return info.param == HalfType::Float16 ? "fp16" : "bf16";
                         });

PackedBatch batch_of_lengths(const std::vector<int>& lengths, int vocab, uint32_t seed = 1) {
  std::vector<std::vector<int32_t>> seqs;
  std::mt19937 gen(seed);
  for (int len : lengths) {
    std::vector<int32_t> s(static_cast<size_t>(len));
    for (auto& id : s) id = static_cast<int32_t>(gen() % static_cast<uint32_t>(vocab));
    seqs.push_back(std::move(s));
  }
  std::vector<const std::vector<int32_t>*> ptrs;
  for (const auto& s : seqs) ptrs.push_back(&s);
  return PackedBatch::pack(ptrs);
}

const std::vector<std::vector<int>> kBatches = {{1}, {1, 7, 33}, {5, 128, 2}, {1000}};
const DType kWeightDtypes[] = {DType::F32, DType::F16, DType::BF16};

std::string name(DType dt) { return dtype_name(dt); }

TEST(CudaBackend, ExactPrecisionIsRefused) {
  for (const HalfType h : {HalfType::BFloat16, HalfType::Float16}) {
    try {
      make_cuda_backend(Precision::Exact, h, 0);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_STREQ(e.what(), "exact precision runs on the CPU; the CUDA backend computes in bfloat16 or float16 (fast)");
    }
  }
}

TEST_P(CudaParity, EmbeddingGatherIsExactForEveryTableDtype) {
  for (const int64_t hidden : {64, 100, 2560}) {
    for (const DType dt : kWeightDtypes) {
      const int vocab = 1000;
      const Pair table = weight(dt, {vocab, hidden}, random_values(size_t(vocab * hidden), 3), WeightKind::EmbeddingTable);
      for (const auto& lengths : kBatches) {
        const PackedBatch b = batch_of_lengths(lengths, vocab);
        set_batch(b);
        Pair x = empty({b.tokens(), hidden});
        cpu_->embed_tokens(table.cpu, x.cpu);
        gpu_->embed_tokens(table.gpu, x.gpu);
        expect_equal(x, "embed hidden=" + std::to_string(hidden) + " " + name(dt) + " T=" + std::to_string(b.tokens()));
      }
    }
  }
}

TEST_P(CudaParity, RmsNormAndAddRmsNorm) {
  for (const int64_t n : {16, 64, 100, 2560}) {
    for (const int64_t rows : {1, 7, 33, 517}) {
      for (const DType dt : kWeightDtypes) {
        const std::string what = "n=" + std::to_string(n) + " rows=" + std::to_string(rows) + " " + name(dt);
        const Pair w = weight(dt, {n}, random_values(size_t(n), 4, 0.5f, 1.5f), WeightKind::Vector);
        Pair x = activation({rows, n}, random_values(size_t(rows * n), 5, -3.0f, 3.0f));
        Pair out = empty({rows, n});
        cpu_->rms_norm(x.cpu, w.cpu, 1e-6f, out.cpu);
        gpu_->rms_norm(x.gpu, w.gpu, 1e-6f, out.gpu);
        expect_match(out, "rms_norm " + what);

        Pair residual = activation({rows, n}, random_values(size_t(rows * n), 6, -3.0f, 3.0f));
        cpu_->add_rms_norm(residual.cpu, x.cpu, w.cpu, 1e-6f, out.cpu);
        gpu_->add_rms_norm(residual.gpu, x.gpu, w.gpu, 1e-6f, out.gpu);
        expect_equal(residual, "add_rms_norm residual " + what);
        // fp16: the CUDA norm reads the rounded residual, the exact CPU one the unrounded sum.
        expect_match(out, "add_rms_norm output " + what, f16_ ? 2.0 : 1.0);
      }
    }
  }
}

TEST_P(CudaParity, LinearForEveryWeightDtype) {
  struct Shape {
    int64_t t, k, n;
  };
  for (const Shape s : {Shape{1, 64, 32}, Shape{7, 96, 160}, Shape{33, 36, 33}, Shape{41, 2560, 1024},
                        Shape{517, 128, 200}, Shape{1000, 64, 48}, Shape{3, 9728, 2560}}) {
    for (const DType dt : kWeightDtypes) {
      const std::string what = "linear [" + std::to_string(s.t) + "x" + std::to_string(s.k) + "] x [" +
                               std::to_string(s.n) + "x" + std::to_string(s.k) + "]^T " + name(dt);
      const Pair w = weight(dt, {s.n, s.k}, random_values(size_t(s.n * s.k), 7, -0.1f, 0.1f), WeightKind::Matrix);
      const Pair x = activation({s.t, s.k}, random_values(size_t(s.t * s.k), 8));
      Pair out = empty({s.t, s.n});
      cpu_->linear(x.cpu, w.cpu, out.cpu);
      gpu_->linear(x.gpu, w.gpu, out.gpu);
      expect_match(out, what);
    }
  }
}

// A stacked weight's output is its parts' outputs side by side, on both backends; parts of
// sizes that are no multiple of any tile, from every checkpoint dtype.
TEST_P(CudaParity, StackedLinearIsItsPartsSideBySide) {
  struct Shape {
    int64_t t, k;
    std::vector<int64_t> parts;
  };
  for (const Shape& s : {Shape{1, 64, {32, 16, 16}}, Shape{7, 96, {160, 40, 40}}, Shape{33, 2560, {4096, 1024, 1024}},
                         Shape{517, 128, {200, 200}}, Shape{3, 2560, {9728, 9728}}}) {
    for (const DType dt : kWeightDtypes) {
      std::string what = "stacked linear t=" + std::to_string(s.t) + " k=" + std::to_string(s.k) + " " + name(dt);
      std::vector<Tensor> hosts;
      int64_t n = 0;
      for (size_t i = 0; i < s.parts.size(); ++i) {
        const int64_t rows = s.parts[i];
        const Values v = random_values(size_t(rows * s.k), 30 + uint32_t(i), -0.1f, 0.1f);
        hosts.push_back(host_tensor(dt, {rows, s.k}, f16_ ? rounded(v) : v));
        n += rows;
      }
      const Pair w{cpu_->load_stacked_weight(hosts), gpu_->load_stacked_weight(hosts)};
      ASSERT_EQ(w.gpu.shape, (std::vector<int64_t>{n, s.k})) << what;
      const Pair x = activation({s.t, s.k}, random_values(size_t(s.t * s.k), 8));
      Pair out = empty({s.t, n});
      cpu_->linear(x.cpu, w.cpu, out.cpu);
      gpu_->linear(x.gpu, w.gpu, out.gpu);
      expect_match(out, what);

      // Each part's own linear() gives its column block (up to one rounding step: the GEMM algorithm,
      // split-K included, may differ between the shapes).
      const Values stacked = gpu_->to_host_f32(out.gpu);
      int64_t col = 0;
      for (size_t i = 0; i < hosts.size(); ++i) {
        const int64_t rows = hosts[i].dim(0);
        const Tensor part = gpu_->load_weight(hosts[i], WeightKind::Matrix);
        Tensor alone = gpu_->allocate(half(), {s.t, rows});
        gpu_->linear(x.gpu, part, alone);
        const Values a = gpu_->to_host_f32(alone);
        int bad = 0;
        for (int64_t r = 0; r < s.t; ++r)
          for (int64_t c = 0; c < rows; ++c) {
            const float want = a[r * rows + c], got = stacked[r * n + col + c];
            bad += !(std::fabs(got - want) <=
                     1.01 * std::ldexp(std::max(std::fabs(got), std::fabs(want)), -mantissa_bits()) + 1e-6);
          }
        EXPECT_EQ(bad, 0) << what << ": part " << i << " differs from its own linear()";
        col += rows;
      }
    }
  }
}

TEST_P(CudaParity, QkNormRopeOverHeadDimsAndGqaRatios) {
  struct Heads {
    int hq, hkv;
  };
  for (const int d : {16, 32, 64, 128}) {
    for (const Heads h : {Heads{2, 2}, Heads{4, 2}, Heads{8, 2}}) {
      for (const auto& lengths : std::vector<std::vector<int>>{{1}, {1, 7, 33}, {3000}}) {
        for (const float theta : {1e6f, 1e4f}) {
          const std::string what = "d=" + std::to_string(d) + " hq=" + std::to_string(h.hq) +
                                   " hkv=" + std::to_string(h.hkv) + " longest=" + std::to_string(lengths.back()) +
                                   " theta=" + std::to_string(theta);
          const PackedBatch b = batch_of_lengths(lengths, 100);
          set_batch(b);
          const int64_t T = b.tokens();
          const Pair qn = weight(DType::BF16, {d}, random_values(size_t(d), 9, 0.5f, 1.5f), WeightKind::Vector);
          const Pair kn = weight(DType::F32, {d}, random_values(size_t(d), 10, 0.5f, 1.5f), WeightKind::Vector);
          const int64_t heads = h.hq + 2 * h.hkv;
          const Values before = random_values(size_t(T * heads * d), 11, -2.0f, 2.0f);
          Pair qkv = activation({T, heads, d}, before);
          cpu_->qk_norm_rope(qkv.cpu, h.hq, qn.cpu, kn.cpu, 1e-6f, theta);
          gpu_->qk_norm_rope(qkv.gpu, h.hq, qn.gpu, kn.gpu, 1e-6f, theta);
          // Rotation mixes two rounded-differently products: allow two rounding steps.
          expect_match(qkv, "qk_norm_rope " + what, 2.0);
          // v heads stay as they were.
          const Values after = gpu_->to_host_f32(qkv.gpu);
          int moved = 0;
          for (int64_t t = 0; t < T; ++t)
            for (int64_t i = (h.hq + h.hkv) * d; i < heads * d; ++i)
              moved += after[t * heads * d + i] != round(before[t * heads * d + i]);
          EXPECT_EQ(moved, 0) << "qk_norm_rope changed v heads, " << what;
        }
      }
    }
  }
}

TEST_P(CudaParity, Swiglu) {
  for (const int64_t rows : {1, 3, 517}) {
    for (const int64_t n : {int64_t{1}, int64_t{7}, int64_t{33 * 128}, int64_t{9728}, int64_t{3001}}) {
      Values v = random_values(size_t(rows * 2 * n), 13, -8.0f, 8.0f);
      const Pair gate_up = activation({rows, 2 * n}, v);
      Pair out = empty({rows, n});
      cpu_->swiglu(gate_up.cpu, out.cpu);
      gpu_->swiglu(gate_up.gpu, out.gpu);
      expect_match(out, "swiglu rows=" + std::to_string(rows) + " n=" + std::to_string(n));
    }
  }
}

// Attention from the fused q/k/v projection output on both backends: odd lengths, GQA ratios
// 1/2/4/8, the mma (head_dim 32) and wgmma (64, 128) kernels, packed short sequences.
TEST_P(CudaParity, AttentionFromFusedQkv) {
  struct Heads {
    int hq, hkv;
  };
  for (const int d : {32, 64, 128}) {
    for (const Heads h : {Heads{4, 4}, Heads{4, 2}, Heads{8, 2}, Heads{6, 2}, Heads{16, 2}}) {
      for (const auto& lengths : std::vector<std::vector<int>>{{1}, {1, 7, 33, 100, 129}, {32, 32, 32, 31}, {300}}) {
        const PackedBatch b = batch_of_lengths(lengths, 100);
        set_batch(b);
        const int64_t T = b.tokens(), heads = h.hq + 2 * h.hkv;
        const Pair qkv = activation({T, heads, d}, random_values(size_t(T * heads * d), 19, -2.0f, 2.0f));
        Pair out = empty({T, h.hq, d});
        cpu_->attention(qkv.cpu, out.cpu);
        gpu_->attention(qkv.gpu, out.gpu);
        const Values c = cpu_->to_host_f32(out.cpu), g = gpu_->to_host_f32(out.gpu);
        int bad = 0;
        for (size_t i = 0; i < c.size(); ++i) {
          // Both round P for P·V at different points (fp16: only the CUDA side), and the output.
          if (!(std::fabs(double{c[i]} - g[i]) <= 1e-2 + 2e-2 * std::fabs(c[i])) && ++bad <= 5)
            ADD_FAILURE() << "element " << i << ": cuda " << g[i] << ", cpu " << c[i];
        }
        EXPECT_EQ(bad, 0) << "attention d=" << d << " hq=" << h.hq << " hkv=" << h.hkv << " T=" << T;
      }
    }
  }
}

TEST_P(CudaParity, GatherLastTokens) {
  for (const int64_t n : {64, 100}) {
    for (const auto& lengths : kBatches) {
      const PackedBatch b = batch_of_lengths(lengths, 100);
      set_batch(b);
      const Pair x = activation({b.tokens(), n}, random_values(size_t(b.tokens() * n), 15));
      Pair out = empty({b.sequences(), n});
      cpu_->gather_last_tokens(x.cpu, out.cpu);
      gpu_->gather_last_tokens(x.gpu, out.gpu);
      expect_equal(out, "gather_last_tokens n=" + std::to_string(n) + " S=" + std::to_string(b.sequences()));
    }
  }
}

TEST_P(CudaParity, BatchBuffersGrowAndKeepWorking) {
  const int vocab = 500, hidden = 64;
  const Pair table = weight(DType::BF16, {vocab, hidden}, random_values(size_t(vocab * hidden), 16), WeightKind::EmbeddingTable);
  for (const auto& lengths : std::vector<std::vector<int>>{{3}, {2000, 3000}, {5, 1}, {9000}, {2}}) {
    const PackedBatch b = batch_of_lengths(lengths, vocab, static_cast<uint32_t>(lengths.size() + lengths[0]));
    set_batch(b);
    Pair x = empty({b.tokens(), hidden});
    cpu_->embed_tokens(table.cpu, x.cpu);
    gpu_->embed_tokens(table.gpu, x.gpu);
    expect_equal(x, "embed after growth, T=" + std::to_string(b.tokens()));
  }
}

TEST_P(CudaParity, TokenIdsOutsideTheVocabularyAreRejected) {
  const Pair table = weight(DType::BF16, {10, 16}, random_values(160, 17), WeightKind::EmbeddingTable);
  EXPECT_THROW(gpu_->set_batch(batch_of_lengths({4}, 1000, 3)), Error);
}

TEST_P(CudaParity, DeviceMemoryCountsWeightsAndBuffers) {
  const int64_t before = gpu_->device_memory_bytes();
  EXPECT_GE(before, int64_t{32} << 20) << "the cuBLASLt workspace is device memory";
  {
    const Tensor t = gpu_->allocate(half(), {1024, 1024});
    EXPECT_EQ(gpu_->device_memory_bytes(), before + (int64_t{2} << 20));
  }
  EXPECT_EQ(gpu_->device_memory_bytes(), before);
  const Pair w = weight(DType::F32, {300, 200}, random_values(60000, 18), WeightKind::Matrix);
  EXPECT_GT(gpu_->device_memory_bytes(), before + 300 * 200 * 2);
}

// fp16 tops out at 65504: a checkpoint value that would become inf is refused while loading, with
// the element named, whatever the checkpoint's dtype; bf16 (fp32's range) takes it.
TEST(CudaBackend, Float16RefusesWeightsBeyondItsRange) {
  REQUIRE_CUDA();
  const auto fp16 = make_cuda_backend(Precision::Fast, HalfType::Float16, 0);
  const auto bf16 = make_cuda_backend(Precision::Fast, HalfType::BFloat16, 0);
  for (const DType dt : {DType::F32, DType::BF16}) {
    Values v = random_values(3 * 1000, 40);
    v[1234] = -98304.0f;  // exact in bf16 too
    v[2000] = 1e9f;
    const Tensor host = host_tensor(dt, {3, 1000}, v);
    try {
      fp16->load_weight(host, WeightKind::Matrix);
      ADD_FAILURE() << "expected an error for " << dtype_name(dt);
    } catch (const Error& e) {
      const std::string want = "CUDA backend: weight " + std::string(dtype_name(dt)) +
                               "[3, 1000]: element 1234 is -98304, beyond float16's range (largest 65504); "
                               "run this model in bfloat16";
      EXPECT_EQ(e.what(), want);
    }
    try {
      fp16->load_stacked_weight({host_tensor(dt, {2, 1000}, random_values(2000, 41)), host});
      ADD_FAILURE() << "expected an error for a stacked " << dtype_name(dt);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("part 2 of 2 of a stacked weight"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("element 1234 is -98304"), std::string::npos) << e.what();
    }
    EXPECT_NO_THROW(bf16->load_weight(host, WeightKind::Matrix));
    // Norm vectors stay fp32.
    EXPECT_NO_THROW(fp16->load_weight(host_tensor(dt, {3000}, v), WeightKind::Vector));
  }
  // Element numbers count from the tensor's start across the 1 MiB copy pieces and 64 MiB staging
  // buffers; the earlier of two bad values is the one named.
  for (const auto& [dt, rows] : {std::pair{DType::F32, int64_t{5000}}, std::pair{DType::BF16, int64_t{9000}}}) {
    Values big(static_cast<size_t>(rows * 4000), 0.25f);
    big[big.size() - 3] = 1e6f;
    big[big.size() - 999'999] = -131072.0f;
    const std::string message = ember_test::error_of(
        [&] { fp16->load_weight(host_tensor(dt, {rows, 4000}, big), WeightKind::Matrix); });
    EXPECT_NE(message.find("element " + std::to_string(big.size() - 999'999) + " is -131072,"), std::string::npos)
        << message;
  }
  // 65519 still rounds to 65504; 65520 would round to inf. fp16 checkpoints cannot exceed it.
  Values edge(64, 0.5f);
  edge[7] = 65519.0f;
  EXPECT_NO_THROW(fp16->load_weight(host_tensor(DType::F32, {8, 8}, edge), WeightKind::Matrix));
  EXPECT_NO_THROW(fp16->load_weight(host_tensor(DType::F16, {8, 8}, edge), WeightKind::Matrix));
  edge[9] = 65520.0f;
  EXPECT_THROW(fp16->load_weight(host_tensor(DType::F32, {8, 8}, edge), WeightKind::Matrix), Error);
  // The backend stays usable: a weight loaded after refused ones arrives intact.
  const Tensor ok = fp16->load_weight(host_tensor(DType::BF16, {8, 8}, Values(64, 0.5f)), WeightKind::Matrix);
  EXPECT_EQ(fp16->to_host_f32(ok), Values(64, 0.5f));
}

TEST(CudaBackend, CublasPeakIsPlausible) {
  REQUIRE_CUDA();
  const double tflops = measure_cublas_peak_tflops(0);
  std::printf("cuBLASLt bf16 peak over the 4B GEMM shapes: %.1f TFLOP/s\n", tflops);
  EXPECT_GT(tflops, 50.0);
  EXPECT_LT(tflops, 2000.0);
}

}  // namespace
}  // namespace ember
