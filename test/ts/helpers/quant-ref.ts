// Independent float64 references for the quantizer tests (written from the format's definition, not
// from the C++): BF16 rounding, round-half-even, INT4 group quantization, nibble and E4M3/E2M1 decoding,
// a W4A4 INT4 layer's forward and effective weight from its stored parts, GPTQ, a seeded RNG.

import type { QuantizedLayerParts } from '../../../sidecar/quant/native.ts';
import { rng } from '../../../tools/fixtures/outlier-flux.ts';

export { rng };

export function gaussian(n: number, seed: number, sigma = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12);
    out[i] = sigma * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
  }
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
export function bf16(v: number): number {
  f32[0] = v;
  let u = u32[0];
  u = (u + 0x7fff + ((u >>> 16) & 1)) >>> 0;
  u32[0] = (u & 0xffff0000) >>> 0;
  return f32[0];
}

export function rintEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v - Math.trunc(v)) === 0.5 ? 2 * Math.round(v / 2) : r;
}

/** INT4 per group of 64, as the format defines it: scale = bf16(amax/7), q = rint_even(v/scale) in [-8, 7]. */
export function refQuantInt4(x: ArrayLike<number>, rows: number, cols: number, unsigned = false) {
  const G = cols / 64;
  const q = new Int8Array(rows * cols);
  const scales = new Float32Array(rows * G);
  const [lo, hi] = unsigned ? [0, 15] : [-8, 7];
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < G; g++) {
      let amax = 0;
      for (let j = 0; j < 64; j++) {
        const v = x[r * cols + g * 64 + j];
        amax = Math.max(amax, unsigned ? v : Math.abs(v));
      }
      const s = bf16(Math.fround(amax / hi));
      scales[r * G + g] = s;
      for (let j = 0; j < 64; j++) {
        const v = x[r * cols + g * 64 + j];
        q[r * cols + g * 64 + j] = s > 0 ? Math.min(hi, Math.max(lo, rintEven(Math.fround(v / s)))) : 0;
      }
    }
  return { q, scales };
}

/** Decodes packed nibbles (low nibble = even index). */
export function refUnpack(p: Uint8Array, n: number, signed: boolean): Int8Array {
  const q = new Int8Array(n);
  for (let i = 0; i < n; i++) {
    let v = (p[i >> 1] >> ((i & 1) * 4)) & 15;
    if (signed && v >= 8) v -= 16;
    q[i] = v;
  }
  return q;
}

export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  let t = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) return Number.NaN;
    e += (a[i] - b[i]) ** 2;
    t += b[i] ** 2;
  }
  return Math.sqrt(e / t);
}

/** Row-major [M, K] x [N, K]^T in float64. */
export function matmulNT(a: ArrayLike<number>, b: ArrayLike<number>, M: number, N: number, K: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += a[m * K + k] * b[n * K + k];
      y[m * N + n] = s;
    }
  return y;
}

/** A layer whose inputs have a few outlier channels (like FLUX's) and a weight with mild structure. */
export function outlierLayer(N: number, K: number, S: number, seed: number) {
  const W = gaussian(N * K, seed, 1 / Math.sqrt(K));
  const X = gaussian(S * K, seed + 1);
  const r = rng(seed + 2);
  const outliers = new Set<number>();
  while (outliers.size < Math.max(2, K >> 6)) outliers.add(Math.floor(r() * K));
  for (const k of outliers) for (let s = 0; s < S; s++) X[s * K + k] *= 40;
  // A low-rank component in W, the kind of structure the SVD branch absorbs.
  const u = gaussian(N * 4, seed + 3), v = gaussian(4 * K, seed + 4);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      let s = 0;
      for (let j = 0; j < 4; j++) s += u[n * 4 + j] * v[j * K + k];
      W[n * K + k] += (0.5 * s) / Math.sqrt(K);
    }
  return { W, X, outliers: [...outliers] };
}

/** Inverse of a symmetric positive definite [K, K] matrix by Gauss-Jordan elimination, float64. */
function invertSpd(A: Float64Array, K: number): Float64Array {
  const a = Float64Array.from(A);
  const inv = new Float64Array(K * K);
  for (let i = 0; i < K; i++) inv[i * K + i] = 1;
  for (let i = 0; i < K; i++) {
    const p = a[i * K + i];
    for (let j = 0; j < K; j++) (a[i * K + j] /= p), (inv[i * K + j] /= p);
    for (let r = 0; r < K; r++) {
      const f = a[r * K + i];
      if (r === i || f === 0) continue;
      for (let j = 0; j < K; j++) (a[r * K + j] -= f * a[i * K + j]), (inv[r * K + j] -= f * inv[i * K + j]);
    }
  }
  return inv;
}

/**
 * GPTQ in its original column-by-column form, float64 and unblocked: quantize column i, spread its error
 * over the later columns through the inverse Hessian of the not-yet-quantized columns, then eliminate i
 * from that inverse (OBQ's update; the paper's Cholesky form is algebraically the same). INT4 groups of 64,
 * each group's scale = bf16(amax/7) of its error-updated weights when the group starts. H = XᵀX, damped
 * by percdamp times the mean of its non-zero diagonal; a zero diagonal (dead column) gets that mean.
 */
