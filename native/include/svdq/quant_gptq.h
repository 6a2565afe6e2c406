// GPTQ (Frantar et al. 2022): quantize a weight column by column and spread each column's rounding
// error over the columns not yet quantized through the inverse Hessian H = XᵀX of the layer's inputs,
// so that the output error ‖X(W − Q)ᵀ‖ is small rather than ‖W − Q‖. SVDQuant uses it (`--gptq`) for
// the 4-bit residual, on exactly the grid the runtime uses: a group's scale is fixed from its
// error-updated weights when the group starts, with the same rules as quantizeInt4 / quantizeNvfp4.
#pragma once
#include <cstdint>
#include <vector>

namespace svdq::quant {

constexpr int kGptqBlock = 128;  // columns per lazy batch update (a multiple of both group sizes)

// Upper Cholesky factor U of the damped inverse Hessian (H + d·I)⁻¹ = UᵀU, H = XᵀX for the rows X
// [S, K] the quantized weight will multiply, d = percdamp · mean of H's non-zero diagonal; computed in
// double (LAPACKE dpotrf/dpotri). Columns the sample never excites (diagonal 0) get an isolated
// diagonal, so they round to nearest and exchange no error with the others. F32 [K, K] row-major,
// lower triangle zero. Throws svdq::Error if the damped H is not positive definite.
std::vector<float> gptqInverseHessianFactor(const float* X, int64_t S, int64_t K, double percdamp);

// GPTQ-quantize W [N, K] (row-major; overwritten with the error-updated weights) given U from
// gptqInverseHessianFactor. Outputs are laid out exactly as quantizeInt4's (signed, groups of 64) and
// quantizeNvfp4's (groups of 16, E4M3 group scales under `tensorScale`).
void gptqInt4(float* W, int64_t N, int64_t K, const std::vector<float>& U, int8_t* q, float* scales);
void gptqNvfp4(float* W, int64_t N, int64_t K, const std::vector<float>& U, float tensorScale, uint8_t* codes,
               uint8_t* gscales);

}  // namespace svdq::quant
