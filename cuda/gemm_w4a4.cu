// W4A4 GEMM with the fused epilogue (issue 8, kernel 2):
//   y = sum_g dot_int(qa[m, g], qw[n, g]) * as[g, m] * ws[g, n]   (group-wise, exact integer dots)
//       + bias + lora_act . lora_up^T, then tanh-GELU, then residual + gate * y, written once in BF16.
// Tiles: 128 x 128 outputs per block, 8 warps as 2 (M) x 4 (N) of 64 x 32, K staged 128 nibbles
// (64 bytes per row) at a time through a 4-stage cp.async pipeline, fragments by ldmatrix.
// Paths (same storage, same results bit for bit):
//   S4: mma.sync m16n8k64 s4 (native on sm_80/86/89; emulated at ~1/25 rate on sm_90),
//   S8: each 4-bit fragment word is split into its even and odd nibbles, sign-extended to INT8 in
//       registers, and fed to m16n8k32 s8 MMAs (the k permutation is the same for A and B, so the dot
//       is unchanged; every 4-bit product is exact in INT8): the sm_90 path.
//   FP4: NVFP4 E2M1 codes as 2x their value in INT8 (exact), one s8 MMA per group of 16 (the other
//       half of the k slots zeroed), E4M3 group scales decoded to F32. A portable emulation; sm_120's
//       block-scaled FP4 MMA would replace it there.
// The float epilogue of each group reproduces svdq::quant::gemmW4A4Int4 bit for bit:
// acc += (float(d) * as) * ws with separate roundings, here as fma(M + d, as, -M as) (exact d*as, no
// int->float conversion instruction: M = 1.5 * 2^23 makes M + d an exact float) then __fmul_rn, __fadd_rn.
#include "common.cuh"
#include "svdq/cuda_ops.h"

