// Parity of every CPU backend op with plain double-accumulating references written here, over odd
// shapes, both precisions, and the attention properties (causality, sequence isolation).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/attention.h"
#include "core/dtype.h"
#include "ember/error.h"
#include "tensor_support.h"

namespace ember {
namespace {

using ember_test::host_tensor;
using ember_test::random_values;
using ember_test::Values;

Values values_of(const Tensor& t) {
  Values v(static_cast<size_t>(t.numel()));
  convert(t.data, t.dtype, v.data(), DType::F32, v.size());
  return v;
}

// An activation tensor of the backend filled with `v` (rounded to bf16 in fast precision).
Tensor activation(Backend& b, std::vector<int64_t> shape, const Values& v) {
  Tensor t = b.allocate(b.activation_dtype(), std::move(shape));
  convert(v.data(), DType::F32, t.data, t.dtype, v.size());
  return t;
}

// Bound on |got - want| for an op whose exact result is `want`: fp32 rounding noise in exact
// precision, one bf16 rounding of the output (plus bf16 inputs upstream) in fast precision.
void expect_close(const Values& got, const std::vector<double>& want, Precision p, double abs_tol_exact = 1e-5,
                  double abs_tol_fast = 2e-3, const std::string& what = "") {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double rel = p == Precision::Exact ? 1e-5 : 8e-3;
  const double abs = p == Precision::Exact ? abs_tol_exact : abs_tol_fast;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = abs + rel * std::fabs(want[i]);
    if (!(std::fabs(got[i] - want[i]) <= tol) && ++bad <= 5) {
      ADD_FAILURE() << what << " element " << i << ": got " << got[i] << ", want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

PackedBatch batch_of_lengths(const std::vector<int>& lengths, uint32_t seed = 1) {
  std::vector<std::vector<int32_t>> seqs;
  std::mt19937 gen(seed);
  for (int len : lengths) {
    std::vector<int32_t> s(static_cast<size_t>(len));
    for (auto& id : s) id = static_cast<int32_t>(gen() % 50);
    seqs.push_back(std::move(s));
  }
  std::vector<const std::vector<int32_t>*> ptrs;
  for (const auto& s : seqs) ptrs.push_back(&s);
  return PackedBatch::pack(ptrs);
}

// ---- references -------------------------------------------------------------------------

std::vector<double> ref_rms_norm(const Values& x, const Values& w, double eps) {
  const size_t n = w.size();
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / n; ++r) {
    double ss = 0;
    for (size_t i = 0; i < n; ++i) ss += double(x[r * n + i]) * x[r * n + i];
    const double inv = 1.0 / std::sqrt(ss / n + eps);
    for (size_t i = 0; i < n; ++i) y[r * n + i] = x[r * n + i] * inv * w[i];
  }
  return y;
}

// HF's rotary angles: inv_freq and position * inv_freq rounded to fp32, cos/sin of that.
double rope_angle(int pos, int i, int d, double theta) {
  const float exponent = static_cast<float>(2 * i) / static_cast<float>(d);
  const float inv_freq = 1.0f / static_cast<float>(std::pow(theta, double(exponent)));
  return static_cast<float>(pos) * inv_freq;
}

// x: [T, heads, d] -> per-head rmsnorm * w, then rotate-half RoPE
std::vector<double> ref_norm_rope(const Values& x, const Values& w, const std::vector<int32_t>& pos, int heads,
                                  double eps, double theta) {
  const int d = static_cast<int>(w.size()), half = d / 2;
  const std::vector<double> normed = ref_rms_norm(x, w, eps);
  std::vector<double> y(x.size());
  for (size_t t = 0; t < pos.size(); ++t) {
    for (int h = 0; h < heads; ++h) {
      const double* v = &normed[(t * heads + h) * d];
      double* o = &y[(t * heads + h) * d];
      for (int i = 0; i < half; ++i) {
        const double a = rope_angle(pos[t], i, d, theta), c = std::cos(a), s = std::sin(a);
        o[i] = v[i] * c - v[i + half] * s;
        o[i + half] = v[i + half] * c + v[i] * s;
      }
    }
  }
  return y;
}

// q: [T, hq, d], k, v: [T, hkv, d] -> [T, hq, d]; causal inside each sequence
std::vector<double> ref_attention(const Values& q, const Values& k, const Values& v,
                                  const std::vector<int32_t>& offsets, int hq, int hkv, int d) {
  std::vector<double> out(q.size());
  const double scale = 1.0 / std::sqrt(double(d));
  for (size_t s = 0; s + 1 < offsets.size(); ++s) {
    for (int t = offsets[s]; t < offsets[s + 1]; ++t) {
      for (int h = 0; h < hq; ++h) {
        const int g = h / (hq / hkv);
        std::vector<double> score;
        double mx = -1e300;
        for (int j = offsets[s]; j <= t; ++j) {
          double dot = 0;
          for (int e = 0; e < d; ++e) dot += double(q[(size_t(t) * hq + h) * d + e]) * k[(size_t(j) * hkv + g) * d + e];
          score.push_back(dot * scale);
          mx = std::max(mx, dot * scale);
        }
        double sum = 0;
        for (double& x : score) sum += (x = std::exp(x - mx));
        for (int e = 0; e < d; ++e) {
          double acc = 0;
          for (int j = offsets[s]; j <= t; ++j) acc += score[j - offsets[s]] * v[(size_t(j) * hkv + g) * d + e];
          out[(size_t(t) * hq + h) * d + e] = acc / sum;
        }
      }
    }
  }
  return out;
}

std::unique_ptr<Backend> backend(Precision p) { return make_cpu_backend(p, 2); }

class BothPrecisions : public ::testing::TestWithParam<Precision> {};
INSTANTIATE_TEST_SUITE_P(Cpu, BothPrecisions, ::testing::Values(Precision::Exact, Precision::Fast),
                         [](const auto& info) { return info.param == Precision::Exact ? "Exact" : "Fast"; });

// ---- PackedBatch ------------------------------------------------------------------------

TEST(PackedBatch, ConcatenatesSequencesWithPositionsAndOffsets) {
  const std::vector<int32_t> a{5}, b{1, 2, 3}, c{9, 8};
  const PackedBatch p = PackedBatch::pack({&a, &b, &c});
  EXPECT_EQ(p.token_ids, (std::vector<int32_t>{5, 1, 2, 3, 9, 8}));
  EXPECT_EQ(p.positions, (std::vector<int32_t>{0, 0, 1, 2, 0, 1}));
  EXPECT_EQ(p.seq_offsets, (std::vector<int32_t>{0, 1, 4, 6}));
  EXPECT_EQ(p.tokens(), 6);
  EXPECT_EQ(p.sequences(), 3);
}

TEST(PackedBatch, RejectsAnEmptySequence) {
  const std::vector<int32_t> a{5}, empty;
  EXPECT_THROW(PackedBatch::pack({&a, &empty}), Error);
}

// ---- weights and embeddings ---------------------------------------------------------------

TEST_P(BothPrecisions, LinearMatchesReferenceForEveryWeightDtype) {
  const Precision p = GetParam();
  auto b = backend(p);
  struct Shape {
    int64_t t, k, n;
  };
  for (const Shape s : {Shape{1, 37, 19}, Shape{41, 64, 96}, Shape{130, 256, 33}}) {
    for (const DType wdt : {DType::F32, DType::F16, DType::BF16}) {
      const Values wv = random_values(size_t(s.n * s.k), 7), xv = random_values(size_t(s.t * s.k), 8);
      const Tensor host = host_tensor(wdt, {s.n, s.k}, wv);
      const Tensor w = b->load_weight(host, WeightKind::Matrix);
      const Tensor x = activation(*b, {s.t, s.k}, xv);
      Tensor out = b->allocate(b->activation_dtype(), {s.t, s.n});
      b->linear(x, w, out);
      // The reference multiplies exactly the values the backend holds: inputs and weights as
      // rounded into the backend's types. (A converted weight is packed in oneDNN's layout, so
      // its rounded values are recomputed here rather than read back.)
      const Values xs = values_of(x), ws = values_of(host_tensor(b->activation_dtype(), {s.n, s.k}, values_of(host)));
      std::vector<double> want(size_t(s.t * s.n));
      for (int64_t i = 0; i < s.t; ++i)
        for (int64_t j = 0; j < s.n; ++j) {
          double acc = 0;
          for (int64_t e = 0; e < s.k; ++e) acc += double(xs[i * s.k + e]) * ws[j * s.k + e];
          want[i * s.n + j] = acc;
        }
      expect_close(b->to_host_f32(out), want, p, 1e-4, 2e-2,
                   std::string("linear ") + dtype_name(wdt) + " t=" + std::to_string(s.t));
    }
  }
}

// A stacked weight's output is its parts' outputs side by side, whether the parts lie apart or
// back to back in memory (then, already in the compute type, they are used as they are).
TEST_P(BothPrecisions, StackedLinearIsItsPartsSideBySide) {
  const Precision p = GetParam();
  auto b = backend(p);
  const int64_t t = 13, k = 40;
  const std::vector<int64_t> rows = {24, 8, 8};
  for (const DType wdt : {DType::F32, DType::F16, DType::BF16}) {
    for (const bool back_to_back : {false, true}) {
      std::vector<Tensor> hosts;
      const Tensor whole = host_tensor(wdt, {40, k}, random_values(size_t(40 * k), 50));
      int64_t row0 = 0;
      for (size_t i = 0; i < rows.size(); ++i) {
        if (back_to_back) {
          Tensor view = whole;
          view.shape = {rows[i], k};
          view.data = static_cast<char*>(whole.data) + row0 * k * dtype_size(wdt);
          hosts.push_back(view);
        } else {
          hosts.push_back(host_tensor(wdt, {rows[i], k}, random_values(size_t(rows[i] * k), 51 + uint32_t(i))));
        }
        row0 += rows[i];
      }
      const Tensor w = b->load_stacked_weight(hosts);
      const bool in_place = wdt == (p == Precision::Fast ? DType::BF16 : DType::F32);
      EXPECT_EQ(w.data == whole.data, back_to_back && in_place) << dtype_name(wdt);
      ASSERT_EQ(w.shape, (std::vector<int64_t>{40, k}));
      const Tensor x = activation(*b, {t, k}, random_values(size_t(t * k), 8));
      Tensor out = b->allocate(b->activation_dtype(), {t, 40});
      b->linear(x, w, out);
      const Values got = values_of(out);
      int64_t col = 0;
      for (const Tensor& host : hosts) {
        const Tensor part = b->load_weight(host, WeightKind::Matrix);
        Tensor alone = b->allocate(b->activation_dtype(), {t, host.dim(0)});
        b->linear(x, part, alone);
        const Values a = values_of(alone);
        // One GEMM over all parts may block the sums differently from the part's own.
        Values block;
        std::vector<double> want;
        for (int64_t r = 0; r < t; ++r)
          for (int64_t c = 0; c < host.dim(0); ++c) {
            block.push_back(got[r * 40 + col + c]);
            want.push_back(a[r * host.dim(0) + c]);
          }
        expect_close(block, want, p, 1e-5, 2e-3, std::string("stacked part ") + dtype_name(wdt));
        col += host.dim(0);
      }
    }
  }
}

TEST(CpuBackend, MatrixWeightsAreAliasedWhenAlreadyInTheComputeType) {
  const Tensor f32 = host_tensor(DType::F32, {4, 8}, random_values(32, 1));
  const Tensor bf = host_tensor(DType::BF16, {4, 8}, random_values(32, 1));
  EXPECT_EQ(backend(Precision::Exact)->load_weight(f32, WeightKind::Matrix).data, f32.data);
  EXPECT_EQ(backend(Precision::Fast)->load_weight(bf, WeightKind::Matrix).data, bf.data);
  const Tensor converted = backend(Precision::Exact)->load_weight(bf, WeightKind::Matrix);
  EXPECT_EQ(converted.dtype, DType::F32);
  EXPECT_NE(converted.data, bf.data);
  const Tensor norm = backend(Precision::Fast)->load_weight(bf, WeightKind::Vector);
  EXPECT_EQ(norm.dtype, DType::F32);
}

TEST_P(BothPrecisions, EmbedTokensFromEveryTableDtype) {
  const Precision p = GetParam();
  auto b = backend(p);
  const PackedBatch batch = batch_of_lengths({1, 7, 33});
  const int64_t vocab = 50, hidden = 24;
  for (const DType tdt : {DType::F32, DType::F16, DType::BF16}) {
    const Tensor host = host_tensor(tdt, {vocab, hidden}, random_values(size_t(vocab * hidden), 3));
    const Tensor table = b->load_weight(host, WeightKind::EmbeddingTable);
    EXPECT_EQ(table.data, host.data);
    const Values stored = values_of(host);
    Tensor x = b->allocate(b->activation_dtype(), {batch.tokens(), hidden});
    b->set_batch(batch);
    b->embed_tokens(table, x);
    const Values got = b->to_host_f32(x);
    for (int64_t t = 0; t < batch.tokens(); ++t)
      for (int64_t e = 0; e < hidden; ++e) {
        float want = stored[batch.token_ids[t] * hidden + e];
        if (p == Precision::Fast) want = bf16_to_f32(f32_to_bf16(want));
        ASSERT_EQ(got[t * hidden + e], want) << dtype_name(tdt) << " token " << t;
      }
  }
}

TEST(CpuBackend, EmbedRejectsTokenIdsOutsideTheVocabulary) {
  auto b = backend(Precision::Exact);
  const std::vector<int32_t> ids{1, 60};
  b->set_batch(PackedBatch::pack({&ids}));
  const Tensor table =
      b->load_weight(host_tensor(DType::F32, {50, 8}, random_values(400, 1)), WeightKind::EmbeddingTable);
  Tensor x = b->allocate(DType::F32, {2, 8});
  EXPECT_THROW(b->embed_tokens(table, x), Error);
}

TEST(CpuBackend, LinearRejectsAWeightNotLoadedForThisPrecision) {
  auto b = backend(Precision::Exact);
  const Tensor w = host_tensor(DType::BF16, {4, 8}, random_values(32, 1));
  const Tensor x = activation(*b, {2, 8}, random_values(16, 2));
  Tensor out = b->allocate(DType::F32, {2, 4});
  EXPECT_THROW(b->linear(x, w, out), Error);
}

// ---- row ops ------------------------------------------------------------------------------

TEST_P(BothPrecisions, RmsNormAndAddRmsNorm) {
  const Precision p = GetParam();
  auto b = backend(p);
  for (const int64_t n : {int64_t{37}, int64_t{1024}}) {
    for (const int64_t rows : {int64_t{1}, int64_t{45}}) {
      const Tensor w =
          b->load_weight(host_tensor(DType::BF16, {n}, random_values(size_t(n), 4, 0.5f, 1.5f)), WeightKind::Vector);
      const Tensor x = activation(*b, {rows, n}, random_values(size_t(rows * n), 5, -3.0f, 3.0f));
      Tensor out = b->allocate(b->activation_dtype(), {rows, n});
      b->rms_norm(x, w, 1e-6f, out);
      expect_close(b->to_host_f32(out), ref_rms_norm(values_of(x), values_of(w), 1e-6), p, 1e-5, 2e-3, "rms_norm");

      Tensor residual = activation(*b, {rows, n}, random_values(size_t(rows * n), 6));
      const Values res_before = values_of(residual), xs = values_of(x);
      b->add_rms_norm(residual, x, w, 1e-6f, out);
      std::vector<double> sum(res_before.size());
      for (size_t i = 0; i < sum.size(); ++i) sum[i] = double(res_before[i]) + xs[i];
      expect_close(values_of(residual), sum, p, 1e-6, 1e-2, "add_rms_norm residual");
      expect_close(b->to_host_f32(out), ref_rms_norm(values_of(residual), values_of(w), 1e-6), p, 1e-5, 2e-3,
                   "add_rms_norm output");
    }
  }
}

TEST_P(BothPrecisions, QkNormRopeAtSmallAndLargePositions) {
  const Precision p = GetParam();
  auto b = backend(p);
  for (const int d : {16, 32, 128}) {
    PackedBatch batch;
    batch.positions = {0, 1, 7, 100, 4097, 32000, 0};
    batch.token_ids.assign(batch.positions.size(), 0);
    batch.seq_offsets = {0, 6, 7};
    const int64_t T = batch.tokens(), hq = 4, hkv = 2;
    b->set_batch(batch);
    const Tensor qn =
        b->load_weight(host_tensor(DType::F32, {d}, random_values(size_t(d), 9, 0.5f, 1.5f)), WeightKind::Vector);
    const Tensor kn =
        b->load_weight(host_tensor(DType::F32, {d}, random_values(size_t(d), 10, 0.5f, 1.5f)), WeightKind::Vector);
    const int64_t heads = hq + 2 * hkv;
    Tensor qkv = activation(*b, {T, heads, d}, random_values(size_t(T * heads * d), 11, -2.0f, 2.0f));
    const Values before = values_of(qkv);
    b->qk_norm_rope(qkv, hq, qn, kn, 1e-6f, 1e6f);
    const Values after = values_of(qkv);
    // Columns [h0, h0 + n) heads of every token row of a [T, heads, d] array.
    auto heads_of = [&](const Values& v, int64_t h0, int64_t n) {
      Values out;
      for (int64_t t = 0; t < T; ++t)
        out.insert(out.end(), v.begin() + (t * heads + h0) * d, v.begin() + (t * heads + h0 + n) * d);
      return out;
    };
    expect_close(heads_of(after, 0, hq), ref_norm_rope(heads_of(before, 0, hq), values_of(qn), batch.positions, hq,
                                                      1e-6, 1e6),
                 p, 2e-5, 2e-2, "q d=" + std::to_string(d));
    expect_close(heads_of(after, hq, hkv),
                 ref_norm_rope(heads_of(before, hq, hkv), values_of(kn), batch.positions, hkv, 1e-6, 1e6), p, 2e-5,
                 2e-2, "k d=" + std::to_string(d));
    EXPECT_EQ(heads_of(after, hq + hkv, hkv), heads_of(before, hq + hkv, hkv)) << "v changed, d=" << d;
  }
}

TEST_P(BothPrecisions, SwiGlu) {
  const Precision p = GetParam();
  auto b = backend(p);
  const int64_t n = 3 * 7001;
  Values gv = random_values(size_t(n), 13, -20.0f, 20.0f);
  for (int64_t i = 0; i < n; i += 97) gv[i] = (i % 2 ? 1.0f : -1.0f) * float(80 + i % 50);  // saturated exp
  const Values uv = random_values(size_t(n), 14, -2.0f, 2.0f);
  // gate_up rows: a row's 7001 gate values, then its 7001 up values.
  Values guv;
  for (int64_t r = 0; r < 3; ++r) {
    guv.insert(guv.end(), gv.begin() + r * 7001, gv.begin() + (r + 1) * 7001);
    guv.insert(guv.end(), uv.begin() + r * 7001, uv.begin() + (r + 1) * 7001);
  }
  const Tensor gate_up = activation(*b, {3, 2 * 7001}, guv);
  Tensor out = b->allocate(b->activation_dtype(), {3, 7001});
  b->swiglu(gate_up, out);
  const Values stored = values_of(gate_up);
  std::vector<double> want(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double g = stored[i / 7001 * 2 * 7001 + i % 7001], u = stored[i / 7001 * 2 * 7001 + 7001 + i % 7001];
    want[i] = g / (1.0 + std::exp(-g)) * u;
  }
  expect_close(b->to_host_f32(out), want, p, 1e-5, 1e-3, "swiglu");
}

TEST_P(BothPrecisions, GatherLastTokens) {
  auto b = backend(GetParam());
  const PackedBatch batch = batch_of_lengths({1, 7, 33});
  b->set_batch(batch);
  const Values xv = random_values(size_t(batch.tokens() * 5), 15);
  const Tensor x = activation(*b, {batch.tokens(), 5}, xv);
  Tensor out = b->allocate(b->activation_dtype(), {3, 5});
  b->gather_last_tokens(x, out);
  const Values got = b->to_host_f32(out), stored = values_of(x);
  const int last[] = {0, 7, 40};
  for (int s = 0; s < 3; ++s)
    for (int e = 0; e < 5; ++e) EXPECT_EQ(got[s * 5 + e], stored[last[s] * 5 + e]);
}

// ---- attention ----------------------------------------------------------------------------

struct AttnCase {
  std::vector<int> lengths;
  int hq, hkv, d;
};

struct AttnInputs {
  Tensor q, k, v;
};

// q, k and v side by side in each token row, as the fused projection leaves them for attention().
Tensor fused_qkv(Backend& b, const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t T = q.dim(0), hq = q.dim(1), hkv = k.dim(1), d = q.dim(2);
  const size_t es = dtype_size(q.dtype);
  Tensor qkv = b.allocate(q.dtype, {T, hq + 2 * hkv, d});
  char* dst = static_cast<char*>(qkv.data);
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(dst, static_cast<const char*>(q.data) + t * hq * d * es, hq * d * es);
    std::memcpy(dst + hq * d * es, static_cast<const char*>(k.data) + t * hkv * d * es, hkv * d * es);
    std::memcpy(dst + (hq + hkv) * d * es, static_cast<const char*>(v.data) + t * hkv * d * es, hkv * d * es);
    dst += (hq + 2 * hkv) * d * es;
  }
  return qkv;
}

AttnInputs attention_inputs(Backend& b, int64_t T, int hq, int hkv, int d, uint32_t seed) {
  // q scaled up so some softmax rows are sharp, not just near-uniform.
  return {activation(b, {T, hq, d}, random_values(size_t(T * hq * d), seed, -3.0f, 3.0f)),
          activation(b, {T, hkv, d}, random_values(size_t(T * hkv * d), seed + 1)),
          activation(b, {T, hkv, d}, random_values(size_t(T * hkv * d), seed + 2))};
}

TEST_P(BothPrecisions, AttentionMatchesReferenceOverOddShapes) {
  const Precision p = GetParam();
  auto b = backend(p);
  const std::vector<AttnCase> cases = {
      {{1}, 2, 2, 16},           {{1, 7, 33}, 4, 4, 16}, {{1, 7, 33}, 4, 2, 32}, {{1, 7, 33}, 8, 2, 128},
      {{65, 3, 130}, 2, 1, 128}, {{64, 64}, 4, 1, 32},   {{200}, 6, 3, 24},
  };
  for (const AttnCase& c : cases) {
    const PackedBatch batch = batch_of_lengths(c.lengths);
    b->set_batch(batch);
    const AttnInputs in = attention_inputs(*b, batch.tokens(), c.hq, c.hkv, c.d, 20);
    Tensor out = b->allocate(b->activation_dtype(), {batch.tokens(), c.hq, c.d});
    b->attention(fused_qkv(*b, in.q, in.k, in.v), out);
    const auto want =
        ref_attention(values_of(in.q), values_of(in.k), values_of(in.v), batch.seq_offsets, c.hq, c.hkv, c.d);
    const std::string what = "T=" + std::to_string(batch.tokens()) + " hq=" + std::to_string(c.hq) +
                             " hkv=" + std::to_string(c.hkv) + " d=" + std::to_string(c.d);
    expect_close(b->to_host_f32(out), want, p, 1e-5, 2e-3, what);

    // Every kernel this CPU can run must agree, including those the backend would not pick here.
    cpu::AttentionArgs args{in.q.data,
                            in.k.data,
                            in.v.data,
                            nullptr,
                            p == Precision::Fast,
                            batch.tokens(),
                            c.hq,
                            c.hkv,
                            c.d,
                            batch.seq_offsets.data(),
                            batch.sequences(),
                            1.0f / std::sqrt(float(c.d))};
    // ... also reading q, k and v as column blocks of one fused row, as the backend does.
    const Tensor fused = fused_qkv(*b, in.q, in.k, in.v);
    const size_t es = dtype_size(fused.dtype);
    cpu::AttentionArgs strided = args;
    strided.q = fused.data;
    strided.k = static_cast<const char*>(fused.data) + c.hq * c.d * es;
    strided.v = static_cast<const char*>(fused.data) + (c.hq + c.hkv) * c.d * es;
    strided.q_stride = strided.kv_stride = int64_t{c.hq + 2 * c.hkv} * c.d;
    for (const cpu::AttentionKernel kernel : cpu::attention_kernels(args)) {
      for (cpu::AttentionArgs* a : {&args, &strided}) {
        Tensor other = b->allocate(b->activation_dtype(), {batch.tokens(), c.hq, c.d});
        a->out = other.data;
        cpu::attention(*a, kernel);
        expect_close(values_of(other), want, p, 1e-5, 2e-3,
                     "kernel " + std::to_string(int(kernel)) + (a == &strided ? " strided " : " ") + what);
      }
    }
  }
}

TEST_P(BothPrecisions, AttentionOnALongSequence) {
  const Precision p = GetParam();
  auto b = backend(p);
  const PackedBatch batch = batch_of_lengths({2000});
  b->set_batch(batch);
  const int hq = 2, hkv = 1, d = 128;
  const AttnInputs in = attention_inputs(*b, batch.tokens(), hq, hkv, d, 30);
  const auto want = ref_attention(values_of(in.q), values_of(in.k), values_of(in.v), batch.seq_offsets, hq, hkv, d);
  cpu::AttentionArgs args{in.q.data,
                          in.k.data,
                          in.v.data,
                          nullptr,
                          p == Precision::Fast,
                          batch.tokens(),
                          hq,
                          hkv,
                          d,
                          batch.seq_offsets.data(),
                          batch.sequences(),
                          1.0f / std::sqrt(float(d))};
  for (const cpu::AttentionKernel kernel : cpu::attention_kernels(args)) {
    if (kernel == cpu::AttentionKernel::Generic) continue;  // O(T^2) reloads: covered on short inputs
    Tensor out = b->allocate(b->activation_dtype(), {batch.tokens(), hq, d});
    args.out = out.data;
    cpu::attention(args, kernel);
    expect_close(values_of(out), want, p, 1e-5, 2e-3, "T=2000 kernel " + std::to_string(int(kernel)));
  }
}

TEST_P(BothPrecisions, AttentionIsCausalAndSequencesDoNotSeeEachOther) {
  auto b = backend(GetParam());
  const PackedBatch batch = batch_of_lengths({70, 5, 90});
  b->set_batch(batch);
  const int hq = 4, hkv = 2, d = 32;
  const int64_t T = batch.tokens(), row = int64_t{hq} * d, kv_row = int64_t{hkv} * d;
  AttnInputs in = attention_inputs(*b, T, hq, hkv, d, 40);
  Tensor base = b->allocate(b->activation_dtype(), {T, hq, d});
  b->attention(fused_qkv(*b, in.q, in.k, in.v), base);
  const Values before = values_of(base);

  // Overwrite token 50 of sequence 0 (q, k and v) and all of sequence 2.
  auto scramble = [&](Tensor& t, int64_t begin, int64_t end, int64_t width, uint32_t seed) {
    const Values noise = random_values(size_t((end - begin) * width), seed);
    convert(noise.data(), DType::F32, static_cast<char*>(t.data) + begin * width * dtype_size(t.dtype), t.dtype,
            noise.size());
  };
  scramble(in.q, 50, 51, row, 41);
  scramble(in.k, 50, 51, kv_row, 42);
  scramble(in.v, 50, 51, kv_row, 43);
  scramble(in.k, 75, 165, kv_row, 44);
  scramble(in.v, 75, 165, kv_row, 45);
  Tensor after_t = b->allocate(b->activation_dtype(), {T, hq, d});
  b->attention(fused_qkv(*b, in.q, in.k, in.v), after_t);
  const Values after = values_of(after_t);

  for (int64_t i = 0; i < 50 * row; ++i) ASSERT_EQ(after[i], before[i]) << "earlier token changed, element " << i;
  for (int64_t i = 70 * row; i < 75 * row; ++i) ASSERT_EQ(after[i], before[i]) << "sequence 1 saw its neighbours";
  EXPECT_NE(after[51 * row], before[51 * row]);  // later tokens of sequence 0 do see token 50

  // A sequence packed with others gives the same output as alone.
  const std::vector<int32_t> alone(5, 1);
  b->set_batch(PackedBatch::pack({&alone}));
  Tensor q1 = b->allocate(b->activation_dtype(), {5, hq, d});
  Tensor k1 = b->allocate(b->activation_dtype(), {5, hkv, d}), v1 = b->allocate(b->activation_dtype(), {5, hkv, d});
  const size_t es = dtype_size(b->activation_dtype());
  std::memcpy(q1.data, static_cast<char*>(in.q.data) + 70 * row * es, q1.nbytes());
  std::memcpy(k1.data, static_cast<char*>(in.k.data) + 70 * kv_row * es, k1.nbytes());
  std::memcpy(v1.data, static_cast<char*>(in.v.data) + 70 * kv_row * es, v1.nbytes());
  Tensor out1 = b->allocate(b->activation_dtype(), {5, hq, d});
  b->attention(fused_qkv(*b, q1, k1, v1), out1);
  const Values single = values_of(out1);
  for (int64_t i = 0; i < 5 * row; ++i) ASSERT_EQ(single[i], before[70 * row + i]);
}

TEST(CpuBackend, ToHostF32ConvertsBf16) {
  auto b = backend(Precision::Fast);
  const Tensor x = activation(*b, {3}, {1.0f, -2.5f, 0.1f});
  const Values got = b->to_host_f32(x);
  EXPECT_EQ(got[0], 1.0f);
  EXPECT_EQ(got[1], -2.5f);
  EXPECT_EQ(got[2], bf16_to_f32(f32_to_bf16(0.1f)));
}

}  // namespace
}  // namespace ember
