// BF16 GEMM through cuBLASLt (issue 8, kernel 4): unquantized layers and our BF16 baseline.
// y[M, N] = alpha x[M, K] . w[N, K]^T + beta y, BF16 in and out, F32 compute. Row-major y is
// column-major y^T = w . x^T, so cuBLASLt sees A = w (transposed), B = x, C = y with m = N, n = M.
// Without cuBLASLt (this machine's toolkit has none) the function throws; nothing else depends on it.
#include "common.cuh"
#include "svdq/cuda_ops.h"

#ifdef SVDQ_WITH_CUBLASLT
#include <cublasLt.h>
#endif

namespace svdq::cuda {

#ifdef SVDQ_WITH_CUBLASLT
namespace {
void checkLt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw Error(std::string("gemmBf16 (cuBLASLt): ") + what + ": status " + std::to_string(int(s)));
}
struct LtState {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer workspace{size_t(32) << 20};
  LtState() { checkLt(cublasLtCreate(&handle), "cublasLtCreate"); }
};
LtState& lt() {
  static LtState s;  // one handle per process: the sidecar drives one GPU
  return s;
}
// Frees the descriptors whatever happens between creation and the matmul.
struct Descs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~Descs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};
}  // namespace
#endif

void gemmBf16(const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t M, int64_t N, int64_t K, float alpha, float beta,
              void* stream) {
#ifdef SVDQ_WITH_CUBLASLT
  if (M < 0 || N < 1 || K < 1) throw Error("gemmBf16: bad shape M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
  if (M == 0) return;
  LtState& s = lt();
  Descs d;
  checkLt(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc");
  const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
  checkLt(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof(tA)), "transa");
  checkLt(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof(tB)), "transb");
  checkLt(cublasLtMatrixLayoutCreate(&d.a, CUDA_R_16BF, K, N, K), "layout w");
  checkLt(cublasLtMatrixLayoutCreate(&d.b, CUDA_R_16BF, K, M, K), "layout x");
  checkLt(cublasLtMatrixLayoutCreate(&d.c, CUDA_R_16BF, N, M, N), "layout y");
  checkLt(cublasLtMatmulPreferenceCreate(&d.pref), "preference");
  size_t ws = s.workspace.bytes();
  checkLt(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)), "workspace");
  cublasLtMatmulHeuristicResult_t h{};
  int found = 0;
  checkLt(cublasLtMatmulAlgoGetHeuristic(s.handle, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &h, &found), "heuristic");
  if (!found) throw Error("gemmBf16: cuBLASLt has no algorithm for M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
  checkLt(cublasLtMatmul(s.handle, d.op, &alpha, w, d.a, x, d.b, &beta, y, d.c, y, d.c, &h.algo, s.workspace.get(), ws,
                         asStream(stream)),
          "cublasLtMatmul");
#else
  (void)x, (void)w, (void)y, (void)M, (void)N, (void)K, (void)alpha, (void)beta, (void)stream;
  throw Error("gemmBf16: this build has no cuBLASLt (found none at configure time)");
#endif
}

}  // namespace svdq::cuda
