#pragma once
// Element-wise and row-wise kernels of the CPU backend. Activations are F32 or BF16 (`dt`);
// every kernel computes in fp32 and rounds its output once to the activation type. Loops are
// written for the compiler to vectorise and run OpenMP-parallel over rows.
#include <cstdint>

#include "core/dtype.h"

namespace ember::cpu {

// out: [rows, n] = rmsnorm(x: [rows, n]) * w: [n]
void rms_norm(const void* x, void* out, DType dt, const float* w, float eps, int64_t rows, int64_t n);

// residual: [rows, n] += x: [rows, n] (rounded to dt), then out = rmsnorm(residual) * w
void add_rms_norm(void* residual, const void* x, void* out, DType dt, const float* w, float eps, int64_t rows,
                  int64_t n);

// cos, sin: [tokens, d / 2] for rotate-half RoPE, computed in fp32 as HF transformers does.
void rope_table(const int32_t* positions, int64_t tokens, int64_t d, float theta, float* cos, float* sin);

// x: [tokens, heads, d] with token rows row_stride elements apart, in place: per-head RMSNorm
// with w: [d], then RoPE with cos/sin: [tokens, d / 2]
void head_norm_rope(void* x, DType dt, int64_t tokens, int64_t row_stride, int64_t heads, int64_t d, const float* w,
                    float eps, const float* cos, const float* sin);

// out: [rows, n] = silu(gate) * up, gate_up: [rows, 2n] holding each row's gate, then its up
void swiglu(const void* gate_up, void* out, DType dt, int64_t rows, int64_t n);

// dst: [rows, dst_cols] columns [col0, col0 + cols) = src: [rows, cols]
void copy_into_columns(const void* src, void* dst, int64_t dst_cols, int64_t col0, int64_t rows, int64_t cols,
                       DType dt);

// out: [count, n] (out_dt) = table: [.., n] (table_dt, any of F32/F16/BF16) at rows idx: [count]
void gather_rows(const void* table, DType table_dt, int64_t n, const int32_t* idx, int64_t count, void* out,
                 DType out_dt);

// dst: [n] = src: [n], between any two of F32/F16/BF16, vectorised and parallel (weight loading).
void convert_parallel(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n);

}  // namespace ember::cpu
