// The quantizer's numeric primitives against independent float64 references on fresh random data:
// INT4 (signed/unsigned) and NVFP4 round trips, nibble packing, the group-wise W4A4 GEMM, top-r SVD.
import test from 'ava';
import { Matrix, SingularValueDecomposition } from 'ml-matrix';
import { quantNative as q } from '../../sidecar/quant/native.ts';
import { bf16, E2M1, gaussian, refQuantInt4, refUnpack, relErr, rng } from './helpers/quant-ref.ts';

test('INT4 g64: codes and scales equal the definition; round-trip error bounded', (t) => {
  const rows = 37, cols = 256;
  const x = gaussian(rows * cols, 11);
  for (let i = 0; i < 20; i++) x[(i * 977) % x.length] *= 30; // outliers inside some groups
  const { q: codes, scales } = q.quantizeInt4(x, rows, cols);
  const ref = refQuantInt4(x, rows, cols);
  t.deepEqual(Array.from(codes), Array.from(ref.q));
  t.deepEqual(Array.from(scales), Array.from(ref.scales));
  for (const s of scales) t.is(bf16(s), s, 'scales are BF16 values');
  const d = q.dequantizeInt4(codes, scales, rows, cols);
  for (let i = 0; i < x.length; i++) {
    const s = scales[Math.floor(i / 64)];
    if (!(Math.abs(d[i] - x[i]) <= s / 2 + 1e-6 * Math.abs(x[i]))) t.fail(`element ${i}: |${d[i]} - ${x[i]}| > ${s}/2`);
  }
  // Gaussian groups of 64: step ~ amax/7 ~ 0.35 sigma, so the error is ~10% of the RMS.
  const g = gaussian(rows * cols, 12);
  const gq = q.quantizeInt4(g, rows, cols);
  const e = relErr(q.dequantizeInt4(gq.q, gq.scales, rows, cols), g);
  t.true(e < 0.12 && e > 0.05, `relative error ${e}`);
  t.true(codes.every((v) => v >= -8 && v <= 7));
});

test('INT4 unsigned: [0, 15], scale = bf16(max/15), zero group stays zero', (t) => {
  const rows = 4, cols = 128;
  const r = rng(3);
  const x = new Float32Array(rows * cols).map(() => r() * 2);
  x.fill(0, 64, 128); // one all-zero group
  const { q: codes, scales } = q.quantizeInt4(x, rows, cols, true);
  const ref = refQuantInt4(x, rows, cols, true);
  t.deepEqual(Array.from(codes), Array.from(ref.q));
  t.deepEqual(Array.from(scales), Array.from(ref.scales));
  t.is(scales[1], 0);
  t.true(codes.every((v) => v >= 0 && v <= 15));
  const e = relErr(q.dequantizeInt4(codes, scales, rows, cols), x);
  t.true(e < 0.05, `relative error ${e}`);
});

test('W4A4 NVFP4 GEMM equals the float64 product of the dequantized operands', (t) => {
  const M = 6, N = 5, K = 96;
  // Rows quantized one at a time, each with its own tensor scale (as the engine does per token).
  const A = gaussian(M * K, 23), rows = Array.from({ length: M }, (_, m) => q.quantizeNvfp4(A.subarray(m * K, (m + 1) * K), 1, K));
  const ca = new Uint8Array(M * K), ga = new Uint8Array((M * K) / 16), ta = new Float32Array(M);
  rows.forEach((r, m) => (ca.set(r.codes, m * K), ga.set(r.gscales, (m * K) / 16), (ta[m] = r.tensorScale)));
  const w = q.quantizeNvfp4(gaussian(N * K, 24, 0.05), N, K);
  const y = q.gemmW4A4Nvfp4(ca, ga, ta, M, w.codes, w.gscales, w.tensorScale, N, K);
  const da = rows.map((r) => q.dequantizeNvfp4(r.codes, r.gscales, r.tensorScale, 1, K));
  const dw = q.dequantizeNvfp4(w.codes, w.gscales, w.tensorScale, N, K);
  const ref = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += da[m]![k]! * dw[n * K + k]!;
      ref[m * N + n] = acc;
    }
  t.true(relErr(y, ref) < 1e-6, `rel ${relErr(y, ref)}`);
  t.throws(() => q.gemmW4A4Nvfp4(ca, ga, ta, M, w.codes, w.gscales, w.tensorScale, N, 90), { message: /K 90 is not a multiple of 16/ });
  t.throws(() => q.gemmW4A4Nvfp4(ca, ga, ta.subarray(1), M, w.codes, w.gscales, w.tensorScale, N, K), { message: /atscale/ });
});
test('INT4 rejects a row length that is not a multiple of the group', (t) => {
  t.throws(() => q.quantizeInt4(new Float32Array(100), 1, 100), { message: /100 columns is not a multiple of the group size 64/ });
});

