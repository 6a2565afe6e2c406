// Device layers: repacks a CPU layer (svdq/quant.h, the checkpoint's logical order) into the device
// layouts of svdq/cuda_ops.h at upload time, and runs the fused W4A4 forward (quantize kernel + GEMM).
// Host code only; it uses no svdq_core symbol (svdq_cuda is linked below svdq_core).
#include <cmath>
#include <cstring>
#include <vector>

#include "common.cuh"
#include "svdq/cuda_ops.h"

namespace svdq::cuda {
namespace {

uint16_t bf16Bits(float v) {  // round to nearest even (finite inputs; the CPU loader rejects non-finite)
  uint32_t b;
  std::memcpy(&b, &v, 4);
  b += 0x7fffu + ((b >> 16) & 1u);
  return static_cast<uint16_t>(b >> 16);
}
float e4m3Value(uint8_t v) {
  const int e = (v >> 3) & 0xf, m = v & 7;
  const float r = e == 0 ? std::ldexp(m / 8.f, -6) : std::ldexp(1.f + m / 8.f, e - 7);
  return (v & 0x80) ? -r : r;
}
template <class T>
DeviceBuffer uploadVec(const std::vector<T>& v) {
  DeviceBuffer b(v.size() * sizeof(T));
  b.upload(v.data(), v.size() * sizeof(T));
  return b;
}

}  // namespace

std::unique_ptr<DeviceW4A4> uploadW4A4(const W4A4Weights& w) {
  auto L = std::make_unique<DeviceW4A4>();
  const bool fp4 = w.precision == QuantPrecision::Nvfp4;
  const int64_t g = fp4 ? 16 : 64;
  const int64_t N = w.out, K = w.in, KpCpu = w.inPadded, Kp = roundUp(K, 64), Np = roundUp(N, kTileN);
  const int64_t r = w.rank(), Rp = r ? roundUp(r, 16) : 0;
  if (K % 8) throw Error("uploadW4A4: in-features " + std::to_string(K) + " must be a multiple of 8 on the GPU");
  if (Rp > kMaxRank) throw Error("uploadW4A4: rank " + std::to_string(r) + " exceeds the GPU limit " + std::to_string(kMaxRank));
  if (static_cast<int64_t>(w.qweight.size()) != N * KpCpu / 2) throw Error("uploadW4A4: qweight holds " + std::to_string(w.qweight.size()) + " bytes, expected [" + std::to_string(N) + ", " + std::to_string(KpCpu / 2) + "]");
  L->precision = w.precision, L->in = K, L->inPadded = Kp, L->out = N, L->outPadded = Np, L->rank = r, L->rankPadded = Rp;
  L->actShift = w.actShift, L->wtscale = w.wtscale, L->hasBias = !w.bias.empty();

  std::vector<uint8_t> q(static_cast<size_t>(Np * Kp / 2), 0);  // zero rows past N, zero nibbles past Kp_cpu
  for (int64_t n = 0; n < N; ++n) std::memcpy(&q[n * Kp / 2], &w.qweight[n * KpCpu / 2], KpCpu / 2);
  L->qweight = uploadVec(q);

  const int64_t Gc = KpCpu / g, Gd = Kp / g;  // groups: CPU (per row) and device (group-major)
  std::vector<float> s(static_cast<size_t>(Gd * Np), 0.f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < Gc; ++j) s[j * Np + n] = fp4 ? e4m3Value(w.wscales8[n * Gc + j]) : w.wscales[n * Gc + j];
  L->wscales = uploadVec(s);

  std::vector<float> sm(static_cast<size_t>(Kp), 1.f);
  std::copy(w.smooth.begin(), w.smooth.end(), sm.begin());
  L->smooth = uploadVec(sm);
  if (r) {
    std::vector<uint16_t> ld(static_cast<size_t>(Rp * Kp), 0);
    for (int64_t i = 0; i < r; ++i)
      for (int64_t k = 0; k < K; ++k) ld[i * Kp + k] = bf16Bits(w.loraDown.data[i * K + k]);
    L->loraDown = uploadVec(ld);
    std::vector<float> lu(static_cast<size_t>(Np * Rp), 0.f);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < r; ++i) lu[n * Rp + i] = w.loraUp.data[n * r + i];
    L->loraUp = uploadVec(lu);
  }
  if (L->hasBias) {
    std::vector<float> b(static_cast<size_t>(Np), 0.f);
    std::copy(w.bias.begin(), w.bias.end(), b.begin());
    L->bias = uploadVec(b);
  }
  return L;
}

