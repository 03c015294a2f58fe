#pragma once

namespace ember {

// cuBLASLt's best bf16 GEMM rate on device `device_index`, in TFLOP/s, over the Qwen3-Embedding-4B
// GEMM shapes at 16384 tokens: the yardstick `ember bench` prints the model's rate against.
// Takes well under two seconds.
double measure_cublas_peak_tflops(int device_index);

}  // namespace ember