test('NVFP4: E2M1 codes, E4M3 group scales, bounded round trip', (t) => {
  const rows = 16, cols = 128;
  const x = gaussian(rows * cols, 5, 0.02);
  x[17] = 3; // one large value: the tensor scale adapts, other groups use small E4M3 scales
  const r = q.quantizeNvfp4(x, rows, cols);
  t.true(r.tensorScale > 0 && Number.isFinite(r.tensorScale));
  const d = q.dequantizeNvfp4(r.codes, r.gscales, r.tensorScale, rows, cols);
  for (let i = 0; i < x.length; i++) {
    const c = r.codes[i];
    t.true(c < 16);
    const g = Math.floor(i / 16);
    // Decoded = ±E2M1[c & 7] * groupScale; the groupScale is d / value where value != 0.
    if ((c & 7) !== 0) {
      const gs = Math.abs(d[i]) / E2M1[c & 7];
      // Largest gap between E2M1 values is 2 (4 -> 6): error at most one group-scale unit.
      if (!(Math.abs(d[i] - x[i]) <= gs * 1.0001)) t.fail(`element ${i} group ${g}`);
    }
  }
  const e = relErr(d, x);
  t.true(e < 0.2, `relative error ${e}`);
  t.is(d[17], 3, 'the group maximum is represented exactly (6 x scale)');
});

test('nibble packing: low nibble = even index, round trip over all values', (t) => {
  const vals = new Int8Array(64).map((_, i) => (i % 16) - 8);
  const p = q.packNibbles(vals);
  t.is(p.length, 32);
  t.is(p[0], ((vals[0] & 15) | ((vals[1] & 15) << 4)) & 255);
  t.deepEqual(Array.from(q.unpackNibbles(p, 64, true)), Array.from(vals));
  t.deepEqual(Array.from(refUnpack(p, 64, true)), Array.from(vals));
  const u = new Int8Array(32).map((_, i) => i % 16);
  t.deepEqual(Array.from(q.unpackNibbles(q.packNibbles(u), 32, false)), Array.from(u));
});

test('W4A4 INT4 GEMM equals exact integer group dots times both scales (float64 reference)', (t) => {
  const M = 5, N = 7, K = 192, G = K / 64;
  const a = refQuantInt4(gaussian(M * K, 21), M, K);
  const w = refQuantInt4(gaussian(N * K, 22), N, K);
  const y = q.gemmW4A4Int4(a.q, a.scales, M, w.q, w.scales, N, K);
  const ref = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let g = 0; g < G; g++) {
        let d = 0;
        for (let j = 0; j < 64; j++) d += a.q[m * K + g * 64 + j] * w.q[n * K + g * 64 + j];
        acc += d * a.scales[m * G + g] * w.scales[n * G + g];
      }
      ref[m * N + n] = acc;
    }
  t.true(relErr(y, ref) < 1e-6, `rel ${relErr(y, ref)}`);
});

