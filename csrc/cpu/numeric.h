// Element types of the CPU implementation (fp16, bf16 as raw bits) and their float conversions.
//
// Framework-neutral on purpose: no Paddle / torch types. float -> half / bfloat16 rounds to
// nearest, ties to even (IEEE default, what the GPU's __float2half_rn / __float2bfloat16_rn do);
// NaN stays NaN, overflow goes to infinity.
#pragma once

#include <cstdint>
#include <cstring>

namespace paddle_gqa {
namespace cpu {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float to_float(float x) { return x; }

inline float to_float(BFloat16 x) { return bits_float(uint32_t(x.bits) << 16); }

inline float to_float(Half x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1Fu;
  const uint32_t mant = x.bits & 0x3FFu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in float.
    const float mag = float(mant) * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
  }
  if (exp == 31) return bits_float(sign | 0x7F800000u | (mant << 13) | (mant ? 0x400000u : 0u));  // NaN quieted
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline BFloat16 bfloat16_from_float(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return BFloat16{uint16_t((u >> 16) | 0x0040u)};  // quiet NaN
  const uint32_t rounded = u + 0x7FFFu + ((u >> 16) & 1u);
  return BFloat16{uint16_t(rounded >> 16)};
}

inline Half half_from_float(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return Half{uint16_t(sign | 0x7E00u | ((a >> 13) & 0x3FFu))};  // quiet NaN
  if (a >= 0x477FF000u) return Half{uint16_t(sign | 0x7C00u)};  // >= 65520 rounds past 65504: inf
  if (a >= 0x38800000u) {
    // Normal half: rebias the exponent, keep 10 mantissa bits, round on the 13 dropped bits.
    const uint32_t h = (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3FFu);
    const uint32_t rem = a & 0x1FFFu;
    const uint32_t up = rem > 0x1000u || (rem == 0x1000u && (h & 1u));
    return Half{uint16_t(sign | (h + up))};  // a carry into the exponent is the right encoding
  }
  if (a <= 0x33000000u) return Half{uint16_t(sign)};  // <= 2^-25 (half the smallest subnormal): 0
  // Subnormal half: value / 2^-24 rounded; a carry to 0x400 is the smallest normal, correctly.
  const uint32_t e = a >> 23;
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - e;  // 14..24
  const uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  const uint32_t up = rem > halfway || (rem == halfway && (h & 1u));
  return Half{uint16_t(sign | (h + up))};
}

// from_float<T>(x): x rounded to T.
template <typename T>
T from_float(float x);
template <>
inline float from_float<float>(float x) { return x; }
template <>
inline Half from_float<Half>(float x) { return half_from_float(x); }
template <>
inline BFloat16 from_float<BFloat16>(float x) { return bfloat16_from_float(x); }

}  // namespace cpu
}  // namespace paddle_gqa
