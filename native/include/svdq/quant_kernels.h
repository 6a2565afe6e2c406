// SVDQuant numeric primitives on the CPU: 4-bit quantize/dequantize (INT4 per group of 64, NVFP4 per
// group of 16), nibble packing, the group-wise W4A4 GEMM, and top-r SVD. These are exactly the
// arithmetic the CUDA kernels perform (integer products exact, scales applied per group, F32
// accumulation), so the GPU backend can be checked against them bit for bit where it matters.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace svdq::quant {

constexpr int kInt4Group = 64;   // INT4: one 16-bit scale per 64 input channels
constexpr int kFp4Group = 16;    // NVFP4: one FP8 E4M3 scale per 16 input channels
constexpr float kGeluShift = 0.171875f;  // GELU(x) >= -0.170; shifted it is >= 0 and fits unsigned 4-bit

// Round to BF16 and back (round-to-nearest-even): the precision scales and 16-bit factors are kept in.
float roundBf16(float v);
// FP8 E4M3 (bias 7, max 448, no inf) round-trip and codec, saturating.
uint8_t encodeE4m3(float v);
float decodeE4m3(uint8_t v);

// --- INT4, groups of 64 along the row (cols must be a multiple of 64) ---
// Signed: scale = bf16(amax/7), q = rint_even(v/scale) clamped to [-8, 7]; an all-zero group has scale 0, q 0.
// Unsigned (inputs already shifted to >= 0): scale = bf16(max/15), q in [0, 15] (negatives clamp to 0).
// q: [rows, cols] one value per int8; scales: [rows, cols/64].
void quantizeInt4(const float* x, int64_t rows, int64_t cols, int8_t* q, float* scales, bool isUnsigned = false);
// The two halves of that grid, for quantizers that fix a group's scale first and round later (GPTQ).
float int4Scale(float amax, bool isUnsigned = false);                 // bf16(amax / qmax)
// 0 when scale is 0. Inline so the per-element loops vectorise (an out-of-line call was 10% of quantizing).
inline int8_t int4Code(float v, float scale, bool isUnsigned = false) {
  if (!(scale > 0.f)) return 0;  // all-zero group (or NaN amax: zeros; callers check finiteness)
  return static_cast<int8_t>(std::clamp(std::nearbyint(v / scale), isUnsigned ? 0.f : -8.f, isUnsigned ? 15.f : 7.f));
}
void dequantizeInt4(const int8_t* q, const float* scales, int64_t rows, int64_t cols, float* out);

// --- NVFP4: E2M1 values {0,.5,1,1.5,2,3,4,6} x sign, groups of 16 with E4M3 scales and one F32 scale ---
// Code layout: bit 3 sign, bits 0..2 index into the E2M1 magnitudes. Rounding: nearest, ties to even code.
uint8_t encodeE2m1(float v);
float decodeE2m1(uint8_t code);
// The F32 "tensor" scale that makes the largest group scale land on E4M3's max: amax / (6 * 448).
float nvfp4TensorScale(const float* x, int64_t n);
// gscale[g] = e4m3(amax_g / 6 / tensorScale); code = e2m1(v / (decode(gscale) * tensorScale)).
// codes: [rows, cols] one code per byte; gscales: [rows, cols/16] E4M3 bytes.
void quantizeNvfp4(const float* x, int64_t rows, int64_t cols, float tensorScale, uint8_t* codes, uint8_t* gscales);
// The two halves of that grid: the E4M3 group scale of a group with max |v| = amax, and one value's
// code under it (0 when the decoded scale is 0).
uint8_t nvfp4GroupScale(float amax, float tensorScale);
uint8_t nvfp4Code(float v, uint8_t gscale, float tensorScale);
void dequantizeNvfp4(const uint8_t* codes, const uint8_t* gscales, float tensorScale, int64_t rows, int64_t cols,
                     float* out);

// --- Packing: two 4-bit values per byte, the even index in the low nibble (two's complement for signed) ---
void packNibbles(const int8_t* q, int64_t n, uint8_t* out);                        // n even
void unpackNibbles(const uint8_t* in, int64_t n, int8_t* q, bool isSigned);        // n values out

// --- Group-wise W4A4 GEMMs: y[m, n] = sum_g dot_int(qa[m, g], qw[n, g]) * ascale[m, g] * wscale[n, g] ---
// INT4: exact int32 dot per group of 64, then the two scales, F32 accumulation across groups.
void gemmW4A4Int4(const int8_t* qa, const float* ascale, int64_t M, const int8_t* qw, const float* wscale, int64_t N,
                  int64_t K, float* y);
// NVFP4: per group of 16 the dot of E2M1 values (exact in F32), times the decoded group scales and the
// two tensor scales (activation scale per row: ascaleT[m]).
void gemmW4A4Nvfp4(const uint8_t* ca, const uint8_t* gsa, const float* ascaleT, int64_t M, const uint8_t* cw,
                   const uint8_t* gsw, float wscaleT, int64_t N, int64_t K, float* y);

// --- Top-r SVD of a row-major [m, n] matrix: A ~ U diag(S) Vt, U [m, r], S [r], Vt [r, n] ---
// exact: LAPACKE_sgesdd on the whole matrix; randomized: Halko et al. with `powerIters` power
// iterations (QR re-orthonormalised each time) and oversampling, on cblas_sgemm — the one to use for
// big layers. Signs are LAPACK's for exact; callers compare up to sign.
struct Svd {
  std::vector<float> U, S, Vt;
  int64_t m = 0, n = 0, r = 0;
};
Svd svdExact(const float* A, int64_t m, int64_t n, int64_t r);
// `start` [startRows, n], optional: rows whose span seeds the range finder in place of random directions
// (warm start from a nearby matrix's Vt; then fewer power iterations reach the same accuracy).
Svd svdRandomized(const float* A, int64_t m, int64_t n, int64_t r, int powerIters = 4, int oversample = 16,
                  uint64_t seed = 1234, const float* start = nullptr, int64_t startRows = 0);
// Picks randomized for large matrices, exact otherwise.
Svd svdTopR(const float* A, int64_t m, int64_t n, int64_t r, int powerIters = 4, const float* start = nullptr,
            int64_t startRows = 0);

}  // namespace svdq::quant