export function refGptqInt4(W: ArrayLike<number>, N: number, K: number, X: ArrayLike<number>, S: number, percdamp = 0.01) {
  const H = new Float64Array(K * K);
  for (let s = 0; s < S; s++)
    for (let i = 0; i < K; i++) {
      const xi = X[s * K + i];
      if (xi !== 0) for (let j = 0; j < K; j++) H[i * K + j] += xi * X[s * K + j];
    }
  let sum = 0, live = 0;
  for (let k = 0; k < K; k++) if (H[k * K + k] > 0) (sum += H[k * K + k]), live++;
  const mean = sum / live;
  for (let k = 0; k < K; k++) {
    if (!(H[k * K + k] > 0)) H[k * K + k] = mean;
    H[k * K + k] += percdamp * mean;
  }
  const Hinv = invertSpd(H, K);
  const w = Float64Array.from(W);
  const q = new Int8Array(N * K);
  const scales = new Float32Array((N * K) / 64);
  for (let i = 0; i < K; i++) {
    if (i % 64 === 0)
      for (let n = 0; n < N; n++) {
        let amax = 0;
        for (let j = i; j < i + 64; j++) amax = Math.max(amax, Math.abs(Math.fround(w[n * K + j])));
        scales[n * (K / 64) + i / 64] = bf16(Math.fround(amax / 7));
      }
    const d = Hinv[i * K + i];
    for (let n = 0; n < N; n++) {
      const s = scales[n * (K / 64) + Math.floor(i / 64)];
      const v = Math.fround(w[n * K + i]);
      const c = s > 0 ? Math.min(7, Math.max(-8, rintEven(Math.fround(v / s)))) : 0;
      q[n * K + i] = c;
      const e = (w[n * K + i] - c * s) / d;
      for (let j = i + 1; j < K; j++) w[n * K + j] -= e * Hinv[i * K + j];
    }
    for (let r = i + 1; r < K; r++) {
      const f = Hinv[r * K + i] / d;
      if (f !== 0) for (let j = i + 1; j < K; j++) Hinv[r * K + j] -= f * Hinv[i * K + j];
    }
  }
  return { q, scales };
}

/** E2M1 magnitudes by code & 7 (bit 3 is the sign). */
export const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];

/** FP8 E4M3 ("fn": bias 7, subnormals, 0x7f / 0xff NaN, no infinities). */
export function decodeE4m3(b: number): number {
  const e = (b >> 3) & 15, m = b & 7;
  if (e === 15 && m === 7) return Number.NaN;
  const v = e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7);
  return b & 0x80 ? -v : v;
}

/** The stored 4-bit residual de-quantized, [N, Kp] in float64 (INT4 or NVFP4 parts). */
export function refDequantResidual(p: QuantizedLayerParts, N: number): Float64Array {
  const Kp = p.inPadded;
  if (p.wscales8.length) {
    const c = refUnpack(p.qweight, N * Kp, false);
    return new Float64Array(N * Kp).map((_, i) => (c[i] & 8 ? -1 : 1) * E2M1[c[i] & 7] * decodeE4m3(p.wscales8[Math.floor(i / 16)]) * p.wtscale);
  }
  const q = refUnpack(p.qweight, N * Kp, true);
  return new Float64Array(N * Kp).map((_, i) => q[i] * p.wscales[Math.floor(i / 64)]);
}

/** The weight the layer applies to a raw input when activations are not quantized: deq(R)/smooth + up·down. [N, K] */
export function refEffectiveWeight(p: QuantizedLayerParts, N: number, K: number): Float64Array {
  const Kp = p.inPadded, r = p.rank;
  const R = refDequantResidual(p, N);
  const w = new Float64Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      let v = R[n * Kp + k] / p.smooth[k];
      for (let j = 0; j < r; j++) v += p.loraUp[n * r + j] * p.loraDown[j * K + k];
      w[n * K + k] = v;
    }
  return w;
}

/** y = deq(Q((x + shift)/smooth)) . deq(R)^T + bias + (x . down^T) . up^T for an INT4 layer, float64 from its parts. */
export function refW4A4Int4Forward(p: QuantizedLayerParts, x: Float32Array, M: number, N: number, K: number): Float64Array {
  const Kp = p.inPadded;
  const xs = new Float32Array(M * Kp);
  for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) xs[m * Kp + k] = Math.fround((x[m * K + k] + p.actShift) / p.smooth[k]);
  const a = refQuantInt4(xs, M, Kp, p.actShift > 0);
  const qa = new Float64Array(M * Kp).map((_, i) => a.q[i] * a.scales[Math.floor(i / 64)]);
  const y = matmulNT(qa, refDequantResidual(p, N), M, N, Kp);
  const r = p.rank;
  if (r > 0) {
    const t = matmulNT(x, p.loraDown, M, r, K);
    const l = matmulNT(t, p.loraUp, M, N, r);
    for (let i = 0; i < y.length; i++) y[i] += l[i];
  }
  if (p.bias.length) for (let i = 0; i < y.length; i++) y[i] += p.bias[i % N];
  return y;
}

/**
 * A layer whose inputs are correlated (a shared rank-8 signal under weak independent noise) with a few
 * outlier channels, and one input channel the sample never excites (zero): where GPTQ's error feedback
 * should pay off, and its dead-column path is exercised.
 */
export function correlatedLayer(N: number, K: number, S: number, seed: number) {
  const W = outlierLayer(N, K, 1, seed).W;
  const mix = gaussian(8 * K, seed + 10);
  const rows = (M: number, s: number) => {
    const Z = gaussian(M * K, s), F = gaussian(M * 8, s + 1);
    const X = new Float32Array(M * K);
    for (let m = 0; m < M; m++)
      for (let k = 0; k < K; k++) {
        let v = 0.3 * Z[m * K + k];
        for (let j = 0; j < 8; j++) v += F[m * 8 + j] * mix[j * K + k];
        X[m * K + k] = k === 1 ? 0 : k % 37 === 0 ? 20 * v : v;
      }
    return X;
  };
  return { W, X: rows(S, seed + 20), held: (M: number) => rows(M, seed + 30) };
}
