// GPTQ on the runtime's 4-bit grids (see svdq/quant_gptq.h).
#include <algorithm>
#include <cmath>
#include <string>

#include "svdq/blas.h"
#include "svdq/quant_gptq.h"
#include "svdq/quant_kernels.h"
#include "svdq/tensor.h"

namespace svdq::quant {

std::vector<float> gptqInverseHessianFactor(const float* X, int64_t S, int64_t K, double percdamp) {
  std::vector<double> Xd(X, X + S * K), H(static_cast<size_t>(K * K), 0.0);
  blas::dsyrk(CblasRowMajor, CblasUpper, CblasTrans, K, S, 1.0, Xd.data(), K, 0.0, H.data(), K);
  double sum = 0;
  int64_t live = 0;
  for (int64_t k = 0; k < K; ++k)
    if (H[k * K + k] > 0) sum += H[k * K + k], ++live;
  std::vector<float> U(static_cast<size_t>(K * K), 0.f);
  if (live == 0) {  // nothing excited: every column is dead, GPTQ is round-to-nearest
    for (int64_t k = 0; k < K; ++k) U[k * K + k] = 1.f;
    return U;
  }
  // The damping is relative to the live diagonal only, so zero-padded columns do not dilute it. A dead
  // column's row and column of H are zero; any positive diagonal isolates it. Unlike the paper we keep
  // its weights (rounded to nearest) rather than zeroing them: the sample is small, and held-out inputs
  // may well use that channel.
  const double mean = sum / static_cast<double>(live);
  for (int64_t k = 0; k < K; ++k) {
    double& d = H[k * K + k];
    if (!(d > 0)) d = mean;
    d += percdamp * mean;
  }
  auto check = [&](lapack_int info, const char* step) {
    if (info != 0)
      throw Error(std::string("GPTQ: ") + step + " failed (info " + std::to_string(info) +
                  "): the damped calibration Hessian is not positive definite");
  };
  check(lapack::dpotrf(LAPACK_ROW_MAJOR, 'U', K, H.data(), K), "Cholesky of H");
  check(lapack::dpotri(LAPACK_ROW_MAJOR, 'U', K, H.data(), K), "inverse of H");
  check(lapack::dpotrf(LAPACK_ROW_MAJOR, 'U', K, H.data(), K), "Cholesky of H^-1");
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = i; j < K; ++j) U[i * K + j] = static_cast<float>(H[i * K + j]);
  return U;
}

namespace {

// The runtime grids, through the same helpers round-to-nearest uses (quantizeInt4 / quantizeNvfp4):
// a group's scale from its max |v|, a value's code under that scale, and the code's de-quantized value.
struct Int4Format {
  static constexpr int kGroup = kInt4Group;
  using Code = int8_t;
  using Scale = float;
  static Scale scale(float amax, float) { return int4Scale(amax); }
  static Code code(float v, Scale s, float) { return int4Code(v, s); }
  static float value(Code c, Scale s, float) { return c * s; }  // = dequantizeInt4
};
struct Nvfp4Format {
  static constexpr int kGroup = kFp4Group;
  using Code = uint8_t;
  using Scale = uint8_t;  // E4M3 under the F32 tensor scale
  static Scale scale(float amax, float ts) { return nvfp4GroupScale(amax, ts); }
  static Code code(float v, Scale s, float ts) { return nvfp4Code(v, s, ts); }
  static float value(Code c, Scale s, float ts) { return decodeE2m1(c) * (decodeE4m3(s) * ts); }  // = dequantizeNvfp4
};

// start(n, g, v) fixes row n's scale of group g from its current values v[0..group); round(n, k, v)
// stores the code of W[n, k] and returns its de-quantized value.
template <class F>
struct Grid {
  int64_t K;
  float ts;
  typename F::Code* codes;
  typename F::Scale* scales;
  void start(int64_t n, int64_t g, const float* v) {
    float amax = 0.f;
    for (int j = 0; j < F::kGroup; ++j) amax = std::max(amax, std::fabs(v[j]));
    scales[n * (K / F::kGroup) + g] = F::scale(amax, ts);
  }
  float round(int64_t n, int64_t k, float v) {
    const typename F::Scale s = scales[n * (K / F::kGroup) + k / F::kGroup];
    codes[n * K + k] = F::code(v, s, ts);
    return F::value(codes[n * K + k], s, ts);
  }
};

// The GPTQ sweep. Rows are independent within a block, so each row walks the block's columns in order
// (cache-friendly); the block's error then reaches the later columns in one GEMM (the lazy batch update).
template <class F>
void gptqSweep(float* W, int64_t N, int64_t K, const std::vector<float>& U, Grid<F> grid) {
  const int64_t group = F::kGroup;
  if (K % group) throw Error("GPTQ: " + std::to_string(K) + " columns is not a multiple of the group size " +
                             std::to_string(group));
  if (static_cast<int64_t>(U.size()) != K * K) throw Error("GPTQ: inverse Hessian factor does not match the weight");
  std::vector<float> err(static_cast<size_t>(N * kGptqBlock));
  for (int64_t i1 = 0; i1 < K; i1 += kGptqBlock) {
    const int64_t i2 = std::min(K, i1 + kGptqBlock), B = i2 - i1;
    for (int64_t n = 0; n < N; ++n) {
      float* w = W + n * K;
      float* e = err.data() + n * B;
      for (int64_t k = i1; k < i2; ++k) {
        if (k % group == 0) grid.start(n, k / group, w + k);
        const float* u = U.data() + k * K;
        const float d = (w[k] - grid.round(n, k, w[k])) / u[k];
        e[k - i1] = d;
        for (int64_t j = k + 1; j < i2; ++j) w[j] -= d * u[j];
      }
    }
    if (i2 < K)  // W[:, i2:] -= E · U[i1:i2, i2:]
      blas::sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K - i2, B, -1.f, err.data(), B, U.data() + i1 * K + i2, K,
                  1.f, W + i2, K);
  }
}

}  // namespace

void gptqInt4(float* W, int64_t N, int64_t K, const std::vector<float>& U, int8_t* q, float* scales) {
  gptqSweep(W, N, K, U, Grid<Int4Format>{K, 1.f, q, scales});
}

void gptqNvfp4(float* W, int64_t N, int64_t K, const std::vector<float>& U, float tensorScale, uint8_t* codes,
               uint8_t* gscales) {
  gptqSweep(W, N, K, U, Grid<Nvfp4Format>{K, tensorScale, codes, gscales});
}

}  // namespace svdq::quant
