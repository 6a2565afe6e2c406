// Undoing Nunchaku's packed layouts (see nunchaku_pack.h). Each loop walks the packed tensor in
// storage order and computes where the element lives in ours, from the index formulas of
// ../shared/NUNCHAKU-FORMAT.md (checked against an independent reshape/permute packer in the tests).
#include "nunchaku_pack.h"

namespace svdq::nunchaku {

std::vector<uint8_t> unpackW4A4Weight(const uint8_t* packed, int64_t N, int64_t K) {
  // A word's nibble j is k = 64 kt + 32 k_half + 8 k_lane + j; j and k share their parity, so each
  // byte (nibbles j, j+1) lands whole on one of our bytes (k, k+1).
  std::vector<uint8_t> out(static_cast<size_t>(N * K / 2));
  const int64_t KT = K / 64;
  size_t src = 0;
  for (int64_t nt = 0; nt < N / 128; ++nt)
    for (int64_t kt = 0; kt < KT; ++kt)
      for (int np = 0; np < 8; ++np)
        for (int nl = 0; nl < 8; ++nl)
          for (int kl = 0; kl < 4; ++kl)
            for (int nh = 0; nh < 2; ++nh)
              for (int kh = 0; kh < 2; ++kh) {
                const int64_t n = 128 * nt + 16 * np + 8 * nh + nl;
                const int64_t k0 = 64 * kt + 32 * kh + 8 * kl;
                for (int b = 0; b < 4; ++b) out[(n * K + k0 + 2 * b) / 2] = packed[src++];
              }
  return out;
}

std::vector<float> unpackChannelScales(const float* packed, int64_t N, int64_t G) {
  // Inside a 128-block, position ((hi * 4 + lo) * 2 + pair) * 2 + elem holds channel 16 hi + 8 pair + 2 lo + elem.
  std::vector<float> out(static_cast<size_t>(N * G));
  size_t src = 0;
  for (int64_t t = 0; t < N / 128; ++t)
    for (int64_t g = 0; g < G; ++g)
      for (int hi = 0; hi < 8; ++hi)
        for (int lo = 0; lo < 4; ++lo)
          for (int pair = 0; pair < 2; ++pair)
            for (int elem = 0; elem < 2; ++elem) {
              const int64_t n = 128 * t + 16 * hi + 8 * pair + 2 * lo + elem;
              out[n * G + g] = packed[src++];
            }
  return out;
}

std::vector<uint8_t> unpackMicroScales(const uint8_t* packed, int64_t N, int64_t K) {
  // Inside a (128 channels, 64 inputs) block: (lane 8, quad 4, pack 4, sub 4), channel 32 pack + 8 quad + lane,
  // scale group 4 chunk + sub (pack_micro_scale's warp_n = 128 case).
  const int64_t G = K / 16;
  std::vector<uint8_t> out(static_cast<size_t>(N * G));
  size_t src = 0;
  for (int64_t t = 0; t < N / 128; ++t)
    for (int64_t c = 0; c < K / 64; ++c)
      for (int lane = 0; lane < 8; ++lane)
        for (int quad = 0; quad < 4; ++quad)
          for (int pack = 0; pack < 4; ++pack)
            for (int sub = 0; sub < 4; ++sub) {
              const int64_t n = 128 * t + 32 * pack + 8 * quad + lane;
              out[n * G + 4 * c + sub] = packed[src++];
            }
  return out;
}

std::vector<float> unpackLowRank(const float* packed, int64_t C, int64_t R, bool down) {
  // Inside a 16x16 block: (n_lane 8, k_lane 4, n_half 2, k_half 2, pair 2) with n = 8 n_half + n_lane,
  // k = 8 k_half + 2 k_lane + pair; n is the rank for down, the channel for up.
  std::vector<float> out(static_cast<size_t>(C * R));
  size_t src = 0;
  for (int64_t cb = 0; cb < C / 16; ++cb)
    for (int64_t rb = 0; rb < R / 16; ++rb)
      for (int nl = 0; nl < 8; ++nl)
        for (int kl = 0; kl < 4; ++kl)
          for (int nh = 0; nh < 2; ++nh)
            for (int kh = 0; kh < 2; ++kh)
              for (int p = 0; p < 2; ++p) {
                const int64_t n = 8 * nh + nl, k = 8 * kh + 2 * kl + p;
                if (down) out[(16 * rb + n) * C + 16 * cb + k] = packed[src++];  // [R, C]
                else out[(16 * cb + n) * R + 16 * rb + k] = packed[src++];      // [C, R]
              }
  return out;
}

std::vector<uint8_t> unpackAwqWeight(const uint8_t* packed, int64_t N, int64_t K) {
  // int16 [R, 64 g + 16 row + 8 half + j], nibble t = weight (4 R + row, 64 g + 32 half + 8 t + j).
  std::vector<uint8_t> out(static_cast<size_t>(N * K / 2), 0);
  for (int64_t R = 0; R < N / 4; ++R)
    for (int64_t g = 0; g < K / 64; ++g)
      for (int row = 0; row < 4; ++row)
        for (int half = 0; half < 2; ++half)
          for (int j = 0; j < 8; ++j) {
            const int64_t e = R * K + 64 * g + 16 * row + 8 * half + j;  // int16 index
            const uint16_t word = static_cast<uint16_t>(packed[2 * e] | (packed[2 * e + 1] << 8));
            const int64_t n = 4 * R + row;
            for (int t = 0; t < 4; ++t) {
              const int64_t k = 64 * g + 32 * half + 8 * t + j;
              const uint8_t q = (word >> (4 * t)) & 0xf;
              out[(n * K + k) / 2] |= static_cast<uint8_t>(k % 2 ? q << 4 : q);
            }
          }
  return out;
}

}  // namespace svdq::nunchaku
