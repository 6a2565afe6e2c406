// Nunchaku's packed tensor layouts (nunchaku/lora/flux/packer.py NunchakuWeightPacker(bits=4,
// warp_n=128); AWQ: nunchaku/models/text_encoders/tinychat_utils.py pack_w4), undone into our
// plain row-major layouts. Pure permutations: no value changes, so the conversion is exact.
// Callers check the shapes (N and K multiples of 128 for W4A4, ranks multiples of 16).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace svdq::nunchaku {

// W4A4 qweight, [N, K/2] bytes in 128x64 tiles of 512 little-endian int32 words ordered
// (n_pack 8, n_lane 8, k_lane 4, n_half 2, k_half 2), 8 nibbles along K per word
// -> ours [N, K/2], low nibble = even k. Nibble values (INT4 / E2M1 codes) are unchanged.
std::vector<uint8_t> unpackW4A4Weight(const uint8_t* packed, int64_t N, int64_t K);

// Per-channel vectors packed per 128 channels (bias, smooth, wcscales: G = 1; INT4 wscales: G = K/64,
// blocks ordered (128-channel tile, group)) -> [N, G] row-major.
std::vector<float> unpackChannelScales(const float* packed, int64_t N, int64_t G);

// NVFP4 E4M3 micro-scales (one per 16 inputs), blocks ordered (128-channel tile, 64-input chunk)
// -> [N, K/16] bytes.
std::vector<uint8_t> unpackMicroScales(const uint8_t* packed, int64_t N, int64_t K);

// Low-rank factors in 16x16 blocks ordered (channel block, rank block). down: stored [C, R]
// (C = input channels) -> [R, C]; up: stored [C, R] (C = output channels) -> [C, R].
std::vector<float> unpackLowRank(const float* packed, int64_t C, int64_t R, bool down);

// AWQ W4A16 qweight (int16 view [N/4, K], unsigned nibbles) -> ours [N, K/2], low nibble = even k.
std::vector<uint8_t> unpackAwqWeight(const uint8_t* packed, int64_t N, int64_t K);

}  // namespace svdq::nunchaku