namespace svdq::cuda {
namespace {

constexpr int BM = kTileM, BN = kTileN, BKB = 64;  // BKB: bytes of K per row per stage
constexpr int kThreads = 256, kStages = 4;
enum Mode { kInt4S4 = 0, kInt4S8 = 1, kFp4S8 = 2 };

template <int SG>  // groups per stage: 2 (INT4 g64) or 8 (NVFP4 g16)
struct alignas(16) Stage {
  uint8_t a[BM * BKB];
  uint8_t b[BN * BKB];
  float as[SG * BM];
  float ws[SG * BN];
};

// 64-byte rows of four 16-byte chunks; the chunk index is XORed with (row / 2) % 4 so the eight rows an
// ldmatrix reads (stride 64 B) land in eight different 16-byte bank groups.
__device__ __forceinline__ int swz(int r, int c) { return r * BKB + ((c ^ ((r >> 1) & 3)) << 4); }

template <int SG>
__device__ __forceinline__ void loadStage(Stage<SG>& st, const W4A4GemmArgs& p, int64_t m0, int64_t n0, int kt, int G) {
  const int t = threadIdx.x;
  const int64_t rowBytes = p.Kp / 2;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int i = t + j * kThreads, r = i >> 2, c = i & 3;
    const int64_t gb = int64_t(kt) * BKB + c * 16;
    const bool ok = gb < rowBytes;
    cpAsync16(&st.a[swz(r, c)], ok ? p.qact + (m0 + r) * rowBytes + gb : p.qact, ok);
    cpAsync16(&st.b[swz(r, c)], ok ? p.qweight + (n0 + r) * rowBytes + gb : p.qweight, ok);
  }
  for (int i = t; i < SG * (BM / 4); i += kThreads) {
    const int g = i / (BM / 4), part = i % (BM / 4);
    const int gg = kt * SG + g;
    const bool ok = gg < G;
    cpAsync16(&st.as[g * BM + part * 4], ok ? p.ascales + int64_t(gg) * p.Mp + m0 + part * 4 : p.ascales, ok);
    cpAsync16(&st.ws[g * BN + part * 4], ok ? p.wscales + int64_t(gg) * p.Np + n0 + part * 4 : p.wscales, ok);
  }
}

// E2M1 codes (bit 3 sign, bits 0..2 magnitude index) of the even nibbles of w -> INT8 2 x value.
__device__ __forceinline__ uint32_t e2m1EvenToS8(uint32_t w) {
  const uint32_t x = w & 0x07070707u;
  const uint32_t sel = (x & 0x7u) | ((x >> 4) & 0x70u) | ((x >> 8) & 0x700u) | ((x >> 12) & 0x7000u);
  const uint32_t mag = __byte_perm(0x03020100u, 0x0c080604u, sel);  // {0,1,2,3,4,6,8,12}
  const uint32_t mask = ((w >> 3) & 0x01010101u) * 0xffu;
  return __vsub4(mag ^ mask, mask);  // per byte: mask ? -mag : mag
}

template <int MODE, bool UA>  // UA: unsigned activations (0..15), INT4 modes only
__global__ void __launch_bounds__(kThreads, 1) w4a4Kernel(W4A4GemmArgs p) {
  constexpr int SG = MODE == kFp4S8 ? 8 : 2;
  using St = Stage<SG>;
  extern __shared__ __align__(128) uint8_t smem[];
  St* stages = reinterpret_cast<St*>(smem);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 2, wn = warp & 3;
  const int64_t m0 = int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN;
  const int gsize = MODE == kFp4S8 ? 16 : 64;
  const int G = static_cast<int>(p.Kp / gsize);
  const int KT = static_cast<int>((p.Kp / 2 + BKB - 1) / BKB);

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < KT) loadStage(stages[s], p, m0, n0, s, G);
    cpAsyncCommit();
  }

  for (int kt = 0; kt < KT; ++kt) {
    cpAsyncWait<kStages - 2>();
    __syncthreads();
    {
      const int nk = kt + kStages - 1;
      if (nk < KT) loadStage(stages[nk % kStages], p, m0, n0, nk, G);
      cpAsyncCommit();
    }
    const St& st = stages[kt % kStages];
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {  // two 64-nibble sub-steps per stage
      if (MODE != kFp4S8 && kt * 2 + kk >= G) break;
      uint32_t bfr[4][2];
#pragma unroll
      for (int pr = 0; pr < 2; ++pr) {
        uint32_t r[4];
        ldmatrixX4(r, &st.b[swz(wn * 32 + pr * 16 + (lane & 7) + (lane >> 4) * 8, 2 * kk + ((lane >> 3) & 1))]);
        bfr[2 * pr][0] = r[0], bfr[2 * pr][1] = r[1], bfr[2 * pr + 1][0] = r[2], bfr[2 * pr + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        uint32_t afr[4];
        ldmatrixX4(afr, &st.a[swz(wm * 64 + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, 2 * kk + (lane >> 4))]);
        const int rl = wm * 64 + mi * 16 + (lane >> 2);  // this lane's rows rl, rl + 8 within the tile
        if constexpr (MODE == kFp4S8) {
#pragma unroll
          for (int gj = 0; gj < 4; ++gj) {  // four groups of 16 in this sub-step
            const int g = (kt * 2 + kk) * 4 + gj;
            if (g >= G) break;
            // group gj sits in words (lane%4)/2 == gj%2 of chunk gj/2: other lanes feed zeros
            const bool mine = ((lane & 3) >> 1) == (gj & 1);
            const uint32_t wa0 = gj < 2 ? afr[0] : afr[2], wa1 = gj < 2 ? afr[1] : afr[3];
            const float as0 = st.as[(kk * 4 + gj) * BM + rl], as1 = st.as[(kk * 4 + gj) * BM + rl + 8];
            const uint32_t a0 = mine ? e2m1EvenToS8(wa0) : 0u, a1 = mine ? e2m1EvenToS8(wa1) : 0u;
            const uint32_t a2 = mine ? e2m1EvenToS8(wa0 >> 4) : 0u, a3 = mine ? e2m1EvenToS8(wa1 >> 4) : 0u;
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
              const uint32_t wb = gj < 2 ? bfr[ni][0] : bfr[ni][1];
              int c[4] = {0, 0, 0, 0};
              mmaS8(c, a0, a1, a2, a3, mine ? e2m1EvenToS8(wb) : 0u, mine ? e2m1EvenToS8(wb >> 4) : 0u);
              const int cl = wn * 32 + ni * 8 + (lane & 3) * 2;
              const float ws0 = st.ws[(kk * 4 + gj) * BN + cl], ws1 = st.ws[(kk * 4 + gj) * BN + cl + 1];
              // d = c / 4 exactly; acc += d * (gsa * gsw) like gemmW4A4Nvfp4
              acc[mi][ni][0] = __fadd_rn(acc[mi][ni][0], __fmul_rn(__int2float_rn(c[0]) * 0.25f, __fmul_rn(as0, ws0)));
              acc[mi][ni][1] = __fadd_rn(acc[mi][ni][1], __fmul_rn(__int2float_rn(c[1]) * 0.25f, __fmul_rn(as0, ws1)));
              acc[mi][ni][2] = __fadd_rn(acc[mi][ni][2], __fmul_rn(__int2float_rn(c[2]) * 0.25f, __fmul_rn(as1, ws0)));
              acc[mi][ni][3] = __fadd_rn(acc[mi][ni][3], __fmul_rn(__int2float_rn(c[3]) * 0.25f, __fmul_rn(as1, ws1)));
            }
          }
        } else {
          int c[4][4];
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) c[ni][0] = c[ni][1] = c[ni][2] = c[ni][3] = 0;
          if constexpr (MODE == kInt4S4) {
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
              if constexpr (UA) mmaU4S4(c[ni], afr, bfr[ni][0], bfr[ni][1]);
              else mmaS4(c[ni], afr, bfr[ni][0], bfr[ni][1]);
            }
          } else {
            auto ev = [](uint32_t w) { return UA ? u4EvenToS8(w) : s4EvenToS8(w); };
            auto od = [](uint32_t w) { return UA ? u4OddToS8(w) : s4OddToS8(w); };
            const uint32_t e0 = ev(afr[0]), e1 = ev(afr[1]), e2 = ev(afr[2]), e3 = ev(afr[3]);
            const uint32_t o0 = od(afr[0]), o1 = od(afr[1]), o2 = od(afr[2]), o3 = od(afr[3]);
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
              mmaS8(c[ni], e0, e1, e2, e3, s4EvenToS8(bfr[ni][0]), s4EvenToS8(bfr[ni][1]));
              mmaS8(c[ni], o0, o1, o2, o3, s4OddToS8(bfr[ni][0]), s4OddToS8(bfr[ni][1]));
            }
          }
          constexpr float kMagic = 12582912.f;  // 1.5 * 2^23: bits 0x4b400000
          const float as0 = st.as[kk * BM + rl], as1 = st.as[kk * BM + rl + 8];
          const float nm0 = -kMagic * as0, nm1 = -kMagic * as1;  // exact: as is a BF16 value
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) {
            const int cl = wn * 32 + ni * 8 + (lane & 3) * 2;
            const float ws0 = st.ws[kk * BN + cl], ws1 = st.ws[kk * BN + cl + 1];
            acc[mi][ni][0] = __fadd_rn(acc[mi][ni][0], __fmul_rn(__fmaf_rn(__int_as_float(0x4b400000 + c[ni][0]), as0, nm0), ws0));
            acc[mi][ni][1] = __fadd_rn(acc[mi][ni][1], __fmul_rn(__fmaf_rn(__int_as_float(0x4b400000 + c[ni][1]), as0, nm0), ws1));
            acc[mi][ni][2] = __fadd_rn(acc[mi][ni][2], __fmul_rn(__fmaf_rn(__int_as_float(0x4b400000 + c[ni][2]), as1, nm1), ws0));
            acc[mi][ni][3] = __fadd_rn(acc[mi][ni][3], __fmul_rn(__fmaf_rn(__int_as_float(0x4b400000 + c[ni][3]), as1, nm1), ws1));
          }
        }
      }
    }
  }
  cpAsyncWait<0>();
  __syncthreads();  // the pipeline's shared memory is reused by the low-rank epilogue

  // ---- epilogue ----
  if constexpr (MODE == kFp4S8) {  // per-token and per-tensor scales: acc * ats[m] * wts
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t gm = m0 + wm * 64 + mi * 16 + (lane >> 2) + h * 8;
        const float ts = p.tensorScale[gm];
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int e = 0; e < 2; ++e) acc[mi][ni][h * 2 + e] = __fmul_rn(__fmul_rn(acc[mi][ni][h * 2 + e], ts), p.wtscale);
      }
  }
  if (p.bias) {
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int64_t gn = n0 + wn * 32 + ni * 8 + (lane & 3) * 2;
      const float b0 = p.bias[gn], b1 = p.bias[gn + 1];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        acc[mi][ni][0] = __fadd_rn(acc[mi][ni][0], b0), acc[mi][ni][1] = __fadd_rn(acc[mi][ni][1], b1);
        acc[mi][ni][2] = __fadd_rn(acc[mi][ni][2], b0), acc[mi][ni][3] = __fadd_rn(acc[mi][ni][3], b1);
      }
    }
  }
  if (p.loraAct) {  // low-rank up-projection, 32 ranks at a time through shared memory (F32 FMAs)
    constexpr int RC = 32, LD = RC + 1;  // +1: rows of one warp fall in different banks
    float* la = reinterpret_cast<float*>(smem);
    float* lu = la + BM * LD;
    for (int rc = 0; rc < p.rankPadded; rc += RC) {
      const int width = min(RC, p.rankPadded - rc);  // 16 or 32
      for (int i = threadIdx.x; i < BM * RC; i += kThreads) {
        const int r = i / RC, j = i % RC;
        la[r * LD + j] = j < width ? p.loraAct[(m0 + r) * p.rankPadded + rc + j] : 0.f;
        lu[r * LD + j] = j < width ? p.loraUp[(n0 + r) * p.rankPadded + rc + j] : 0.f;
      }
      __syncthreads();
      for (int j = 0; j < width; ++j) {
        float av[4][2], uv[4][2];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h) av[mi][h] = la[(wm * 64 + mi * 16 + (lane >> 2) + h * 8) * LD + j];
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int e = 0; e < 2; ++e) uv[ni][e] = lu[(wn * 32 + ni * 8 + (lane & 3) * 2 + e) * LD + j];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = fmaf(av[mi][e >> 1], uv[ni][e & 1], acc[mi][ni][e]);
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t gm = m0 + wm * 64 + mi * 16 + (lane >> 2) + h * 8;
      if (gm >= p.M) continue;
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int64_t gn = n0 + wn * 32 + ni * 8 + (lane & 3) * 2;
        if (gn >= p.N) continue;
        float y0 = acc[mi][ni][h * 2], y1 = acc[mi][ni][h * 2 + 1];
        if (p.act == Activation::GeluTanh) y0 = geluTanh(y0), y1 = geluTanh(y1);
        if (p.residual) {
          float g0 = 1.f, g1 = 1.f;
          if (p.gate) {
            const uint32_t gp = *reinterpret_cast<const uint32_t*>(&p.gate[(gm / p.gateRows) * p.N + gn]);
            g0 = bf16BitsToF32(gp & 0xffff), g1 = bf16BitsToF32(gp >> 16);
          }
          const uint32_t rp = *reinterpret_cast<const uint32_t*>(&p.residual[gm * p.N + gn]);
          y0 = fmaf(g0, y0, bf16BitsToF32(rp & 0xffff));
          y1 = fmaf(g1, y1, bf16BitsToF32(rp >> 16));
        }
        if (p.outF32) {
          *reinterpret_cast<float2*>(&p.outF32[gm * p.N + gn]) = make_float2(y0, y1);
        } else {
          *reinterpret_cast<uint32_t*>(&p.out[gm * p.N + gn]) = uint32_t(f32ToBf16Bits(y0)) | (uint32_t(f32ToBf16Bits(y1)) << 16);
        }
      }
    }
}