std::unique_ptr<DeviceW4A16> uploadW4A16(const W4A16Weights& w) {
  auto L = std::make_unique<DeviceW4A16>();
  L->in = w.in, L->out = w.out, L->hasBias = !w.bias.empty();
  if (w.in % 64) throw Error("uploadW4A16: in-features " + std::to_string(w.in) + " must be a multiple of 64");
  L->qweight = uploadVec(w.qweight);  // the CPU order [N, K/2] is the kernel's
  L->wscales = uploadVec(w.wscales);  // [N, K/64]
  L->wzeros = uploadVec(w.wzeros);
  if (L->hasBias) L->bias = uploadVec(w.bias);
  return L;
}

void W4A4Workspace::reserve(const DeviceW4A4& L, int64_t M) {
  const int64_t Mp = roundUp(std::max<int64_t>(M, 1), kTileM);
  const int64_t g = L.precision == QuantPrecision::Nvfp4 ? 16 : 64;
  auto grow = [](DeviceBuffer& b, size_t bytes) {
    if (b.bytes() < bytes) b = DeviceBuffer(bytes);
  };
  grow(qact, static_cast<size_t>(Mp * L.inPadded / 2));
  grow(ascales, static_cast<size_t>(L.inPadded / g * Mp) * 4);
  grow(tensorScale, static_cast<size_t>(Mp) * 4);
  grow(loraAct, static_cast<size_t>(Mp * std::max<int64_t>(L.rankPadded, 1)) * 4);
}

void forwardW4A4(const DeviceW4A4& L, const uint16_t* x, int64_t M, W4A4Workspace& ws, uint16_t* out, float* outF32,
                 Activation act, const uint16_t* residual, const uint16_t* gate, int64_t gateRows, MmaPath path,
                 void* stream) {
  ws.reserve(L, M);
  const int64_t Mp = roundUp(std::max<int64_t>(M, 1), kTileM);
  ActQuantArgs q;
  q.x = x, q.M = M, q.K = L.in, q.Kp = L.inPadded, q.Mp = Mp;
  q.smooth = L.smooth.as<float>(), q.shift = L.actShift, q.isUnsigned = L.actShift > 0.f;
  q.loraDown = L.rank ? L.loraDown.as<uint16_t>() : nullptr, q.rankPadded = static_cast<int>(L.rankPadded);
  q.qact = ws.qact.as<uint8_t>(), q.ascales = ws.ascales.as<float>(), q.tensorScale = ws.tensorScale.as<float>();
  q.loraAct = ws.loraAct.as<float>();
  if (L.precision == QuantPrecision::Nvfp4) quantizeActNvfp4(q, stream);
  else quantizeActInt4(q, stream);

  W4A4GemmArgs g;
  g.precision = L.precision;
  g.qact = q.qact, g.ascales = q.ascales, g.tensorScale = q.tensorScale;
  g.qweight = L.qweight.as<uint8_t>(), g.wscales = L.wscales.as<float>(), g.wtscale = L.wtscale;
  g.M = M, g.N = L.out, g.Kp = L.inPadded, g.Mp = Mp, g.Np = L.outPadded;
  g.actUnsigned = q.isUnsigned;
  g.bias = L.hasBias ? L.bias.as<float>() : nullptr;
  g.loraAct = L.rank ? q.loraAct : nullptr, g.loraUp = L.rank ? L.loraUp.as<float>() : nullptr;
  g.rankPadded = static_cast<int>(L.rankPadded);
  g.act = act, g.residual = residual, g.gate = gate, g.gateRows = gateRows;
  g.out = out, g.outF32 = outF32, g.path = path;
  gemmW4A4(g, stream);
}

}  // namespace svdq::cuda
