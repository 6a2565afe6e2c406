// The per-layer SVDQuant quantizer (see svdq/quant_layer.h).
#include <algorithm>
#include <cmath>
#include <limits>

#include "svdq/blas.h"
#include "svdq/parallel.h"
#include "svdq/quant_gptq.h"
#include "svdq/quant_kernels.h"
#include "svdq/quant_layer.h"

namespace svdq {
using namespace quant;

namespace {

int64_t groupOf(QuantPrecision p) { return p == QuantPrecision::Int4 ? kInt4Group : kFp4Group; }

constexpr int kCoarse = 4;  // coarse smoothing grid: every 4th fine step
constexpr int kSearchPowerIters = 1;  // randomized SVD of each smoothing candidate (see tryCandidate)
constexpr int64_t kSearchRows = 128;  // sample rows that score the smoothing candidates

double l2Norm(const std::vector<double>& v) {
  double t = 0;
  for (double x : v) t += x * x;
  return std::sqrt(t);
}

struct LowRankCtx {
  LowRankMode mode;
  int64_t r;
  const Tensor* X;
  float damp;
  std::string name;
  // cached per lambda
  std::vector<float> G, C;  // Cholesky factor, full covariance (corda)
};

void prepareLowRank(LowRankCtx& c, const std::vector<float>& lambda) {
  if (c.mode == LowRankMode::Svd || c.r == 0) return;
  const int64_t S = c.X->size(0), K = c.X->size(1);
  std::vector<float> xs(c.X->data);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t k = 0; k < K; ++k) xs[s * K + k] /= lambda[k];
  std::vector<float> C(static_cast<size_t>(K * K), 0.f);
  blas::ssyrk(CblasRowMajor, CblasLower, CblasTrans, K, S, 1.f / S, xs.data(), K, 0.f, C.data(), K);
  double tr = 0;
  for (int64_t k = 0; k < K; ++k) tr += C[k * K + k];
  const float d = static_cast<float>(std::max(tr / K, 1e-20) * c.damp);
  for (int64_t k = 0; k < K; ++k) C[k * K + k] += d;
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = i + 1; j < K; ++j) C[i * K + j] = C[j * K + i];
  c.C = C;
  c.G = C;
  if (lapack::spotrf(LAPACK_ROW_MAJOR, 'L', K, c.G.data(), K) != 0)
    throw Error(c.name + ": calibration covariance is not positive definite (Cholesky failed)");
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = i + 1; j < K; ++j) c.G[i * K + j] = 0.f;
}

// Top-r factors A [N, r], B [r, K] of the target M [N, K] (smoothed space) under the chosen metric:
// svd: min ||M - AB||; whiten: min ||(M - AB) G|| = output error on the sample; corda: SVD of M C mapped back.
void lowRank(const LowRankCtx& c, const std::vector<float>& M, int64_t N, int64_t K, std::vector<float>& A,
             std::vector<float>& B, int powerIters, std::vector<float>* Vt) {
  const int64_t r = c.r;
  std::vector<float> T;
  const float* src = M.data();
  if (c.mode != LowRankMode::Svd) {
    T.resize(M.size());
    const std::vector<float>& R = c.mode == LowRankMode::Whiten ? c.G : c.C;
    blas::sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K, K, 1.f, M.data(), K, R.data(), K, 0.f, T.data(), K);
    src = T.data();
  }
  const bool warm = Vt && static_cast<int64_t>(Vt->size()) == r * K;
  Svd s = svdTopR(src, N, K, r, powerIters, warm ? Vt->data() : nullptr, warm ? r : 0);
  if (Vt) *Vt = s.Vt;
  A.assign(static_cast<size_t>(N * r), 0.f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < r; ++j) A[n * r + j] = s.U[n * r + j] * s.S[j];
  B = s.Vt;
  if (c.mode == LowRankMode::Whiten) {  // B G = Vt
    blas::strsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, r, K, 1.f, c.G.data(), K, B.data(), K);
  } else if (c.mode == LowRankMode::Corda) {  // B C = Vt with C = G G^T
    blas::strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, r, K, 1.f, c.G.data(), K, B.data(), K);
    blas::strsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, r, K, 1.f, c.G.data(), K, B.data(), K);
  }
}

struct Problem {
  const std::string& name;
  const Tensor& W;
  const std::vector<float>& bias;
  const Tensor& X;
  std::vector<double> Yref;  // X W^T + b on the sample
  double refNorm = 0;
  int64_t N, K, Kp;
  QuantPrecision precision;
};