function checkSvd(t: import('ava').ExecutionContext, m: number, n: number, r: number, how: 'exact' | 'randomized', seed: number) {
  // A matrix with a decaying spectrum (so the top-r subspace is well separated).
  const base = gaussian(m * n, seed);
  const A = new Matrix(m, n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) A.set(i, j, base[i * n + j]);
  const ref0 = new SingularValueDecomposition(A);
  const U0 = ref0.leftSingularVectors, V0 = ref0.rightSingularVectors;
  const k = Math.min(m, n);
  const sv = Array.from({ length: k }, (_, i) => 10 * Math.pow(0.7, i));
  const Am = U0.subMatrix(0, m - 1, 0, k - 1).mmul(Matrix.diag(sv)).mmul(V0.subMatrix(0, n - 1, 0, k - 1).transpose());
  const flat = new Float32Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) flat[i * n + j] = Am.get(i, j);
  const ref = new SingularValueDecomposition(Am);
  const res = q.svd(flat, m, n, r, how);
  for (let i = 0; i < r; i++) {
    t.true(Math.abs(res.S[i] - ref.diagonal[i]) / ref.diagonal[0] < 1e-4, `${how} S[${i}] ${res.S[i]} vs ${ref.diagonal[i]}`);
    // singular vectors up to sign
    let dotU = 0, dotV = 0;
    for (let a = 0; a < m; a++) dotU += res.U[a * r + i] * ref.leftSingularVectors.get(a, i);
    for (let b = 0; b < n; b++) dotV += res.Vt[i * n + b] * ref.rightSingularVectors.get(b, i);
    t.true(Math.abs(Math.abs(dotU) - 1) < 1e-3, `${how} U[:,${i}] |dot| ${dotU}`);
    t.true(Math.abs(dotV * Math.sign(dotU) - 1) < 1e-3, `${how} V[:,${i}] signed like U: ${dotV}`);
  }
}

test('top-r SVD (LAPACK) equals a float64 reference SVD up to sign', (t) => checkSvd(t, 60, 48, 6, 'exact', 31));
test('randomized top-r SVD equals a float64 reference SVD up to sign', (t) => checkSvd(t, 120, 90, 8, 'randomized', 41));

test('randomized SVD warm start: from the right singular vectors, no power iteration is needed', (t) => {
  // A slowly decaying spectrum, where one pass from random directions is visibly off.
  const m = 200, n = 150, r = 8;
  const base = gaussian(m * n, 51);
  const A0 = new Matrix(m, n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) A0.set(i, j, base[i * n + j]);
  const d = new SingularValueDecomposition(A0);
  const sv = Array.from({ length: n }, (_, i) => Math.pow(0.97, i));
  const Am = d.leftSingularVectors.subMatrix(0, m - 1, 0, n - 1).mmul(Matrix.diag(sv)).mmul(d.rightSingularVectors.transpose());
  const flat = new Float32Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) flat[i * n + j] = Am.get(i, j);
  const exact = q.svd(flat, m, n, r, 'exact');
  const maxErr = (S: Float32Array) => Math.max(...Array.from(S, (v, i) => Math.abs(v - sv[i]!) / sv[0]!));
  const cold = q.svd(flat, m, n, r, 'randomized', { powerIters: 0, oversample: 8 });
  const warm = q.svd(flat, m, n, r, 'randomized', { powerIters: 0, oversample: 8, start: exact.Vt });
  t.log({ cold: maxErr(cold.S), warm: maxErr(warm.S) });
  t.true(maxErr(exact.S) < 1e-4);
  t.true(maxErr(warm.S) < 1e-4, `warm ${maxErr(warm.S)}`);
  t.true(maxErr(cold.S) > 10 * maxErr(warm.S), `cold ${maxErr(cold.S)}`);
  t.throws(() => q.svd(flat, m, n, r, 'randomized', { start: new Float32Array(n + 1) }), { message: /start has 151 values, not rows of 150/ });
});

test('SVD rejects a rank beyond min(m, n)', (t) => {
  t.throws(() => q.svd(new Float32Array(12), 3, 4, 4), { message: /rank 4 out of range for a \[3, 4\] matrix/ });
});
