// CPU reference kernels (see svdq/ops.h).
#include "svdq/ops.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "svdq/blas.h"

namespace svdq::cpu {

namespace {
std::atomic<int> gThreads{0};
int hardwareThreads() { return std::max(1u, std::thread::hardware_concurrency()); }
}  // namespace

void setThreads(int n) {
  gThreads = n > 0 ? n : 0;
  openblas_set_num_threads(threads());
}

int threads() {
  const int n = gThreads.load();
  return n > 0 ? n : hardwareThreads();
}

void linear(const float* x, int64_t M, int64_t K, const float* w, int64_t N, const float* bias, float* y, int64_t ldy) {
  if (ldy < 0) ldy = N;
  if (M == 0 || N == 0) return;
  float beta = 0.f;
  if (bias) {
    for (int64_t m = 0; m < M; m++) std::memcpy(y + m * ldy, bias, N * sizeof(float));
    beta = 1.f;
  }
  blas::sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, x, K, w, K, beta, y, ldy);
}

void gemmNtAccumulate(const float* a, int64_t M, int64_t K, const float* b, int64_t N, float alpha, float* y) {
  if (M == 0 || N == 0 || K == 0) return;
  blas::sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, alpha, a, K, b, K, 1.f, y, N);
}

void layerNorm(float* x, int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; r++) {
    float* p = x + r * dim;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < dim; i++) mean += p[i];
    mean /= dim;
    for (int64_t i = 0; i < dim; i++) var += (p[i] - mean) * (p[i] - mean);
    var /= dim;
    const float inv = static_cast<float>(1.0 / std::sqrt(var + eps));
    const float mu = static_cast<float>(mean);
    for (int64_t i = 0; i < dim; i++) p[i] = (p[i] - mu) * inv;
  }
}

void rmsNorm(float* x, int64_t rows, int64_t dim, int64_t stride, const float* scale, float eps) {
  for (int64_t r = 0; r < rows; r++) {
    float* p = x + r * stride;
    double ss = 0;
    for (int64_t i = 0; i < dim; i++) ss += static_cast<double>(p[i]) * p[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
    for (int64_t i = 0; i < dim; i++) p[i] = p[i] * inv * scale[i];
  }
}

void geluTanh(float* x, int64_t n) {
  const float c = 0.7978845608028654f;  // sqrt(2/pi)
  for (int64_t i = 0; i < n; i++) {
    float v = x[i];
    x[i] = 0.5f * v * (1.f + std::tanh(c * (v + 0.044715f * v * v * v)));
  }
}

void silu(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.f + std::exp(-x[i]));
}

void timestepEmbedding(const float* t, int64_t n, int64_t dim, float* out, float timeFactor, float maxPeriod) {
  const int64_t half = dim / 2;
  for (int64_t b = 0; b < n; b++) {
    const double tt = static_cast<double>(timeFactor) * t[b];
    float* o = out + b * dim;
    for (int64_t i = 0; i < half; i++) {
      const double f = std::exp(-std::log(static_cast<double>(maxPeriod)) * i / half);
      o[i] = static_cast<float>(std::cos(tt * f));
      o[half + i] = static_cast<float>(std::sin(tt * f));
    }
    if (dim % 2) o[dim - 1] = 0.f;
  }
}

void ropeTables(const float* ids, int64_t L, const std::vector<int>& axes, float theta, std::vector<float>& cos,
                std::vector<float>& sin) {
  int64_t pairs = 0;
  for (int a : axes) pairs += a / 2;
  cos.assign(L * pairs, 0.f);
  sin.assign(L * pairs, 0.f);
  const int64_t nAxes = static_cast<int64_t>(axes.size());
  for (int64_t l = 0; l < L; l++) {
    int64_t p = 0;
    for (int64_t a = 0; a < nAxes; a++) {
      const double pos = ids[l * nAxes + a];
      for (int j = 0; j < axes[a] / 2; j++, p++) {
        const double omega = 1.0 / std::pow(static_cast<double>(theta), 2.0 * j / axes[a]);
        cos[l * pairs + p] = static_cast<float>(std::cos(pos * omega));
        sin[l * pairs + p] = static_cast<float>(std::sin(pos * omega));
      }
    }
  }
}

void applyRope(float* x, int64_t L, int64_t headDim, int64_t stride, const float* cos, const float* sin) {
  const int64_t pairs = headDim / 2;
  for (int64_t l = 0; l < L; l++) {
    float* p = x + l * stride;
    const float* c = cos + l * pairs;
    const float* s = sin + l * pairs;
    for (int64_t j = 0; j < pairs; j++) {
      const float x0 = p[2 * j], x1 = p[2 * j + 1];
      p[2 * j] = c[j] * x0 - s[j] * x1;
      p[2 * j + 1] = s[j] * x0 + c[j] * x1;
    }
  }
}

void attentionHead(const float* q, const float* k, const float* v, int64_t L, int64_t D, int64_t qkvStride,
                   float* out, int64_t outStride, const float* bias) {
  // Query blocks keep the score matrix small (block x L) for long sequences.
  const int64_t block = 256;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  std::vector<float> s(static_cast<size_t>(std::min(block, L) * L));
  for (int64_t q0 = 0; q0 < L; q0 += block) {
    const int64_t rows = std::min(block, L - q0);
    blas::sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, L, D, scale, q + q0 * qkvStride, qkvStride, k, qkvStride,
                0.f, s.data(), L);
    for (int64_t r = 0; r < rows; r++) {
      float* p = s.data() + r * L;
      if (bias)
        for (int64_t j = 0; j < L; j++) p[j] += bias[(q0 + r) * L + j];
      float mx = *std::max_element(p, p + L);
      if (mx == -std::numeric_limits<float>::infinity()) {  // nothing to attend to (exp would give NaN)
        std::fill(p, p + L, 0.f);
        continue;
      }
      double sum = 0;
      for (int64_t j = 0; j < L; j++) {
        p[j] = std::exp(p[j] - mx);
        sum += p[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t j = 0; j < L; j++) p[j] *= inv;
    }
    blas::sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, L, 1.f, s.data(), L, v, qkvStride, 0.f,
                out + q0 * outStride, outStride);
  }
}

}  // namespace svdq::cpu