// One quantized layer and what the next steps need of it. Candidates are built into reused objects
// (their weight-sized vectors keep their capacity), so a layer's search allocates them once.
struct Candidate {
  W4A4Weights w;
  std::vector<float> deq;  // the dequantized residual Q(Ŵ - L) [N, Kp]: the refinement's target is Ŵ - deq
  std::vector<float> Vt;   // right singular vectors behind the factors [r, K]: the refinement's warm start
  double err = std::numeric_limits<double>::infinity();
};

// Weight-sized scratch of build(), reused by every candidate of a layer.
struct Workspace {
  std::vector<float> R;
  std::vector<int8_t> q;
  std::vector<uint8_t> codes;
};

// The sample rows as the residual GEMM sees them before activation quantization: (x + shift) / λ,
// zero-padded to Kp. [S, Kp]
std::vector<float> smoothedInputs(const Problem& P, const std::vector<float>& lambda, float shift) {
  const int64_t S = P.X.size(0), K = P.K, Kp = P.Kp;
  std::vector<float> xs(static_cast<size_t>(S * Kp), 0.f);
  for (int64_t m = 0; m < S; ++m)
    for (int64_t k = 0; k < K; ++k) xs[m * Kp + k] = (P.X.data[m * K + k] + shift) / lambda[k];
  return xs;
}

// The candidate's output on the sample, computed as dequantized F32 GEMMs (OpenBLAS) instead of the
// integer kernel: the same quantized values, only the summation order differs (~1e-7 relative), and
// two orders of magnitude faster at FLUX sizes. -> relative error vs the 16-bit reference.
double score(const Problem& P, const W4A4Weights& w, const std::vector<float>& deqR) {
  const int64_t S = P.X.size(0), K = P.K, Kp = P.Kp, N = P.N;
  std::vector<float> xs = smoothedInputs(P, w.smooth, w.actShift), xq(xs.size());
  if (P.precision == QuantPrecision::Int4) {
    std::vector<int8_t> q(xs.size());
    std::vector<float> sc(static_cast<size_t>(S * Kp / kInt4Group));
    quantizeInt4(xs.data(), S, Kp, q.data(), sc.data(), w.actShift > 0);
    dequantizeInt4(q.data(), sc.data(), S, Kp, xq.data());
  } else {
    std::vector<uint8_t> c(static_cast<size_t>(Kp)), g(static_cast<size_t>(Kp / kFp4Group));
    for (int64_t m = 0; m < S; ++m) {
      const float ts = nvfp4TensorScale(xs.data() + m * Kp, Kp);
      quantizeNvfp4(xs.data() + m * Kp, 1, Kp, ts, c.data(), g.data());
      dequantizeNvfp4(c.data(), g.data(), ts, 1, Kp, xq.data() + m * Kp);
    }
  }
  std::vector<float> y(static_cast<size_t>(S * N));
  blas::sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, N, Kp, 1.f, xq.data(), Kp, deqR.data(), Kp, 0.f, y.data(), N);
  if (const int64_t r = w.rank()) {
    std::vector<float> t(static_cast<size_t>(S * r));
    blas::sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, r, K, 1.f, P.X.ptr(), K, w.loraDown.ptr(), K, 0.f, t.data(), r);
    blas::sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, N, r, 1.f, t.data(), r, w.loraUp.ptr(), r, 1.f, y.data(), N);
  }
  double e = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double v = y[i] + (w.bias.empty() ? 0.0 : w.bias[i % N]);
    if (!std::isfinite(v)) return std::numeric_limits<double>::infinity();
    e += (v - P.Yref[i]) * (v - P.Yref[i]);
  }
  return std::sqrt(e) / std::max(P.refNorm, 1e-30);
}

// The stored low-rank factors back in smoothed space: A = lora_up, B = lora_down * λ (empty when r = 0).
void storedFactors(const W4A4Weights& w, const std::vector<float>& lambda, std::vector<float>& A,
                   std::vector<float>& B) {
  const int64_t r = w.rank(), K = w.in;
  A = w.loraUp.data;
  B.resize(static_cast<size_t>(r * K));
  for (int64_t j = 0; j < r; ++j)
    for (int64_t k = 0; k < K; ++k) B[j * K + k] = w.loraDown.data[j * K + k] * lambda[k];
}

