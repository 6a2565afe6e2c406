// CPU reference of the SVDQuant numeric primitives (see svdq/quant_kernels.h for the contract).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "svdq/blas.h"
#include "svdq/parallel.h"
#include "svdq/quant_kernels.h"
#include "svdq/tensor.h"

namespace svdq::quant {

float roundBf16(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  if ((b & 0x7f800000u) == 0x7f800000u) return v;  // inf / nan unchanged
  b += 0x7fffu + ((b >> 16) & 1u);                   // round to nearest even on the low 16 bits
  b &= 0xffff0000u;
  float r;
  std::memcpy(&r, &b, 4);
  return r;
}

// --- FP8 E4M3 (OCP "fn": bias 7, no inf, 0x7f/0xff NaN, max 448) ---
float decodeE4m3(uint8_t v) {
  const int s = v >> 7, e = (v >> 3) & 0xf, m = v & 7;
  float r;
  if (e == 0xf && m == 7) r = NAN;
  else if (e == 0) r = std::ldexp(static_cast<float>(m) / 8.f, -6);
  else r = std::ldexp(1.f + static_cast<float>(m) / 8.f, e - 7);
  return s ? -r : r;
}

namespace {
// The 127 non-negative finite E4M3 values in code order (monotone), for nearest-even encoding.
const std::array<float, 127>& e4m3Table() {
  static const std::array<float, 127> t = [] {
    std::array<float, 127> a{};
    for (int i = 0; i < 127; ++i) a[i] = decodeE4m3(static_cast<uint8_t>(i));
    return a;
  }();
  return t;
}
// Index of the nearest table entry, ties to the even index (= even mantissa, like cvt.rn).
template <size_t N>
int nearestEven(const std::array<float, N>& t, float a) {
  if (a >= t[N - 1]) return static_cast<int>(N - 1);  // saturate
  auto it = std::upper_bound(t.begin(), t.end(), a);
  int hi = static_cast<int>(it - t.begin());
  if (hi == 0) return 0;
  int lo = hi - 1;
  float dl = a - t[lo], dh = t[hi] - a;
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo % 2 == 0) ? lo : hi;
}
const std::array<float, 8> kE2m1 = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
}  // namespace

uint8_t encodeE4m3(float v) {
  if (std::isnan(v)) return 0x7f;
  const uint8_t s = std::signbit(v) ? 0x80 : 0;
  return static_cast<uint8_t>(s | nearestEven(e4m3Table(), std::fabs(v)));
}

uint8_t encodeE2m1(float v) {
  int i = nearestEven(kE2m1, std::fabs(v));
  if (i == 0) return 0;  // no negative zero: keeps packed zero padding canonical
  return static_cast<uint8_t>((v < 0 ? 8 : 0) | i);
}
float decodeE2m1(uint8_t c) { return (c & 8) ? -kE2m1[c & 7] : kE2m1[c & 7]; }

static void requireGroups(int64_t cols, int g, const char* what) {
  if (cols % g != 0)
    throw Error(std::string(what) + ": " + std::to_string(cols) + " columns is not a multiple of the group size " +
                std::to_string(g));
}

float int4Scale(float amax, bool isUnsigned) { return roundBf16(amax / (isUnsigned ? 15.f : 7.f)); }

void quantizeInt4(const float* x, int64_t rows, int64_t cols, int8_t* q, float* scales, bool isUnsigned) {
  requireGroups(cols, kInt4Group, "quantizeInt4");
  const int64_t G = cols / kInt4Group;
  parallelFor(rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t g = 0; g < G; ++g) {
        const float* v = x + r * cols + g * kInt4Group;
        int8_t* o = q + r * cols + g * kInt4Group;
        float amax = 0.f;
        for (int j = 0; j < kInt4Group; ++j) amax = std::max(amax, isUnsigned ? v[j] : std::fabs(v[j]));
        const float s = int4Scale(amax, isUnsigned);
        scales[r * G + g] = s;
        for (int j = 0; j < kInt4Group; ++j) o[j] = int4Code(v[j], s, isUnsigned);
      }
  });
}

void dequantizeInt4(const int8_t* q, const float* scales, int64_t rows, int64_t cols, float* out) {
  requireGroups(cols, kInt4Group, "dequantizeInt4");
  const int64_t G = cols / kInt4Group;
  parallelFor(rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t k = 0; k < cols; ++k) out[r * cols + k] = q[r * cols + k] * scales[r * G + k / kInt4Group];
  });
}

float nvfp4TensorScale(const float* x, int64_t n) {
  float amax = 0.f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  return amax > 0.f ? amax / (6.f * 448.f) : 1.f;
}

