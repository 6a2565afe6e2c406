// Host self-check of the W4A4 kernels' register tricks (no GPU needed; cuda/compile-check.sh runs it):
// INT4/UINT4 nibble -> INT8 unpacking of cuda/common.cuh, and the exact d * scale through
// fma(1.5 * 2^23 + d, s, -1.5 * 2^23 * s) used in cuda/gemm_w4a4.cu's group epilogue.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>

#include "../common.cuh"

using namespace svdq::cuda;

static int nibble(uint32_t w, int i, bool sgn) {
  int v = (w >> (4 * i)) & 0xf;
  return sgn && v >= 8 ? v - 16 : v;
}
static int byteOf(uint32_t w, int i) { return static_cast<int8_t>((w >> (8 * i)) & 0xff); }

int main() {
  std::mt19937 rng(7);
  int bad = 0;
  for (int it = 0; it < 2000000 && bad < 10; ++it) {
    const uint32_t w = it < 65536 ? (uint32_t(it) * 0x00010001u) : rng();
    for (int j = 0; j < 4; ++j) {
      if (byteOf(s4EvenToS8(w), j) != nibble(w, 2 * j, true) || byteOf(s4OddToS8(w), j) != nibble(w, 2 * j + 1, true) ||
          byteOf(u4EvenToS8(w), j) != nibble(w, 2 * j, false) || byteOf(u4OddToS8(w), j) != nibble(w, 2 * j + 1, false)) {
        std::printf("unpack mismatch: word %08x byte %d\n", w, j);
        ++bad;
      }
    }
  }
  const float M = 12582912.f;
  std::uniform_int_distribution<int> d(-7680, 7680);
  std::uniform_int_distribution<uint32_t> bits(0, 0xffff);
  for (int it = 0; it < 2000000 && bad < 20; ++it) {
    const int dv = d(rng);
    uint32_t sb = (bits(rng) & 0x7fff) << 16;  // a positive BF16 scale, any exponent that stays finite
    if ((sb >> 23) >= 0xfe || (sb >> 23) < 1) continue;
    float s;
    std::memcpy(&s, &sb, 4);
    if (!std::isfinite(M * s)) continue;
    int32_t magic;
    std::memcpy(&magic, &M, 4);
    const int32_t mi = magic + dv;
    float mf;
    std::memcpy(&mf, &mi, 4);
    const float viaFma = std::fma(mf, s, -M * s), direct = static_cast<float>(dv) * s;
    if (std::memcmp(&viaFma, &direct, 4) != 0 && !(viaFma == 0 && direct == 0)) {
      std::printf("magic fma mismatch: d=%d s=%g: %g vs %g\n", dv, s, viaFma, direct);
      ++bad;
    }
  }
  std::printf(bad ? "bit tricks: FAILED\n" : "bit tricks: ok (nibble unpacking, exact d*scale via fma)\n");
  return bad ? 1 : 0;
}
