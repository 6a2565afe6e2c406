// Host API of the CUDA backend (cuda/*.cu). Plain C++: callers (the binding, the engine) include
// no CUDA header. Device pointers are raw; 16-bit floats travel as uint16_t BF16 bit patterns.
// Every function checks its CUDA calls and throws svdq::Error naming the kernel on failure.
// Built only with SVDQ_WITH_CUDA (native/CMakeLists.txt); callers guard on that macro.
//
// Device layouts (the GEMM tiles are 128 x 128, so row counts are padded to 128):
//   activations       BF16 [M, K] row-major, K % 8 == 0 (16-byte rows for cp.async)
//   quantized acts    U8 [Mp, Kp/2] nibbles, low nibble = even k (INT4 two's complement; NVFP4 E2M1 codes)
//   act scales        F32 [Kp/g, Mp] group-major (one contiguous run per k-tile); NVFP4: decoded E4M3
//                     values, plus a per-row F32 tensor scale [Mp]
//   weights           U8 [Np, Kp/2] (the checkpoint's own order, rows padded with zeros to Np)
//   weight scales     F32 [Kp/g, Np]
//   lora_down         BF16 [Rp, Kp] (zero rows/columns pad the rank to 16 and K to Kp)
//   lora_up           F32 [Np, Rp]; lora activations F32 [Mp, Rp]
// Mp = roundUp(M, 128), Np = roundUp(N, 128), Kp = roundUp(K, 64) (both formats: the kernels walk K
// in 64s; NVFP4 groups past the checkpoint's roundUp(K, 16) are zero), Rp = roundUp(rank, 16).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "svdq/quant.h"