void quantizeNvfp4(const float* x, int64_t rows, int64_t cols, float ts, uint8_t* codes, uint8_t* gscales) {
  requireGroups(cols, kFp4Group, "quantizeNvfp4");
  const int64_t G = cols / kFp4Group;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const float* v = x + r * cols + g * kFp4Group;
      uint8_t* o = codes + r * cols + g * kFp4Group;
      float amax = 0.f;
      for (int j = 0; j < kFp4Group; ++j) amax = std::max(amax, std::fabs(v[j]));
      const uint8_t gs = nvfp4GroupScale(amax, ts);
      gscales[r * G + g] = gs;
      for (int j = 0; j < kFp4Group; ++j) o[j] = nvfp4Code(v[j], gs, ts);
    }
  }
}

uint8_t nvfp4GroupScale(float amax, float ts) { return encodeE4m3(amax / 6.f / ts); }

uint8_t nvfp4Code(float v, uint8_t gs, float ts) {
  const float s = decodeE4m3(gs) * ts;
  return s > 0.f ? encodeE2m1(v / s) : 0;
}

void dequantizeNvfp4(const uint8_t* codes, const uint8_t* gscales, float ts, int64_t rows, int64_t cols, float* out) {
  requireGroups(cols, kFp4Group, "dequantizeNvfp4");
  const int64_t G = cols / kFp4Group;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k)
      out[r * cols + k] = decodeE2m1(codes[r * cols + k]) * (decodeE4m3(gscales[r * G + k / kFp4Group]) * ts);
}

void packNibbles(const int8_t* q, int64_t n, uint8_t* out) {
  if (n % 2) throw Error("packNibbles: odd element count " + std::to_string(n));
  parallelFor(n / 2, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = static_cast<uint8_t>((q[2 * i] & 0xf) | ((q[2 * i + 1] & 0xf) << 4));
  });
}

void unpackNibbles(const uint8_t* in, int64_t n, int8_t* q, bool isSigned) {
  for (int64_t i = 0; i < n; ++i) {
    int v = (in[i / 2] >> ((i & 1) * 4)) & 0xf;
    if (isSigned && v >= 8) v -= 16;
    q[i] = static_cast<int8_t>(v);
  }
}

void gemmW4A4Int4(const int8_t* qa, const float* as, int64_t M, const int8_t* qw, const float* ws, int64_t N,
                  int64_t K, float* y) {
  requireGroups(K, kInt4Group, "gemmW4A4Int4");
  const int64_t G = K / kInt4Group;
  parallelFor(N, [&](int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* a = qa + m * K;
      for (int64_t n = n0; n < n1; ++n) {
        const int8_t* w = qw + n * K;
        float acc = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          int32_t d = 0;
          const int8_t* ag = a + g * kInt4Group;
          const int8_t* wg = w + g * kInt4Group;
          for (int j = 0; j < kInt4Group; ++j) d += static_cast<int32_t>(ag[j]) * static_cast<int32_t>(wg[j]);
          acc += static_cast<float>(d) * as[m * G + g] * ws[n * G + g];
        }
        y[m * N + n] = acc;
      }
    }
  });
}

void gemmW4A4Nvfp4(const uint8_t* ca, const uint8_t* gsa, const float* ats, int64_t M, const uint8_t* cw,
                   const uint8_t* gsw, float wts, int64_t N, int64_t K, float* y) {
  requireGroups(K, kFp4Group, "gemmW4A4Nvfp4");
  const int64_t G = K / kFp4Group;
  // Codes and group scales decoded once, not per product (decoding the scales inside the loop was a
  // third of an NVFP4 forward); the same values in the same order, so the result is unchanged.
  auto decodeRows = [&](const uint8_t* codes, const uint8_t* gscales, int64_t rows, std::vector<float>& values,
                        std::vector<float>& scales) {
    values.resize(static_cast<size_t>(rows * K)), scales.resize(static_cast<size_t>(rows * G));
    parallelFor(rows, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0 * K; i < r1 * K; ++i) values[i] = decodeE2m1(codes[i]);
      for (int64_t i = r0 * G; i < r1 * G; ++i) scales[i] = decodeE4m3(gscales[i]);
    });
  };
  std::vector<float> av, sa, wv, sw;
  decodeRows(ca, gsa, M, av, sa);
  decodeRows(cw, gsw, N, wv, sw);
  parallelFor(N, [&](int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = n0; n < n1; ++n) {
        float acc = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          float d = 0.f;  // exact: products are multiples of 1/4 up to 36, 16 of them
          const float* ag = av.data() + m * K + g * kFp4Group;
          const float* wg = wv.data() + n * K + g * kFp4Group;
          for (int j = 0; j < kFp4Group; ++j) d += ag[j] * wg[j];
          acc += d * (sa[m * G + g] * sw[n * G + g]);
        }
        y[m * N + n] = acc * ats[m] * wts;
      }
    }
  });
}

