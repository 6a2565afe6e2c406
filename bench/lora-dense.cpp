// Dense 16-bit layers and LoRA: unfused low-rank add vs merging into W, at FLUX.1-dev shapes.
//   g++ -O3 -march=native bench/lora-dense.cpp -o /tmp/lora-dense -lopenblas && /tmp/lora-dense [M] [rank]
// Per forward: unfused costs y += (x A^T) B^T (two thin GEMMs); merged costs nothing extra.
// Per change: merged costs W' = W0 + s B A (one GEMM over W, plus keeping W0 for exact removal);
// unfused costs nothing (strength is a scalar, removal drops the factors).
#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

static double secs(std::chrono::steady_clock::time_point a) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
}

int main(int argc, char** argv) {
  const int M = argc > 1 ? std::atoi(argv[1]) : 1024;
  const int r = argc > 2 ? std::atoi(argv[2]) : 32;
  struct S { const char* name; int in, out; } shapes[] = {
      {"img_in", 64, 3072},           {"txt_in", 4096, 3072},        {"final_layer.linear", 3072, 64},
      {"img_attn.qkv", 3072, 9216},   {"img_mlp.0", 3072, 12288},    {"single linear1", 3072, 21504},
      {"single linear2", 15360, 3072}};
  std::mt19937 g(1);
  std::normal_distribution<float> n(0.f, 1.f);
  std::printf("M=%d tokens, rank %d, OpenBLAS sgemm, best of 3\n", M, r);
  std::printf("%-20s %10s %12s %8s %14s\n", "layer", "base ms", "+unfused ms", "extra", "merge ms");
  for (const auto& s : shapes) {
    std::vector<float> X((size_t)M * s.in), W((size_t)s.out * s.in), W0, A((size_t)r * s.in), B((size_t)s.out * r),
        Y((size_t)M * s.out), T((size_t)M * r);
    for (auto* v : {&X, &W, &A, &B})
      for (auto& x : *v) x = n(g);
    double base = 1e9, unf = 1e9, merge = 1e9;
    for (int it = 0; it < 3; ++it) {
      auto t = std::chrono::steady_clock::now();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, s.out, s.in, 1.f, X.data(), s.in, W.data(), s.in, 0.f, Y.data(), s.out);
      base = std::min(base, secs(t));
      t = std::chrono::steady_clock::now();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, s.out, s.in, 1.f, X.data(), s.in, W.data(), s.in, 0.f, Y.data(), s.out);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, r, s.in, 1.f, X.data(), s.in, A.data(), s.in, 0.f, T.data(), r);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, s.out, r, 0.7f, T.data(), r, B.data(), r, 1.f, Y.data(), s.out);
      unf = std::min(unf, secs(t));
      t = std::chrono::steady_clock::now();
      W0 = W;  // kept for bit-exact removal
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.out, s.in, r, 0.7f, B.data(), r, A.data(), s.in, 1.f, W.data(), s.in);
      merge = std::min(merge, secs(t));
      W = W0;
    }
    std::printf("%-20s %10.2f %12.2f %7.1f%% %14.2f\n", s.name, base * 1e3, unf * 1e3, 100 * (unf - base) / base, merge * 1e3);
  }
}