// Builds into c the stored layer for smoothing lambda, low-rank factors (A, B in smoothed space) and
// shift; the residual is rounded to nearest, or GPTQ-quantized when gptqU (the inverse-Hessian factor) is
// given.
void build(const Problem& P, const std::vector<float>& lambda, const std::vector<float>& What,
           const std::vector<float>* A, const std::vector<float>* B, int64_t r, float shift, Workspace& ws,
           Candidate& c, const std::vector<float>* gptqU = nullptr) {
  const int64_t N = P.N, K = P.K, Kp = P.Kp;
  W4A4Weights& w = c.w;
  w.in = K, w.out = N, w.inPadded = Kp, w.precision = P.precision, w.smooth = lambda, w.actShift = shift;
  w.loraUp = Tensor(), w.loraDown = Tensor(), w.bias.clear();
  std::vector<float>& R = ws.R;
  R.resize(static_cast<size_t>(N * Kp));
  parallelFor(N, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      std::copy(What.begin() + n * K, What.begin() + (n + 1) * K, R.begin() + n * Kp);
      std::fill(R.begin() + n * Kp + K, R.begin() + (n + 1) * Kp, 0.f);
    }
  });
  if (r > 0) {
    // The stored factors are BF16 and lora_down acts on the raw input: round exactly as stored and
    // take the residual against what the kernel will really add.
    w.loraUp = Tensor({N, r});
    w.loraDown = Tensor({r, K});
    for (int64_t i = 0; i < N * r; ++i) w.loraUp.data[i] = roundBf16((*A)[i]);
    for (int64_t j = 0; j < r; ++j)
      for (int64_t k = 0; k < K; ++k) w.loraDown.data[j * K + k] = roundBf16((*B)[j * K + k] / lambda[k]);
    std::vector<float> As, Bs;
    storedFactors(w, lambda, As, Bs);
    blas::sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K, r, -1.f, As.data(), r, Bs.data(), K, 1.f, R.data(), Kp);
  }
  w.qweight.resize(static_cast<size_t>(N * Kp / 2));
  c.deq.resize(R.size());  // (GPTQ overwrites R; only the quantized values are used below)
  if (P.precision == QuantPrecision::Int4) {
    ws.q.resize(R.size());
    w.wscales.resize(static_cast<size_t>(N * Kp / kInt4Group));
    if (gptqU) gptqInt4(R.data(), N, Kp, *gptqU, ws.q.data(), w.wscales.data());
    else quantizeInt4(R.data(), N, Kp, ws.q.data(), w.wscales.data());
    packNibbles(ws.q.data(), N * Kp, w.qweight.data());
    dequantizeInt4(ws.q.data(), w.wscales.data(), N, Kp, c.deq.data());
  } else {
    ws.codes.resize(R.size());
    w.wscales8.resize(static_cast<size_t>(N * Kp / kFp4Group));
    // GPTQ keeps the tensor scale of the unchanged residual; a group its updates push past it saturates.
    w.wtscale = nvfp4TensorScale(R.data(), N * Kp);
    if (gptqU) gptqNvfp4(R.data(), N, Kp, *gptqU, w.wtscale, ws.codes.data(), w.wscales8.data());
    else quantizeNvfp4(R.data(), N, Kp, w.wtscale, ws.codes.data(), w.wscales8.data());
    packNibbles(reinterpret_cast<const int8_t*>(ws.codes.data()), N * Kp, w.qweight.data());
    dequantizeNvfp4(ws.codes.data(), w.wscales8.data(), w.wtscale, N, Kp, c.deq.data());
  }
  if (shift > 0) {
    // x̂ = (x + shift)/λ feeds only the residual GEMM: remove shift * sum_k deq(R)[n,k]/λ_k from the bias.
    w.bias.assign(static_cast<size_t>(N), 0.f);
    for (int64_t n = 0; n < N; ++n) {
      double comp = 0;
      for (int64_t k = 0; k < K; ++k) comp += static_cast<double>(c.deq[n * Kp + k]) / lambda[k];
      w.bias[n] = static_cast<float>((P.bias.empty() ? 0.0 : P.bias[n]) - shift * comp);
    }
  } else if (!P.bias.empty()) {
    w.bias.resize(P.bias.size());
    for (size_t i = 0; i < P.bias.size(); ++i) w.bias[i] = roundBf16(P.bias[i]);
  }
  c.Vt.clear();
  c.err = score(P, w, c.deq);
}

