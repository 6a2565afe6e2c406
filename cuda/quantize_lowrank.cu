// Fused activation kernel (issue 8, kernel 1): per token it quantizes x̂ = (x + shift) / smooth to 4 bit
// per group (INT4 g64 or NVFP4 g16) AND computes the low-rank down-projection x . lora_down^T on BF16
// tensor cores, from the same shared-memory tile, so x is read from DRAM once.
// Numerics follow svdq::quant::quantizeInt4 / quantizeNvfp4 (native/src/quant/kernels.cpp) exactly:
// IEEE division (__fdiv_rn, never contracted), BF16 scale rounding, rint (half to even), saturation.
#include <cuda_fp8.h>

#include "common.cuh"
#include "svdq/cuda_ops.h"

namespace svdq::cuda {
namespace {

constexpr int kRows = 32;      // tokens per block
constexpr int kThreads = 256;  // 8 warps, 4 tokens each for the quantization
constexpr int kChunk = 64;     // k per step (one INT4 group, four NVFP4 groups)
constexpr int kMaxTiles = (2 * kMaxRank / 8) / 8;  // m16n8 low-rank tiles per warp at the largest rank

// [rows][64] BF16 tiles, 128-byte rows: the 16-byte chunk index is XORed with the row so ldmatrix's
// eight rows hit eight different bank groups.
__device__ __forceinline__ int swz(int r, int k) { return r * kChunk + ((((k >> 3) ^ (r & 7))) << 3) + (k & 7); }

struct Smem {
  uint16_t x[kRows * kChunk];
  uint16_t ld[kMaxRank * kChunk];
  float tscale[kRows];
};

__device__ __forceinline__ void loadChunk(Smem& s, const ActQuantArgs& a, int64_t row0, int64_t k0) {
  const int t = threadIdx.x;
  {  // x: 32 rows x 8 chunks = 256 copies, one per thread; zero outside [M, K]
    const int r = t >> 3, c = t & 7;
    const int64_t gr = row0 + r, gk = k0 + c * 8;
    const bool ok = gr < a.M && gk < a.K;
    cpAsync16(&s.x[swz(r, c * 8)], ok ? a.x + gr * a.K + gk : a.x, ok);
  }
  if (a.loraDown)
    for (int i = t; i < a.rankPadded * 8; i += kThreads) {
      const int r = i >> 3, c = i & 7;
      cpAsync16(&s.ld[swz(r, c * 8)], a.loraDown + int64_t(r) * a.Kp + k0 + c * 8, true);
    }
  cpAsyncCommit();
  cpAsyncWait<0>();
  __syncthreads();
}

// x̂ for the two consecutive elements this lane owns (k even); zero outside [M, K] like the CPU padding.
__device__ __forceinline__ void smoothed(const Smem& s, const ActQuantArgs& a, int r, int kl, int64_t gr, int64_t k0,
                                         float& v0, float& v1) {
  const uint32_t pair = *reinterpret_cast<const uint32_t*>(&s.x[swz(r, kl)]);
  const int64_t gk = k0 + kl;
  v0 = (gr < a.M && gk < a.K) ? __fdiv_rn(__fadd_rn(bf16BitsToF32(pair & 0xffff), a.shift), a.smooth[gk]) : 0.f;
  v1 = (gr < a.M && gk + 1 < a.K) ? __fdiv_rn(__fadd_rn(bf16BitsToF32(pair >> 16), a.shift), a.smooth[gk + 1]) : 0.f;
}

// The low-rank branch on this chunk: lora[32 x Rp] += x[32 x 64] . ld[Rp x 64]^T (BF16 MMA, F32 accumulation).
__device__ __forceinline__ void lowRankChunk(const Smem& s, int rankPadded, float (&acc)[kMaxTiles][4]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int tiles = 2 * rankPadded / 8;
#pragma unroll
  for (int i = 0; i < kMaxTiles; ++i) {
    const int t = warp + 8 * i;
    if (t >= tiles) break;
    const int mt = t & 1, nt = t >> 1;
#pragma unroll
    for (int ks = 0; ks < kChunk / 16; ++ks) {
      uint32_t af[4], bf[2];
      ldmatrixX4(af, &s.x[swz(mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, (ks * 2 + (lane >> 4)) * 8)]);
      ldmatrixX2(bf, &s.ld[swz(nt * 8 + (lane & 7), (ks * 2 + ((lane >> 3) & 1)) * 8)]);
      mmaBf16(acc[i], af, bf[0], bf[1]);
    }
  }
}

__device__ __forceinline__ void storeLowRank(const ActQuantArgs& a, int64_t row0, const float (&acc)[kMaxTiles][4]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int tiles = 2 * a.rankPadded / 8;
#pragma unroll
  for (int i = 0; i < kMaxTiles; ++i) {
    const int t = warp + 8 * i;
    if (t >= tiles) break;
    const int mt = t & 1, nt = t >> 1;
    const int64_t r = row0 + mt * 16 + (lane >> 2);
    const int c = nt * 8 + (lane & 3) * 2;
    *reinterpret_cast<float2*>(&a.loraAct[r * a.rankPadded + c]) = make_float2(acc[i][0], acc[i][1]);
    *reinterpret_cast<float2*>(&a.loraAct[(r + 8) * a.rankPadded + c]) = make_float2(acc[i][2], acc[i][3]);
  }
}

__global__ void __launch_bounds__(kThreads) quantizeInt4Kernel(ActQuantArgs a) {
  __shared__ __align__(128) Smem s;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row0 = int64_t(blockIdx.x) * kRows;
  const float qmax = a.isUnsigned ? 15.f : 7.f, qmin = a.isUnsigned ? 0.f : -8.f;
  float acc[kMaxTiles][4] = {};
  for (int64_t k0 = 0; k0 < a.Kp; k0 += kChunk) {
    loadChunk(s, a, row0, k0);
#pragma unroll
    for (int i = 0; i < kRows / 8; ++i) {
      const int r = warp * (kRows / 8) + i;
      const int64_t gr = row0 + r;
      float v0, v1;
      smoothed(s, a, r, 2 * lane, gr, k0, v0, v1);
      float amax = a.isUnsigned ? fmaxf(0.f, fmaxf(v0, v1)) : fmaxf(fabsf(v0), fabsf(v1));
#pragma unroll
      for (int o = 16; o; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      const float sc = roundBf16(__fdiv_rn(amax, qmax));
      int q0 = 0, q1 = 0;
      if (sc > 0.f) {
        q0 = static_cast<int>(fminf(fmaxf(rintf(__fdiv_rn(v0, sc)), qmin), qmax));
        q1 = static_cast<int>(fminf(fmaxf(rintf(__fdiv_rn(v1, sc)), qmin), qmax));
      }
      a.qact[gr * (a.Kp / 2) + k0 / 2 + lane] = static_cast<uint8_t>((q0 & 0xf) | ((q1 & 0xf) << 4));
      if (lane == 0) a.ascales[(k0 / kChunk) * a.Mp + gr] = sc;
    }
    if (a.loraDown) lowRankChunk(s, a.rankPadded, acc);
    __syncthreads();  // the next chunk overwrites the tiles
  }
  if (a.loraDown) storeLowRank(a, row0, acc);
}

// E4M3 (OCP fn) decode, exact in F32.
__device__ __forceinline__ float decodeE4m3(uint8_t v) {
  const int e = (v >> 3) & 0xf, m = v & 7;
  const float r = e == 0 ? ldexpf(static_cast<float>(m) / 8.f, -6) : ldexpf(1.f + static_cast<float>(m) / 8.f, e - 7);
  return (v & 0x80) ? -r : r;
}
// E2M1 code of v: nearest of {0,.5,1,1.5,2,3,4,6}, ties to the even code, saturating; no negative zero.
__device__ __forceinline__ uint32_t encodeE2m1(float v) {
  const float x = fabsf(v);
  const uint32_t i = x <= 0.25f ? 0 : x < 0.75f ? 1 : x <= 1.25f ? 2 : x < 1.75f ? 3 : x <= 2.5f ? 4 : x < 3.5f ? 5 : x <= 5.f ? 6 : 7;
  return i == 0 ? 0u : ((v < 0.f ? 8u : 0u) | i);
}

__global__ void __launch_bounds__(kThreads) quantizeNvfp4Kernel(ActQuantArgs a) {
  __shared__ __align__(128) Smem s;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row0 = int64_t(blockIdx.x) * kRows;
  // Pass 1: the per-token F32 scale amax(x̂) / (6 * 448) (svdq::quant::nvfp4TensorScale over the padded row).
  for (int i = 0; i < kRows / 8; ++i) {
    const int r = warp * (kRows / 8) + i;
    const int64_t gr = row0 + r;
    float amax = 0.f;
    if (gr < a.M)
      for (int64_t k = lane; k < a.K; k += 32)
        amax = fmaxf(amax, fabsf(__fdiv_rn(__fadd_rn(bf16BitsToF32(a.x[gr * a.K + k]), a.shift), a.smooth[k])));
#pragma unroll
    for (int o = 16; o; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float ts = amax > 0.f ? __fdiv_rn(amax, 2688.f) : 1.f;
    if (lane == 0) {
      s.tscale[r] = ts;
      a.tensorScale[gr] = ts;
    }
  }
  __syncthreads();
  float acc[kMaxTiles][4] = {};
  for (int64_t k0 = 0; k0 < a.Kp; k0 += kChunk) {
    loadChunk(s, a, row0, k0);
#pragma unroll
    for (int i = 0; i < kRows / 8; ++i) {
      const int r = warp * (kRows / 8) + i;
      const int64_t gr = row0 + r;
      const float ts = s.tscale[r];
      float v0, v1;
      smoothed(s, a, r, 2 * lane, gr, k0, v0, v1);
      float amax = fmaxf(fabsf(v0), fabsf(v1));  // eight lanes hold one group of 16
#pragma unroll
      for (int o = 4; o; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      const uint8_t gs = static_cast<uint8_t>(
          __nv_cvt_float_to_fp8(__fdiv_rn(__fdiv_rn(amax, 6.f), ts), __NV_SATFINITE, __NV_E4M3));
      const float gsv = decodeE4m3(gs);
      const float sc = __fmul_rn(gsv, ts);
      uint32_t c0 = 0, c1 = 0;
      if (sc > 0.f) c0 = encodeE2m1(__fdiv_rn(v0, sc)), c1 = encodeE2m1(__fdiv_rn(v1, sc));
      a.qact[gr * (a.Kp / 2) + k0 / 2 + lane] = static_cast<uint8_t>(c0 | (c1 << 4));
      if ((lane & 7) == 0) a.ascales[(k0 / 16 + lane / 8) * a.Mp + gr] = gsv;
    }
    if (a.loraDown) lowRankChunk(s, a.rankPadded, acc);
    __syncthreads();
  }
  if (a.loraDown) storeLowRank(a, row0, acc);
}

// Both formats walk K in chunks of 64 on the GPU, so Kp = roundUp(K, 64) for NVFP4 too; the groups past
// the CPU's roundUp(K, 16) quantize zeros (code 0, scale 0) and add nothing in the GEMM.
void validate(const ActQuantArgs& a, const char* kernel) {
  const int group = kChunk;
  auto bad = [&](const std::string& why) { throw Error(std::string(kernel) + ": " + why); };
  if (a.M < 0 || a.K < 1) bad("bad shape M=" + std::to_string(a.M) + " K=" + std::to_string(a.K));
  if (a.K % 8) bad("K=" + std::to_string(a.K) + " must be a multiple of 8 (16-byte activation rows)");
  if (a.Kp != roundUp(a.K, group)) bad("Kp=" + std::to_string(a.Kp) + " is not K rounded up to " + std::to_string(group));
  if (a.Mp != roundUp(std::max<int64_t>(a.M, 1), kTileM)) bad("Mp=" + std::to_string(a.Mp) + " is not M rounded up to 128");
  if (!a.x || !a.smooth || !a.qact || !a.ascales) bad("null buffer");
  if (a.loraDown && (a.rankPadded < 16 || a.rankPadded > kMaxRank || a.rankPadded % 16 || !a.loraAct))
    bad("padded rank " + std::to_string(a.rankPadded) + " must be a multiple of 16 in [16, 256] with a lora_act buffer");
}

}  // namespace

void quantizeActInt4(const ActQuantArgs& a, void* stream) {
  validate(a, "quantizeActInt4");
  if (a.M == 0) return;
  quantizeInt4Kernel<<<static_cast<unsigned>(a.Mp / kRows), kThreads, 0, asStream(stream)>>>(a);
  checkLaunch("quantizeActInt4");
}

void quantizeActNvfp4(const ActQuantArgs& a, void* stream) {
  validate(a, "quantizeActNvfp4");
  if (a.isUnsigned) throw Error("quantizeActNvfp4: unsigned activations are INT4 only");
  if (!a.tensorScale) throw Error("quantizeActNvfp4: null tensorScale buffer");
  if (a.M == 0) return;
  quantizeNvfp4Kernel<<<static_cast<unsigned>(a.Mp / kRows), kThreads, 0, asStream(stream)>>>(a);
  checkLaunch("quantizeActNvfp4");
}

}  // namespace svdq::cuda
