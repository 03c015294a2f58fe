#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace ember {

enum class DType { F32, F16, BF16, I32 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // safetensors spelling: "F32", "F16", "BF16", "I32"

// bf16 is the top half of an fp32; rounding is to nearest, ties to even (as torch does).
inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n values between any two of F32/F16/BF16.
void convert(const void* src, DType src_type, void* dst, DType dst_type, size_t n);

}  // namespace ember
