// Dtype names, sizes and scalar conversions shared by the whole engine.
#include "svdq/tensor.h"

#include <cmath>
#include <sstream>

namespace svdq {

namespace {
struct DTypeEntry {
  DType type;
  const char* name;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2}, {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::I8, "I8", 1},   {DType::U8, "U8", 1},   {DType::I32, "I32", 4},   {DType::I64, "I64", 8},
    {DType::BOOL, "BOOL", 1},
};

uint32_t bitsOf(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}
float floatOf(uint32_t u) {
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}
}  // namespace

const char* dtypeName(DType t) {
  for (const auto& e : kDTypes)
    if (e.type == t) return e.name;
  return "?";
}

bool dtypeFromName(const std::string& s, DType* out) {
  for (const auto& e : kDTypes)
    if (s == e.name) {
      *out = e.type;
      return true;
    }
  return false;
}

size_t dtypeSize(DType t) {
  for (const auto& e : kDTypes)
    if (e.type == t) return e.size;
  return 0;
}

float bf16ToF32(uint16_t v) { return floatOf(static_cast<uint32_t>(v) << 16); }

uint16_t f32ToBf16(float v) {
  uint32_t u = bitsOf(v);
  if (std::isnan(v)) return static_cast<uint16_t>((u >> 16) | 0x40);  // keep NaN a NaN
  u += 0x7fff + ((u >> 16) & 1);                                       // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

float f16ToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  if (exp == 0) {
    if (man == 0) return floatOf(sign);
    float v = std::ldexp(static_cast<float>(man), -24);  // subnormal
    return sign ? -v : v;
  }
  if (exp == 31) return floatOf(sign | 0x7f800000 | (man << 13));
  return floatOf(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t f32ToF16(float v) {
  uint32_t u = bitsOf(v);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  float a = std::fabs(v);
  if (std::isnan(v)) return sign | 0x7e00;
  if (a >= 65520.f) return sign | 0x7c00;  // rounds to infinity
  if (a < 6.103515625e-05f) {              // subnormal range: multiples of 2^-24
    float q = std::nearbyint(a * 16777216.f);  // default rounding mode is to nearest even
    return sign | static_cast<uint16_t>(q);
  }
  uint32_t au = bitsOf(a);
  uint32_t exp = (au >> 23) - 112;
  uint32_t man = au & 0x7fffff;
  uint32_t h = (exp << 10) | (man >> 13);
  uint32_t rest = man & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
  return sign | static_cast<uint16_t>(h);
}

float e4m3ToF32(uint8_t v) {
  int sign = v & 0x80;
  int exp = (v >> 3) & 0xf;
  int man = v & 0x7;
  float r;
  if (exp == 0xf && man == 0x7) return NAN;
  if (exp == 0)
    r = std::ldexp(static_cast<float>(man), -9);  // subnormal: man/8 * 2^-6
  else
    r = std::ldexp(1.f + man / 8.f, exp - 7);
  return sign ? -r : r;
}

uint8_t f32ToE4m3(float v) {
  if (std::isnan(v)) return 0x7f;
  uint8_t sign = std::signbit(v) ? 0x80 : 0;
  float a = std::fmin(std::fabs(v), 448.f);  // saturate: E4M3 has no infinity
  // Search the 127 non-negative codes for the nearest (ties to the even code); cheap and exact.
  uint8_t best = 0;
  float bestErr = INFINITY;
  for (uint8_t c = 0; c < 0x7f; c++) {
    float err = std::fabs(e4m3ToF32(c) - a);
    if (err < bestErr || (err == bestErr && (c & 1) == 0)) {
      best = c;
      bestErr = err;
    }
  }
  return sign | best;
}

void toF32(DType t, const void* src, float* dst, size_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  switch (t) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::BF16:
      for (size_t i = 0; i < n; i++) {
        uint16_t v;
        std::memcpy(&v, b + 2 * i, 2);
        dst[i] = bf16ToF32(v);
      }
      return;
    case DType::F16:
      for (size_t i = 0; i < n; i++) {
        uint16_t v;
        std::memcpy(&v, b + 2 * i, 2);
        dst[i] = f16ToF32(v);
      }
      return;
    case DType::F8_E4M3:
      for (size_t i = 0; i < n; i++) dst[i] = e4m3ToF32(b[i]);
      return;
    case DType::I8:
      for (size_t i = 0; i < n; i++) dst[i] = static_cast<int8_t>(b[i]);
      return;
    case DType::U8:
    case DType::BOOL:
      for (size_t i = 0; i < n; i++) dst[i] = b[i];
      return;
    case DType::I32:
      for (size_t i = 0; i < n; i++) {
        int32_t v;
        std::memcpy(&v, b + 4 * i, 4);
        dst[i] = static_cast<float>(v);
      }
      return;
    case DType::I64:
      for (size_t i = 0; i < n; i++) {
        int64_t v;
        std::memcpy(&v, b + 8 * i, 8);
        dst[i] = static_cast<float>(v);
      }
      return;
  }
}

std::string shapeString(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); i++) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace svdq
