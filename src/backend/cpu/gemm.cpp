#include "backend/cpu/gemm.h"

#include <string>

#include "ember/error.h"

namespace ember::cpu {

namespace {

// Distinct batch sizes each hold a primitive; past this many the cache starts over.
constexpr size_t kMaxCachedShapes = 256;

using tag = dnnl::memory::format_tag;

dnnl::memory::data_type onednn_type(DType dt) {
  switch (dt) {
    case DType::F32:
      return dnnl::memory::data_type::f32;
    case DType::BF16:
      return dnnl::memory::data_type::bf16;
    default:
      throw Error(std::string("CPU linear: unsupported dtype ") + dtype_name(dt) + " (F32 or BF16 expected)");
  }
}

}  // namespace

Gemm::Gemm() : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {}

const Gemm::Entry& Gemm::get(int64_t m, int64_t k, int64_t n, DType dt) {
  const auto key = std::make_tuple(m, k, n, dt);
  auto it = cache_.find(key);
  if (it != cache_.end()) return it->second;
  if (cache_.size() >= kMaxCachedShapes) cache_.clear();
  const auto t = onednn_type(dt);
  Entry e;
  e.src = dnnl::memory::desc({m, k}, t, tag::ab);
  e.wei = dnnl::memory::desc({k, n}, t, tag::ba);
  e.dst = dnnl::memory::desc({m, n}, t, tag::ab);
  try {
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(e.src, e.wei, e.dst), engine_);
    e.prim = dnnl::matmul(pd);
  } catch (const dnnl::error& err) {
    throw Error("oneDNN cannot create a matmul for [" + std::to_string(m) + ", " + std::to_string(k) + "] x [" +
                std::to_string(n) + ", " + std::to_string(k) + "]^T " + dtype_name(dt) + ": " + err.what());
  }
  return cache_.emplace(key, std::move(e)).first->second;
}

void Gemm::run(const void* x, const void* w, void* out, int64_t m, int64_t k, int64_t n, DType dt) {
  if (m == 0) return;
  const Entry& e = get(m, k, n, dt);
  // oneDNN takes non-const handles but only reads src and weights.
  dnnl::memory src(e.src, engine_, const_cast<void*>(x));
  dnnl::memory wei(e.wei, engine_, const_cast<void*>(w));
  dnnl::memory dst(e.dst, engine_, out);
  try {
    e.prim.execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    stream_.wait();
  } catch (const dnnl::error& err) {
    throw Error(std::string("oneDNN matmul failed: ") + err.what());
  }
}

}  // namespace ember::cpu
