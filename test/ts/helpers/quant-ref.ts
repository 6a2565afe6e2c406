// Independent float64 references for the quantizer tests (written from the format's definition, not
// from the C++): BF16 rounding, round-half-even, INT4 group quantization, nibble decoding, a seeded RNG.

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
