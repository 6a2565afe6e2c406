// CPU reference kernels (F32, row-major). The FLUX graph is written in terms of these; the CUDA
// backend implements the same list.
#pragma once
#include <cstdint>
#include <vector>

namespace svdq::cpu {

// Threads OpenBLAS uses for the GEMMs (process-wide); n <= 0 = hardware concurrency.
void setThreads(int n);
int threads();

// y[M, N] (row stride ldy, N when < 0) = x[M, K] · w[N, K]^T (+ bias[N]).
void linear(const float* x, int64_t M, int64_t K, const float* w, int64_t N, const float* bias, float* y,
            int64_t ldy = -1);
// y[M, N] += alpha · a[M, K] · b[N, K]^T.
void gemmNtAccumulate(const float* a, int64_t M, int64_t K, const float* b, int64_t N, float alpha, float* y);
// In place per row: (x - mean) / sqrt(var + eps), no affine.
void layerNorm(float* x, int64_t rows, int64_t dim, float eps = 1e-6f);
// In place per row (rows `stride` apart): x * rsqrt(mean(x^2) + eps) * scale.
void rmsNorm(float* x, int64_t rows, int64_t dim, int64_t stride, const float* scale, float eps = 1e-6f);
void geluTanh(float* x, int64_t n);  // in place, tanh approximation
void silu(float* x, int64_t n);      // in place
// out[b] = [cos(t·f), sin(t·f)] of t = timeFactor · t[b], f_i = maxPeriod^(-i/half) (cos half first).
void timestepEmbedding(const float* t, int64_t n, int64_t dim, float* out, float timeFactor = 1000.f,
                       float maxPeriod = 10000.f);
// cos/sin [L, sum(axes)/2] for positions ids [L, axes.size()].
void ropeTables(const float* ids, int64_t L, const std::vector<int>& axes, float theta, std::vector<float>& cos,
                std::vector<float>& sin);
// Rotates consecutive channel pairs of L rows (stride apart) of one head.
void applyRope(float* x, int64_t L, int64_t headDim, int64_t stride, const float* cos, const float* sin);
// One head: out[L, D] (row stride outStride) = softmax(q k^T / sqrt(D) + bias) v, q/k/v rows qkvStride
// apart; bias [L, L] is optional. A row whose bias masks every key (all -inf) outputs zeros.
void attentionHead(const float* q, const float* k, const float* v, int64_t L, int64_t D, int64_t qkvStride,
                   float* out, int64_t outStride, const float* bias = nullptr);

}  // namespace svdq::cpu
