// One quantized layer: its CPU forward against a float64 reference built from its stored parts, the
// method ordering on a layer with activation outliers, and clear errors for bad input.
import test from 'ava';
import { quantNative as q } from '../../sidecar/quant/native.ts';
import { matmulNT, outlierLayer, refW4A4Int4Forward, relErr } from './helpers/quant-ref.ts';

const N = 96, K = 256, S = 128;
const layer = outlierLayer(N, K, S, 7);
const bias = new Float32Array(N).map((_, i) => 0.01 * (i % 7));

test('W4A4 INT4 layer forward equals the float64 dequantized reference from its stored parts', (t) => {
  const M = 9;
  const x = outlierLayer(N, K, M, 99).X;
  const p = q.quantizeLayer({ W: layer.W, N, K, bias, sample: layer.X, S, x, M, rank: 16, refine: 3 });
  t.is(p.kind, 'svdq-int4-r16');
  t.is(p.loraDown.length, 16 * K);
  t.true(p.smooth.every((v) => v > 0));
  const e = relErr(p.y!, refW4A4Int4Forward(p, x, M, N, K));
  t.true(e < 1e-5, `kernel vs reference ${e}`);
});

test('unsigned shifted activations (GELU inputs): forward equals the reference, bias carries the compensation', (t) => {
  // A GELU-like input: bounded below by -0.17.
  const X = layer.X.map((v) => Math.max(v * 0.3, -0.17));
  const M = 6;
  const x = X.slice(0, M * K);
  const p = q.quantizeLayer({ W: layer.W, N, K, bias, sample: X, S, x, M, rank: 16, refine: 0, unsignedShift: true, gridStep: 0.25 });
  t.true(relErr(p.y!, refW4A4Int4Forward(p, x, M, N, K)) < 1e-5);
  if (p.actShift > 0) t.is(p.actShift, 0.171875);
  t.log(`kind ${p.kind}, shift ${p.actShift}, sample error ${p.sampleRelError.toFixed(4)}`);
  t.true(p.sampleRelError < 0.2);
});

test('on outlier activations SVDQuant beats SmoothQuant and naive W4A4; refinement does not hurt', (t) => {
  const run = (o: Partial<Parameters<typeof q.quantizeLayer>[0]>) =>
    q.quantizeLayer({ W: layer.W, N, K, bias, sample: layer.X, S, rank: 16, gridStep: 0.1, ...o }).sampleRelError;
  const naive = run({ method: 'naive' });
  const smooth = run({ method: 'smoothquant' });
  const lowrank = run({ method: 'lowrank' });
  const svdq0 = run({ method: 'svdquant', refine: 0 });
  const svdq = run({ method: 'svdquant', refine: 8 });
  const whiten = run({ method: 'svdquant', lowrank: 'whiten' });
  const corda = run({ method: 'svdquant', lowrank: 'corda' });
  const fp4 = run({ method: 'svdquant', precision: 'nvfp4' });
  const w4a16 = run({ method: 'w4a16' });
  t.log({ naive, smooth, lowrank, svdq0, svdq, whiten, corda, fp4, w4a16 });
  for (const v of [naive, smooth, lowrank, svdq0, svdq, whiten, corda, fp4, w4a16]) t.true(Number.isFinite(v));
  t.true(svdq < 0.7 * naive, 'clearly better than naive');
  t.true(svdq < 0.9 * smooth, 'clearly better than SmoothQuant');
  t.true(svdq <= svdq0 * (1 + 1e-6), 'refinement keeps the best iterate');
  t.true(w4a16 < naive, 'weight-only is easier than W4A4');
});