namespace svdq::cuda {

constexpr int kTileM = 128, kTileN = 128;
constexpr int kMaxRank = 256;  // padded low-rank width the fused kernels accept (r + LoRA ranks)
inline int64_t roundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

bool available();            // a CUDA device is present and usable
std::string deviceName();    // "" when none
int computeCapability();     // major * 10 + minor, 0 when none
bool hasCublasLt();          // built with cuBLASLt (SVDQ_WITH_CUBLASLT)
void synchronize(const char* what);  // cudaDeviceSynchronize; errors name `what`

// Device memory owned by its holder.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;
  void fill(uint8_t byte);  // memset: tests poison outputs with 0xff (BF16/F32 NaN) before a run

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Bench helpers: deterministic pseudo-random fills on the device (no host transfer).
void fillUniformBf16(uint16_t* p, size_t n, float lo, float hi, uint64_t seed);
void fillUniformF32(float* p, size_t n, float lo, float hi, uint64_t seed);
void fillRandomBytes(uint8_t* p, size_t n, uint64_t seed);
// Mean milliseconds per call of `launch` over `iters` calls after `warmup`, timed with CUDA events.
double timeMs(const std::function<void()>& launch, int warmup, int iters);

// ---- (1) fused activation quantization + low-rank down-projection ----
struct ActQuantArgs {
  const uint16_t* x = nullptr;   // BF16 [M, K]
  int64_t M = 0, K = 0, Kp = 0, Mp = 0;
  const float* smooth = nullptr; // [Kp] (entries past K ignored)
  float shift = 0.f;             // quantize (x + shift) / smooth
  bool isUnsigned = false;       // INT4 only: scale = max/15, q in [0, 15]
  const uint16_t* loraDown = nullptr;  // BF16 [Rp, Kp], acts on the raw x; null: no branch
  int rankPadded = 0;
  uint8_t* qact = nullptr;       // [Mp, Kp/2]
  float* ascales = nullptr;      // [Kp/g, Mp]
  float* tensorScale = nullptr;  // NVFP4 only: [Mp]
  float* loraAct = nullptr;      // [Mp, Rp]
};
void quantizeActInt4(const ActQuantArgs& a, void* stream = nullptr);   // g = 64
void quantizeActNvfp4(const ActQuantArgs& a, void* stream = nullptr);  // g = 16

// ---- (2) W4A4 GEMM with the fused epilogue ----
enum class MmaPath { Auto, S4, S8 };  // Auto: S8 (INT4 unpacked to INT8 in registers) on sm_90+, S4 below
enum class Activation { None, GeluTanh };
struct W4A4GemmArgs {
  QuantPrecision precision = QuantPrecision::Int4;
  const uint8_t* qact = nullptr;  const float* ascales = nullptr;  const float* tensorScale = nullptr;
  const uint8_t* qweight = nullptr; const float* wscales = nullptr; float wtscale = 1.f;
  int64_t M = 0, N = 0, Kp = 0, Mp = 0, Np = 0;
  bool actUnsigned = false;        // INT4 activations are unsigned nibbles 0..15 (act_shift layers)
  // epilogue, in this order: + bias, + loraAct . loraUp^T, activation, residual + gate * y
  const float* bias = nullptr;     // [Np] or null
  const float* loraAct = nullptr;  // [Mp, Rp] or null
  const float* loraUp = nullptr;   // [Np, Rp]
  int rankPadded = 0;
  Activation act = Activation::None;
  const uint16_t* residual = nullptr;  // BF16 [M, N] or null (may equal out)
  const uint16_t* gate = nullptr;      // BF16 [M / gateRows, N] or null (then gate = 1)
  int64_t gateRows = 1;                // rows sharing one gate row (tokens per image)
  uint16_t* out = nullptr;             // BF16 [M, N], or
  float* outF32 = nullptr;             // F32 [M, N] (tests: the pre-rounding values)
  MmaPath path = MmaPath::Auto;
};
void gemmW4A4(const W4A4GemmArgs& a, void* stream = nullptr);

// ---- (3) W4A16 GEMV/GEMM (adaLN modulation): y = x . (q * s + z)^T + bias ----
struct W4A16Args {
  const uint16_t* x = nullptr;      // BF16 [M, K], K % 64 == 0
  const uint8_t* qweight = nullptr; // U8 [N, K/2] unsigned nibbles
  const float* wscales = nullptr;   // [N, K/64]
  const float* wzeros = nullptr;    // [N, K/64]
  const float* bias = nullptr;      // [N] or null
  int64_t M = 0, N = 0, K = 0;
  uint16_t* out = nullptr;          // BF16 [M, N], or
  float* outF32 = nullptr;
};
void gemvW4A16(const W4A16Args& a, void* stream = nullptr);

// ---- (4) BF16 GEMM through cuBLASLt: y = alpha x . w^T + beta y (throws when built without it) ----
void gemmBf16(const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t M, int64_t N, int64_t K, float alpha = 1.f,
              float beta = 0.f, void* stream = nullptr);

// ---- Layers: repack a CPU layer (svdq/quant.h) into the device layouts above and run it ----
struct DeviceW4A4 {
  QuantPrecision precision = QuantPrecision::Int4;
  int64_t in = 0, inPadded = 0, out = 0, outPadded = 0, rank = 0, rankPadded = 0;
  float actShift = 0.f, wtscale = 1.f;
  bool hasBias = false;
  DeviceBuffer qweight, wscales, smooth, loraDown, loraUp, bias;
};
std::unique_ptr<DeviceW4A4> uploadW4A4(const W4A4Weights& w);  // LoRAs attached to the layer are not included
struct DeviceW4A16 {
  int64_t in = 0, out = 0;
  bool hasBias = false;
  DeviceBuffer qweight, wscales, wzeros, bias;
};
std::unique_ptr<DeviceW4A16> uploadW4A16(const W4A16Weights& w);

// Scratch for one W4A4 forward (grown on demand).
struct W4A4Workspace {
  DeviceBuffer qact, ascales, tensorScale, loraAct;
  void reserve(const DeviceW4A4& L, int64_t M);
};
// y = layer(x): the fused quantize kernel, then the fused GEMM. x BF16 [M, in]; y as in W4A4GemmArgs.
void forwardW4A4(const DeviceW4A4& L, const uint16_t* x, int64_t M, W4A4Workspace& ws, uint16_t* out, float* outF32,
                 Activation act = Activation::None, const uint16_t* residual = nullptr, const uint16_t* gate = nullptr,
                 int64_t gateRows = 1, MmaPath path = MmaPath::Auto, void* stream = nullptr);

}  // namespace svdq::cuda