// --- SVD ---
Svd svdExact(const float* A, int64_t m, int64_t n, int64_t r) {
  const int64_t k = std::min(m, n);
  if (r < 1 || r > k) throw Error("svd: rank " + std::to_string(r) + " out of range for a [" + std::to_string(m) + ", " +
                                  std::to_string(n) + "] matrix");
  std::vector<float> a(A, A + m * n), s(k), u(m * k), vt(k * n);
  lapack_int info = lapack::sgesdd(LAPACK_ROW_MAJOR, 'S', m, n, a.data(), n, s.data(), u.data(), k, vt.data(), n);
  if (info != 0) {
    // gesdd's divide and conquer can fail to converge on hard inputs; gesvd is slower but sturdier.
    a.assign(A, A + m * n);
    std::vector<float> superb(k);
    info = lapack::sgesvd(LAPACK_ROW_MAJOR, 'S', 'S', m, n, a.data(), n, s.data(), u.data(), k, vt.data(), n,
                          superb.data());
    if (info != 0) throw Error("svd: LAPACK failed to converge (info " + std::to_string(info) + ")");
  }
  Svd out;
  out.m = m, out.n = n, out.r = r;
  out.S.assign(s.begin(), s.begin() + r);
  out.U.resize(m * r);
  for (int64_t i = 0; i < m; ++i) std::copy(u.begin() + i * k, u.begin() + i * k + r, out.U.begin() + i * r);
  out.Vt.assign(vt.begin(), vt.begin() + r * n);
  return out;
}

// Orthonormalises the columns of a row-major [m, l] matrix in place (thin QR, Q kept).
static void orthonormalize(std::vector<float>& Y, int64_t m, int64_t l) {
  std::vector<float> tau(l);
  if (lapack::sgeqrf(LAPACK_ROW_MAJOR, m, l, Y.data(), l, tau.data()) != 0 ||
      lapack::sorgqr(LAPACK_ROW_MAJOR, m, l, l, Y.data(), l, tau.data()) != 0)
    throw Error("svd: QR factorisation failed");
}

Svd svdRandomized(const float* A, int64_t m, int64_t n, int64_t r, int powerIters, int oversample, uint64_t seed,
                  const float* start, int64_t startRows) {
  const int64_t k = std::min(m, n);
  if (r < 1 || r > k) throw Error("svd: rank " + std::to_string(r) + " out of range for a [" + std::to_string(m) + ", " +
                                  std::to_string(n) + "] matrix");
  const int64_t l = std::min<int64_t>(k, r + oversample);
  if (l >= k) return svdExact(A, m, n, r);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> omega(n * l), Y(m * l), Z(n * l);
  for (auto& v : omega) v = nd(rng);
  // Warm start: the given rows (e.g. the previous factors' right singular vectors) replace the first
  // random directions, so the range finder starts from the subspace it had already found.
  for (int64_t j = 0; j < std::min(startRows, l); ++j)
    for (int64_t i = 0; i < n; ++i) omega[i * l + j] = start[j * n + i];
  blas::sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, l, n, 1.f, A, n, omega.data(), l, 0.f, Y.data(), l);
  orthonormalize(Y, m, l);
  for (int it = 0; it < powerIters; ++it) {
    blas::sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, l, m, 1.f, A, n, Y.data(), l, 0.f, Z.data(), l);
    orthonormalize(Z, n, l);
    blas::sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, l, n, 1.f, A, n, Z.data(), l, 0.f, Y.data(), l);
    orthonormalize(Y, m, l);
  }
  std::vector<float> B(l * n);  // B = Q^T A  [l, n]
  blas::sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, l, n, m, 1.f, Y.data(), l, A, n, 0.f, B.data(), n);
  Svd small = svdExact(B.data(), l, n, r);
  Svd out;
  out.m = m, out.n = n, out.r = r;
  out.S = small.S;
  out.Vt = small.Vt;
  out.U.resize(m * r);
  blas::sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, r, l, 1.f, Y.data(), l, small.U.data(), r, 0.f,
              out.U.data(), r);
  return out;
}

Svd svdTopR(const float* A, int64_t m, int64_t n, int64_t r, int powerIters, const float* start, int64_t startRows) {
  // Full gesdd costs O(m n min(m,n)); the randomized one O(m n (r + p) (2q + 2)): switch once it pays.
  if (std::min(m, n) <= 768) return svdExact(A, m, n, r);
  return svdRandomized(A, m, n, r, powerIters, 8, 1234, start, startRows);
}

}  // namespace svdq::quant
