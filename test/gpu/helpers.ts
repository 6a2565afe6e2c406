// Loads the addon's gpu bindings (native/binding/gpu.cpp) for the GPU tests and the GEMM benchmark,
// and decides whether GPU tests run: they skip with a message where no CUDA device is present, and
// fail instead when SVDQ_REQUIRE_GPU=1 (scripts/gpu-check.sh sets it, so a broken driver cannot pass).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

type F32 = Float32Array;
export interface GpuPair { gpu: F32; cpu: F32 }
export interface QuantSide { q: Int8Array; scales: F32; tensorScale?: F32; loraAct?: F32 }
export interface BenchTimes { quant: number; gemm: number; fused: number; plain: number; unfused: number | null; bf16: number | null }
export interface GpuBinding {
  available(): boolean;
  info(): { built: boolean; device: string; computeCapability: number; cublasLt: boolean };
  quantizeAct(o: Record<string, unknown>): { gpu: QuantSide; cpu: QuantSide };
  gemmW4A4(o: Record<string, unknown>): { gpu: F32; cpu: F32; cpuRaw: F32 };
  w4a4Layer(o: Record<string, unknown>): GpuPair;
  w4a16(o: Record<string, unknown>): GpuPair;
  gemmBf16(o: Record<string, unknown>): GpuPair;
  benchGemm(o: Record<string, unknown>): BenchTimes;
}

/** SVDQ_ADDON overrides the addon path (a build in another folder). */
export const addonPath =
  process.env.SVDQ_ADDON ?? fileURLToPath(new URL('../../native/build/Release/svdq.node', import.meta.url));

export function loadGpu(): { gpu: GpuBinding | null; why: string } {
  if (!existsSync(addonPath)) return { gpu: null, why: `addon not built (${addonPath}); run npm run build` };
  const addon = createRequire(import.meta.url)(addonPath) as { gpu?: GpuBinding };
  if (!addon.gpu) return { gpu: null, why: 'addon has no gpu bindings' };
  const info = addon.gpu.info();
  if (!info.built) return { gpu: null, why: 'addon built without CUDA (no nvcc at configure time)' };
  if (!addon.gpu.available()) return { gpu: null, why: 'no CUDA device available' };
  return { gpu: addon.gpu, why: '' };
}

export const requireGpu = process.env.SVDQ_REQUIRE_GPU === '1';

export function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

/** Index of the first non-finite value, or -1 (outputs are poisoned with NaN before each run). */
export function firstNonFinite(a: ArrayLike<number>): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return i;
  return -1;
}

/** Index of the first element whose bits differ (Object.is: -0 and +0 differ, NaN equals NaN), or -1. */
export function firstBitDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i]) && !(a[i] === 0 && b[i] === 0)) return i;
  return -1;
}
