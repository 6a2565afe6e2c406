// Shared device helpers for the kernels: error checks, cp.async, ldmatrix, mma wrappers, BF16 bits.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "svdq/tensor.h"

namespace svdq::cuda {

// Turns a CUDA status into svdq::Error naming the kernel or call (the binding makes it a JS exception).
inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("cuda: ") + what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}
// After a launch: configuration errors surface here, asynchronous faults at the next synchronizing call.
inline void checkLaunch(const char* kernel) { check(cudaGetLastError(), kernel); }
inline cudaStream_t asStream(void* s) { return static_cast<cudaStream_t>(s); }

__device__ __forceinline__ float bf16BitsToF32(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
// Round to nearest even, like svdq::quant::roundBf16 (NaN/inf pass through).
__device__ __forceinline__ uint16_t f32ToBf16Bits(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
__device__ __forceinline__ float roundBf16(float v) { return bf16BitsToF32(f32ToBf16Bits(v)); }

__device__ __forceinline__ uint32_t smemAddr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// 16-byte async copy global -> shared; `valid` false zero-fills the destination (out-of-range rows/columns).
__device__ __forceinline__ void cpAsync16(void* smem, const void* gmem, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smemAddr(smem)), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrixX4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smemAddr(smem)));
}
__device__ __forceinline__ void ldmatrixX2(uint32_t (&r)[2], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smemAddr(smem)));
}

// D += A.B, 16x8x64 signed 4-bit (native on sm_80/86/89; emulated and slow on sm_90).
__device__ __forceinline__ void mmaS4(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Same with unsigned 4-bit A (shifted GELU activations, 0..15) and signed B.
__device__ __forceinline__ void mmaU4S4(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.u4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// D += A.B, 16x8x32 signed 8-bit.
__device__ __forceinline__ void mmaS8(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                      uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// D += A.B, 16x8x16 BF16 with F32 accumulation.
__device__ __forceinline__ void mmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Eight packed signed nibbles -> two words of four signed bytes: the even nibbles (k = 0,2,4,6) and the
// odd ones. Flipping bit 3 biases a nibble to 0..15; adding 0x78 and flipping bit 7 per byte subtracts
// the bias again (no carry crosses a byte: 15 + 0x78 = 0x87).
__host__ __device__ __forceinline__ uint32_t s4EvenToS8(uint32_t w) {
  return (((w ^ 0x88888888u) & 0x0f0f0f0fu) + 0x78787878u) ^ 0x80808080u;
}
__host__ __device__ __forceinline__ uint32_t s4OddToS8(uint32_t w) {
  return ((((w ^ 0x88888888u) >> 4) & 0x0f0f0f0fu) + 0x78787878u) ^ 0x80808080u;
}

// Unsigned nibbles (0..15) are already valid non-negative INT8 bytes once spread.
__host__ __device__ __forceinline__ uint32_t u4EvenToS8(uint32_t w) { return w & 0x0f0f0f0fu; }
__host__ __device__ __forceinline__ uint32_t u4OddToS8(uint32_t w) { return (w >> 4) & 0x0f0f0f0fu; }

__device__ __forceinline__ float geluTanh(float x) {
  const float k0 = 0.7978845608028654f, k1 = 0.044715f;
  return 0.5f * x * (1.f + tanhf(k0 * (x + k1 * x * x * x)));
}

}  // namespace svdq::cuda