// Ŵ = W diag(λ), into a reused buffer.
void smoothWeight(const Tensor& W, const std::vector<float>& lam, std::vector<float>& What) {
  const int64_t N = W.size(0), K = W.size(1);
  What.resize(static_cast<size_t>(N * K));
  parallelFor(N, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t k = 0; k < K; ++k) What[n * K + k] = W.data[n * K + k] * lam[k];
  });
}

// max |W[:, k]| per input channel (the smoothing's weight side; one pass per layer, not per candidate).
std::vector<float> columnAbsMax(const Tensor& W) {
  const int64_t N = W.size(0), K = W.size(1);
  std::vector<float> wmax(static_cast<size_t>(K), 0.f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) wmax[k] = std::max(wmax[k], std::fabs(W.data[n * K + k]));
  return wmax;
}

std::vector<float> smoothingFactors(const LayerCalib& cal, const std::vector<float>& wmax, double a, double b) {
  const int64_t K = static_cast<int64_t>(wmax.size());
  std::vector<float> lam(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    const double xa = std::max<double>(cal.absmax[k], 1e-5), wb = std::max<double>(wmax[k], 1e-5);
    const double l = std::pow(xa, a) / std::pow(wb, b);
    lam[k] = roundBf16(static_cast<float>(std::clamp(l, 1e-4, 1e4)));  // the kernel divides by the BF16 value
  }
  return lam;
}

std::string fmt(double v) {
  char b[16];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

}  // namespace

double layerRelError(const Linear& layer, const Tensor& W, const std::vector<float>& bias, const Tensor& X) {
  const int64_t S = X.size(0), K = W.size(1), N = W.size(0);
  std::vector<float> y(static_cast<size_t>(S * N)), ref(static_cast<size_t>(S * N));
  layer.forward(X.ptr(), S, y.data());
  blas::sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, N, K, 1.f, X.ptr(), K, W.ptr(), K, 0.f, ref.data(), N);
  double e = 0, t = 0;
  for (int64_t i = 0; i < S * N; ++i) {
    const double r = ref[i] + (bias.empty() ? 0.f : bias[i % N]);
    e += (y[i] - r) * (y[i] - r);
    t += r * r;
  }
  return std::sqrt(e / std::max(t, 1e-30));
}

