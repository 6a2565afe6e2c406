// BLAS and LAPACK for the CPU code, safe against fork(): call blas::sgemm, lapack::sgesdd, ...
// (same arguments as cblas_sgemm, LAPACKE_sgesdd), never the cblas_/LAPACKE_ functions directly.
//
// Why: the pthreads build of OpenBLAS (Debian's default) stops its thread pool in a fork() handler,
// and a BLAS call running on another thread at that moment waits forever for the pool (the OpenBLAS
// issues on blas_thread_shutdown and fork). Node forks from its main thread for every child_process
// spawn while our work runs on worker threads. So each call here holds a BlasCallScope, and our own
// fork handler (registered after OpenBLAS's, so it runs first) holds a fork back until the calls in
// flight have returned; calls that start meanwhile wait for the fork to finish.
#pragma once
#include <cblas.h>
#include <lapacke.h>

namespace svdq {

// While one is alive, fork() waits. Nesting on one thread is allowed. Nothing done under one may wait
// for another thread (that thread may be the one forking).
class BlasCallScope {
 public:
  BlasCallScope();
  ~BlasCallScope();
  BlasCallScope(const BlasCallScope&) = delete;
  BlasCallScope& operator=(const BlasCallScope&) = delete;
};

namespace blas {
template <class... A> void sgemm(A... a) { const BlasCallScope s; cblas_sgemm(a...); }
template <class... A> void ssyrk(A... a) { const BlasCallScope s; cblas_ssyrk(a...); }
template <class... A> void dsyrk(A... a) { const BlasCallScope s; cblas_dsyrk(a...); }
template <class... A> void strsm(A... a) { const BlasCallScope s; cblas_strsm(a...); }
}  // namespace blas

namespace lapack {
template <class... A> lapack_int sgesdd(A... a) { const BlasCallScope s; return LAPACKE_sgesdd(a...); }
template <class... A> lapack_int sgesvd(A... a) { const BlasCallScope s; return LAPACKE_sgesvd(a...); }
template <class... A> lapack_int sgeqrf(A... a) { const BlasCallScope s; return LAPACKE_sgeqrf(a...); }
template <class... A> lapack_int sorgqr(A... a) { const BlasCallScope s; return LAPACKE_sorgqr(a...); }
template <class... A> lapack_int spotrf(A... a) { const BlasCallScope s; return LAPACKE_spotrf(a...); }
template <class... A> lapack_int dpotrf(A... a) { const BlasCallScope s; return LAPACKE_dpotrf(a...); }
template <class... A> lapack_int dpotri(A... a) { const BlasCallScope s; return LAPACKE_dpotri(a...); }
}  // namespace lapack

}  // namespace svdq
