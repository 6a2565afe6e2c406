// W4A16 GEMV/GEMM for the adaLN modulation layers (issue 8, kernel 3): M = batch (a few rows), so the
// kernel is bound by reading the 4-bit weights once. One warp per output channel, lanes stride K in
// 32-nibble (16-byte) loads; weights dequantize as in svdq::W4A16Linear: w = q * s + z (two roundings).
#include "common.cuh"
#include "svdq/cuda_ops.h"

namespace svdq::cuda {
namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32, kRowsPerPass = 8;

__global__ void __launch_bounds__(kThreads) w4a16Kernel(W4A16Args p) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * kWarps + warp;
  if (n >= p.N) return;
  const int64_t G = p.K / 64;
  const uint8_t* wrow = p.qweight + n * (p.K / 2);
  for (int64_t mb = 0; mb < p.M; mb += kRowsPerPass) {
    const int rows = static_cast<int>(p.M - mb < kRowsPerPass ? p.M - mb : kRowsPerPass);
    float acc[kRowsPerPass] = {};
    for (int64_t k0 = int64_t(lane) * 32; k0 < p.K; k0 += 32 * 32) {
      const uint4 wq = *reinterpret_cast<const uint4*>(wrow + k0 / 2);
      const float s = p.wscales[n * G + k0 / 64], z = p.wzeros[n * G + k0 / 64];
      float w[32];
      const uint32_t words[4] = {wq.x, wq.y, wq.z, wq.w};
#pragma unroll
      for (int i = 0; i < 32; ++i) w[i] = __fadd_rn(__fmul_rn(static_cast<float>((words[i / 8] >> ((i % 8) * 4)) & 0xf), s), z);
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
        if (r >= rows) break;
        const uint4* xr = reinterpret_cast<const uint4*>(p.x + (mb + r) * p.K + k0);
#pragma unroll
        for (int v = 0; v < 4; ++v) {
          const uint4 xv = xr[v];
          const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            acc[r] = fmaf(bf16BitsToF32(xw[j] & 0xffff), w[v * 8 + j * 2], acc[r]);
            acc[r] = fmaf(bf16BitsToF32(xw[j] >> 16), w[v * 8 + j * 2 + 1], acc[r]);
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r) {
      if (r >= rows) break;
      float v = acc[r];
#pragma unroll
      for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) {
        if (p.bias) v += p.bias[n];
        const int64_t i = (mb + r) * p.N + n;
        if (p.outF32) p.outF32[i] = v;
        else p.out[i] = f32ToBf16Bits(v);
      }
    }
  }
}

}  // namespace

void gemvW4A16(const W4A16Args& p, void* stream) {
  if (p.M < 0 || p.N < 1 || p.K < 64 || p.K % 64)
    throw Error("gemvW4A16: bad shape M=" + std::to_string(p.M) + " N=" + std::to_string(p.N) + " K=" +
                std::to_string(p.K) + " (K a positive multiple of 64)");
  if (!p.x || !p.qweight || !p.wscales || !p.wzeros || (!p.out && !p.outF32)) throw Error("gemvW4A16: null buffer");
  if (p.M == 0) return;
  const unsigned blocks = static_cast<unsigned>((p.N + kWarps - 1) / kWarps);
  w4a16Kernel<<<blocks, kThreads, 0, asStream(stream)>>>(p);
  checkLaunch("gemvW4A16");
}

}  // namespace svdq::cuda