LayerQuantResult quantizeW4A4Layer(const std::string& name, const Tensor& W, const std::vector<float>& bias,
                                   const LayerCalib& cal, const LayerQuantOptions& opt) {
  if (W.shape.size() != 2) throw Error(name + ": weight shape " + shapeString(W.shape) + " is not 2-D");
  const int64_t N = W.size(0), K = W.size(1);
  for (int64_t i = 0; i < W.numel(); ++i)
    if (!std::isfinite(W.data[i])) throw Error(name + ".weight: non-finite value at flat index " + std::to_string(i));
  if (!bias.empty() && static_cast<int64_t>(bias.size()) != N)
    throw Error(name + ".bias: " + std::to_string(bias.size()) + " values for " + std::to_string(N) + " outputs");
  if (static_cast<int64_t>(cal.absmax.size()) != K || cal.sample.shape.size() != 2 || cal.sample.size(1) != K ||
      cal.sample.size(0) < 1)
    throw Error(name + ": calibration data " + shapeString(cal.sample.shape) + " does not fit in-features " +
                std::to_string(K));
  const bool useRank = opt.method == QuantMethod::SVDQuant || opt.method == QuantMethod::LowRank;
  const int64_t r = useRank ? opt.rank : 0;
  if (useRank && (r < 1 || r > std::min(N, K)))
    throw Error(name + ": rank " + std::to_string(r) + " is out of range for a [" + std::to_string(N) + ", " +
                std::to_string(K) + "] layer (1.." + std::to_string(std::min(N, K)) + ")");
  const int64_t G = groupOf(opt.precision);
  Problem P{name, W, bias, cal.sample, {}, 0, N, K, (K + G - 1) / G * G, opt.precision};
  const int64_t S = cal.sample.size(0);
  {
    std::vector<float> y(static_cast<size_t>(S * N));
    blas::sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, N, K, 1.f, cal.sample.ptr(), K, W.ptr(), K, 0.f, y.data(), N);
    P.Yref.resize(y.size());
    for (size_t i = 0; i < y.size(); ++i) P.Yref[i] = y[i] + (bias.empty() ? 0.0 : bias[i % N]);
    P.refNorm = l2Norm(P.Yref);
  }
  // The smoothing search scores on the first kSearchRows sample rows (a random subset: the sample is a
  // reservoir); the refinement and the reported errors use them all.
  const int64_t searchS = std::min<int64_t>(S, kSearchRows);
  Tensor searchRows({searchS, K});
  std::copy(cal.sample.data.begin(), cal.sample.data.begin() + searchS * K, searchRows.data.begin());
  Problem Ps{name, W, bias, searchRows, {P.Yref.begin(), P.Yref.begin() + searchS * N}, 0, N, K, P.Kp, opt.precision};
  Ps.refNorm = l2Norm(Ps.Yref);

  LowRankCtx lr{opt.lowrank, r, &cal.sample, opt.damp, name, {}, {}};
  Workspace ws;
  std::vector<float> What;
  LayerQuantResult res;
  Candidate best, scratch;  // scratch: the candidate being built; swapped with best when it wins
  std::vector<float> bestLam;
  std::string bestName;
  double bestA = -1, bestB = 0;
  // Keeps scratch if it beats best (true).
  auto keepIfBetter = [&]() {
    if (!(scratch.err < best.err)) return false;
    std::swap(best, scratch);
    return true;
  };

  // One candidate per smoothing: the top-r factors of Ŵ (no refinement yet), from a randomized SVD with
  // one power iteration, which the refinement below continues from (warm start). With no power
  // iteration a 12288x3072 test layer picked a smoothing with 2.3x the error; against four (and the
  // rest of this search as it was), a FLUX.1-dev-width block pair's layer errors moved by -0.9% to
  // +1.6% while the whole quantization took 65 s instead of 272 s (docs/QUANT.md).
  const std::vector<float> wmax = columnAbsMax(W);
  auto tryCandidate = [&](double a, double b) {  // a < 0: no smoothing
    std::vector<float> lam = a < 0 ? std::vector<float>(static_cast<size_t>(K), 1.f) : smoothingFactors(cal, wmax, a, b);
    smoothWeight(W, lam, What);
    std::vector<float> A, B, vt;
    if (r > 0) {
      prepareLowRank(lr, lam);
      lowRank(lr, What, N, K, A, B, kSearchPowerIters, &vt);
    }
    build(Ps, lam, What, &A, &B, r, 0.f, ws, scratch);
    scratch.Vt = std::move(vt);
    if (a < 0) res.naiveRelError = searchS < S ? score(P, scratch.w, scratch.deq) : scratch.err;
    if (keepIfBetter()) {
      bestLam = std::move(lam);
      bestName = a < 0 ? "none" : "a=" + fmt(a) + ",b=" + fmt(b);
      bestA = a, bestB = b;
    }
  };
  tryCandidate(-1, 0);
  if (opt.method == QuantMethod::SVDQuant || opt.method == QuantMethod::SmoothQuant) {
    // Smoothing exponents a on a grid of `step` in both families (a, 0) and (a, 1 - a). Coarse to fine:
    // every `kCoarse`-th point first (fewer on short grids), then, in the best one's family, a local
    // search that halves its step (the error is smooth in a): 13 candidates instead of 39 at step
    // 0.05, each an SVD plus a quantized forward.
    const double step = opt.gridStep > 0 ? opt.gridStep : 0.05;
    const int n = static_cast<int>(std::floor((1.0 - 1e-9) / step));  // a = step .. n * step
    const int stride = opt.exhaustiveGrid ? 1 : std::clamp(n / 3, 1, kCoarse);  // at least 3 coarse points
    for (int i = stride; i <= n; i += stride)
      for (bool sum1 : {false, true}) tryCandidate(i * step, sum1 ? 1 - i * step : 0);
    if (stride > 1 && bestA > 0) {
      const bool sum1 = bestB > 0;
      for (int h = stride / 2; h >= 1; h /= 2) {
        const int c = static_cast<int>(std::lround(bestA / step));  // the best so far, on this family
        for (int i : {c - h, c + h})
          if (i >= 1 && i <= n) tryCandidate(i * step, sum1 ? 1 - i * step : 0);
      }
    }
  }
  if (!std::isfinite(best.err)) throw Error(name + ": every quantization candidate produced non-finite outputs");
  if (searchS < S) best.err = score(P, best.w, best.deq);
  smoothWeight(W, bestLam, What);

  // Refinement: L_{k+1} = lowrank(Ŵ - Q(Ŵ - L_k)), keeping the best iterate, stopping when it gets worse
  // or improves by less than refineTol.
  // Each step's SVD starts from the previous step's right singular vectors: one subspace-iteration step
  // per refinement step (the targets differ by a quantization error): two GEMM passes over the weight
  // instead of a cold SVD's ten.
  if (r > 0 && opt.refineIters > 0) {
    prepareLowRank(lr, bestLam);
    std::vector<float> T(What.size()), vt = best.Vt;
    for (int it = 0; it < opt.refineIters; ++it) {
      parallelFor(N, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
          for (int64_t k = 0; k < K; ++k) T[n * K + k] = What[n * K + k] - best.deq[n * P.Kp + k];
      });
      std::vector<float> A, B;
      lowRank(lr, T, N, K, A, B, 0, &vt);
      build(P, bestLam, What, &A, &B, r, 0.f, ws, scratch);
      const double before = best.err;
      if (!keepIfBetter()) break;
      best.Vt = vt;
      res.refineSteps = it + 1;
      if (best.err > before * (1 - opt.refineTol)) break;  // the gains have flattened out
    }
  }

  // GELU inputs: shifted unsigned activations use all 16 levels on a one-sided range; keep them if they win.
  if (opt.tryUnsignedShift) {
    float mn = 0.f;
    for (float v : cal.sample.data) mn = std::min(mn, v);
    if (mn >= -kGeluShift && opt.precision == QuantPrecision::Int4) {
      std::vector<float> A, B;
      storedFactors(best.w, bestLam, A, B);
      build(P, bestLam, What, &A, &B, r, kGeluShift, ws, scratch);
      keepIfBetter();
    }
  }

  // GPTQ on the chosen candidate's residual (same smoothing, factors and shift), with the Hessian of the
  // smoothed inputs X/λ; kept when it lowers the layer's output error, as every other choice. No shift in
  // the Hessian even for unsigned activations: the bias compensates shift·Q(R)/λ exactly, so Q(R)'s
  // error reaches the output through X/λ alone.
  if (opt.gptq) {
    res.rtnRelError = best.err;
    std::vector<float> A, B;
    storedFactors(best.w, bestLam, A, B);
    const std::vector<float> U =
        gptqInverseHessianFactor(smoothedInputs(P, bestLam, 0.f).data(), cal.sample.size(0), P.Kp, opt.damp);
    build(P, bestLam, What, &A, &B, r, best.w.actShift, ws, scratch, &U);
    res.gptq = keepIfBetter();
  }
  res.weights = std::move(best.w);
  res.relError = best.err;
  res.smoothing = bestName;
  return res;
}

