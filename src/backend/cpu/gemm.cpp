#include "backend/cpu/gemm.h"

#include <string>
#include "backend/cpu/kernels.h"
#include "ember/error.h"

namespace ember::cpu {

namespace {

// Distinct batch sizes each hold a primitive; past this many the cache starts over.
constexpr size_t kMaxCachedShapes = 256;
// Batch size whose primitive picks the packed layout; oneDNN 2.6 picks the same one for every
// batch size from 1 to 4096 on the target CPU.
constexpr int64_t kPackingRows = 512;

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

std::string shape_text(int64_t m, int64_t k, int64_t n, DType dt) {
  return "[" + std::to_string(m) + ", " + std::to_string(k) + "] x [" + std::to_string(n) + ", " +
         std::to_string(k) + "]^T " + dtype_name(dt);
}

}  // namespace

Gemm::Gemm() : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {}

const dnnl::memory::desc& Gemm::packed_desc(int64_t k, int64_t n, DType dt) {
  const auto key = std::make_tuple(k, n, dt);
  auto it = packed_descs_.find(key);
  if (it != packed_descs_.end()) return it->second;
  const auto t = onednn_type(dt);
  try {
    const dnnl::matmul::primitive_desc pd(
        dnnl::matmul::desc(dnnl::memory::desc({kPackingRows, k}, t, tag::ab), dnnl::memory::desc({k, n}, t, tag::any),
                           dnnl::memory::desc({kPackingRows, n}, t, tag::ab)),
        engine_);
    return packed_descs_.emplace(key, pd.weights_desc()).first->second;
  } catch (const dnnl::error& err) {
    throw Error("oneDNN cannot pick a weight layout for " + shape_text(kPackingRows, k, n, dt) + ": " + err.what());
  }
}

size_t Gemm::packed_bytes(int64_t n, int64_t k, DType dt) { return packed_desc(k, n, dt).get_size(); }

void Gemm::pack(const std::vector<Part>& parts, int64_t k, DType dt, void* dst) {
  int64_t n = 0;
  for (const Part& part : parts) n += part.rows;
  // oneDNN reorders convert bf16 <-> f32 on the way; several parts or f16 go through a plain copy.
  const void* w = parts.front().data;
  DType w_dt = parts.front().dtype;
  if (parts.size() > 1 || w_dt == DType::F16) {
    plain_.resize(static_cast<size_t>(n * k) * dtype_size(dt));
    int64_t row = 0;
    for (const Part& part : parts) {
      convert_parallel(part.data, part.dtype, plain_.data() + row * k * dtype_size(dt), dt, part.rows * k);
      row += part.rows;
    }
    w = plain_.data();
    w_dt = dt;
  }
  try {
    dnnl::memory src(dnnl::memory::desc({k, n}, onednn_type(w_dt), tag::ba), engine_, const_cast<void*>(w));
    dnnl::memory out(packed_desc(k, n, dt), engine_, dst);
    dnnl::reorder(src, out).execute(stream_, src, out);
    stream_.wait();
  } catch (const dnnl::error& err) {
    throw Error("oneDNN cannot pack a " + std::string(dtype_name(w_dt)) + " [" + std::to_string(n) + ", " +
                std::to_string(k) + "] weight for " + dtype_name(dt) + ": " + err.what());
  }
}

const Gemm::Entry& Gemm::get(int64_t m, int64_t k, int64_t n, DType dt, bool packed) {
  const auto key = std::make_tuple(m, k, n, dt, packed);
  auto it = cache_.find(key);
  if (it != cache_.end()) return it->second;
  if (cache_.size() >= kMaxCachedShapes) cache_.clear();
  const auto t = onednn_type(dt);
  Entry e;
  e.src = dnnl::memory::desc({m, k}, t, tag::ab);
  e.wei = packed ? packed_desc(k, n, dt) : dnnl::memory::desc({k, n}, t, tag::ba);
  e.dst = dnnl::memory::desc({m, n}, t, tag::ab);
  try {
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(e.src, e.wei, e.dst), engine_);
    e.prim = dnnl::matmul(pd);
  } catch (const dnnl::error& err) {
    throw Error("oneDNN cannot create a matmul for " + shape_text(m, k, n, dt) + ": " + err.what());
  }
  return cache_.emplace(key, std::move(e)).first->second;
}

void Gemm::run(const void* x, const void* w, bool packed, void* out, int64_t m, int64_t k, int64_t n, DType dt) {
  if (m == 0) return;
  const Entry& e = get(m, k, n, dt, packed);
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