template <int MODE, bool UA>
void launch(const W4A4GemmArgs& p, cudaStream_t stream, const char* name) {
  constexpr int SG = MODE == kFp4S8 ? 8 : 2;
  const size_t smem = sizeof(Stage<SG>) * kStages;
  static_assert(sizeof(Stage<SG>) * kStages >= 2 * BM * 33 * sizeof(float), "epilogue reuses the pipeline smem");
  static bool configured = false;  // once per instantiation (one device per process)
  if (!configured) {
    check(cudaFuncSetAttribute(w4a4Kernel<MODE, UA>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)), name);
    configured = true;
  }
  const dim3 grid(static_cast<unsigned>(p.Np / BN), static_cast<unsigned>(p.Mp / BM));
  w4a4Kernel<MODE, UA><<<grid, kThreads, smem, stream>>>(p);
  checkLaunch(name);
}

}  // namespace

void gemmW4A4(const W4A4GemmArgs& p, void* stream) {
  const char* name = p.precision == QuantPrecision::Nvfp4 ? "gemmW4A4(nvfp4)" : "gemmW4A4(int4)";
  auto bad = [&](const std::string& why) { throw Error(std::string(name) + ": " + why); };
  if (p.M < 0 || p.N < 2 || p.N % 2 || p.Kp < 64 || p.Kp % 64)
    bad("bad shape M=" + std::to_string(p.M) + " N=" + std::to_string(p.N) + " Kp=" + std::to_string(p.Kp) +
        " (N even, Kp a positive multiple of 64)");
  if (p.Mp != roundUp(std::max<int64_t>(p.M, 1), BM) || p.Np != roundUp(p.N, BN))
    bad("padded sizes Mp=" + std::to_string(p.Mp) + " Np=" + std::to_string(p.Np) + " are not M, N rounded up to 128");
  if (!p.qact || !p.ascales || !p.qweight || !p.wscales || (!p.out && !p.outF32)) bad("null buffer");
  if (p.precision == QuantPrecision::Nvfp4 && !p.tensorScale) bad("null tensorScale");
  if (p.loraAct && (!p.loraUp || p.rankPadded < 16 || p.rankPadded % 16)) bad("low-rank branch needs lora_up and a rank padded to 16");
  if (p.gate && !p.residual) bad("a gate needs a residual");
  if (p.gate && p.gateRows < 1) bad("gateRows must be >= 1");
  if (p.M == 0) return;
  cudaStream_t s = asStream(stream);
  if (p.precision == QuantPrecision::Nvfp4) {
    if (p.actUnsigned) bad("unsigned activations are INT4 only");
    return launch<kFp4S8, false>(p, s, name);
  }
  static const int cc = computeCapability();  // one device per process (the sidecar drives one GPU)
  MmaPath path = p.path;
  if (path == MmaPath::Auto) path = cc >= 90 ? MmaPath::S8 : MmaPath::S4;
  if (path == MmaPath::S8) {
    if (p.actUnsigned) launch<kInt4S8, true>(p, s, "gemmW4A4(int4 unsigned act, s8 mma)");
    else launch<kInt4S8, false>(p, s, "gemmW4A4(int4, s8 mma)");
  } else {
    if (p.actUnsigned) launch<kInt4S4, true>(p, s, "gemmW4A4(int4 unsigned act, u4 mma)");
    else launch<kInt4S4, false>(p, s, "gemmW4A4(int4, s4 mma)");
  }
}

}  // namespace svdq::cuda