W4A16Weights quantizeW4A16Layer(const std::string& name, const Tensor& W, const std::vector<float>& bias) {
  if (W.shape.size() != 2) throw Error(name + ": weight shape " + shapeString(W.shape) + " is not 2-D");
  const int64_t N = W.size(0), K = W.size(1);
  if (K % kInt4Group) throw Error(name + ": in-features " + std::to_string(K) + " is not a multiple of 64 (W4A16)");
  for (int64_t i = 0; i < W.numel(); ++i)
    if (!std::isfinite(W.data[i])) throw Error(name + ".weight: non-finite value at flat index " + std::to_string(i));
  const int64_t G = K / kInt4Group;
  W4A16Weights w;
  w.in = K, w.out = N;
  w.wscales.resize(static_cast<size_t>(N * G));
  w.wzeros.resize(static_cast<size_t>(N * G));
  std::vector<int8_t> q(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      const float* v = W.ptr() + n * K + g * kInt4Group;
      float lo = v[0], hi = v[0];
      for (int j = 1; j < kInt4Group; ++j) lo = std::min(lo, v[j]), hi = std::max(hi, v[j]);
      const float s = roundBf16((hi - lo) / 15.f), z = roundBf16(lo);
      w.wscales[n * G + g] = s;
      w.wzeros[n * G + g] = z;
      for (int j = 0; j < kInt4Group; ++j)
        q[n * K + g * kInt4Group + j] =
            static_cast<int8_t>(s > 0 ? std::clamp(std::nearbyint((v[j] - z) / s), 0.f, 15.f) : 0.f);
    }
  w.qweight.resize(static_cast<size_t>(N * K / 2));
  packNibbles(q.data(), N * K, w.qweight.data());
  for (float b : bias) w.bias.push_back(roundBf16(b));
  return w;
}

}  // namespace svdq