test('a sample larger than the search subset: the reported error is the whole sample\'s; refine-tol only stops earlier', (t) => {
  // The smoothing search scores on 128 rows; refinement and the reported error must use all 300.
  const S2 = 300, l = outlierLayer(N, K, S2, 17);
  const run = (refineTol: number) =>
    q.quantizeLayer({ W: l.W, N, K, bias, sample: l.X, S: S2, rank: 16, refine: 8, refineTol, gridStep: 0.25 });
  const loose = run(0.05), strict = run(0);
  t.log({ loose: [loose.refineSteps, loose.relError], strict: [strict.refineSteps, strict.relError] });
  for (const p of [loose, strict]) {
    t.true(Number.isFinite(p.relError));
    t.true(Math.abs(p.relError - p.sampleRelError) <= 1e-4 * p.sampleRelError, `reported ${p.relError} vs kernel ${p.sampleRelError}`);
  }
  t.true(strict.refineSteps >= loose.refineSteps, 'a tolerance never refines longer');
  t.true(strict.relError <= loose.relError * (1 + 1e-9), 'the same iterates, the best kept');
});

test('coarse-to-fine smoothing search: a fine-grid point, within a few percent of the exhaustive search', (t) => {
  const run = (exhaustiveGrid: boolean) =>
    q.quantizeLayer({ W: layer.W, N, K, bias, sample: layer.X, S, rank: 16, refine: 0, gridStep: 0.05, exhaustiveGrid });
  const fast = run(false), full = run(true);
  t.log({ fast: [fast.smoothing, fast.sampleRelError], full: [full.smoothing, full.sampleRelError] });
  t.true(Number.isFinite(fast.sampleRelError));
  t.true(full.sampleRelError <= fast.sampleRelError * (1 + 1e-9), 'the exhaustive search sees every candidate');
  t.true(fast.sampleRelError <= 1.03 * full.sampleRelError, 'the coarse-to-fine search loses at most 3%');
  const a = /a=([0-9.]+)/.exec(fast.smoothing);
  t.truthy(a, `smoothing ${fast.smoothing}`);
  t.true(Math.abs(Number(a![1]) / 0.05 - Math.round(Number(a![1]) / 0.05)) < 1e-6, 'a lies on the 0.05 grid');
});

test('NVFP4 layer: finite, close to the 16-bit output on held-out rows', (t) => {
  const M = 16;
  const x = outlierLayer(N, K, M, 123).X;
  const p = q.quantizeLayer({ W: layer.W, N, K, bias, sample: layer.X, S, x, M, rank: 16, precision: 'nvfp4', gridStep: 0.2 });
  t.is(p.kind, 'svdq-nvfp4-r16');
  t.is(p.wscales8.length, N * (K / 16));
  const ref = matmulNT(x, layer.W, M, N, K).map((v, i) => v + bias[i % N]);
  const e = relErr(p.y!, ref);
  t.true(e < 0.15, `held-out error ${e}`);
});

test('in-features not a multiple of 64 are zero-padded (and still correct)', (t) => {
  const K2 = 200, M = 4;
  const l = outlierLayer(32, K2, 64, 5);
  const x = l.X.slice(0, M * K2);
  const p = q.quantizeLayer({ W: l.W, N: 32, K: K2, sample: l.X, S: 64, x, M, rank: 8, gridStep: 0.25 });
  t.is(p.inPadded, 256);
  t.is(p.qweight.length, 32 * 128);
  const ref = matmulNT(x, l.W, M, 32, K2);
  t.true(relErr(p.y!, ref) < 0.2);
});

test('bad layer input gives clear errors', (t) => {
  const base = { W: layer.W, N, K, sample: layer.X, S };
  t.throws(() => q.quantizeLayer({ ...base, rank: 97 }), { message: /rank 97 is out of range for a \[96, 256\] layer \(1..96\)/ });
  const bad = layer.W.slice();
  bad[300] = Number.NaN;
  t.throws(() => q.quantizeLayer({ ...base, W: bad }), { message: /layer\.weight: non-finite value at flat index 300/ });
  t.throws(() => q.quantizeLayer({ ...base, sample: layer.X.slice(0, 1000), S: 20 }), {
    message: /sample: 1000 values, expected 5120/,
  });
  t.throws(() => q.quantizeLayer({ ...base, precision: 'fp3' as 'int4' }), { message: /unknown precision 'fp3'/ });
});
