// CUDA kernels against the CPU reference (svdq::quant, W4A4Linear, W4A16Linear) on fresh random inputs
// of FLUX shapes and odd shapes: quantized activations and scales bit-exact, group-wise integer GEMM
// bit-exact before the float epilogue (both MMA paths), relative L2 bounds after it, NaN fails
// (every output buffer is poisoned with NaN before the run). Skips without a CUDA device.
import test from 'ava';
import { bf16, gaussian, rng } from '../ts/helpers/quant-ref.ts';
import { firstBitDiff, firstNonFinite, loadGpu, relL2, requireGpu } from './helpers.ts';

const { gpu, why } = loadGpu();
const gpuTest = gpu ? test : test.skip;
test('GPU present (or skipped with a reason)', (t) => {
  if (!gpu) {
    if (requireGpu) t.fail(`SVDQ_REQUIRE_GPU=1 but ${why}`);
    else t.log(`GPU tests skipped: ${why}`);
  } else t.log(`device: ${JSON.stringify(gpu.info())}`);
  t.pass();
});
const G = () => gpu!;

function activations(M: number, K: number, seed: number): Float32Array {
  const x = gaussian(M * K, seed);
  const r = rng(seed + 100);
  for (let i = 0; i < Math.max(2, K >> 6); i++) {  // outlier channels, as in FLUX activations
    const k = Math.floor(r() * K);
    for (let m = 0; m < M; m++) x[m * K + k] *= 30;
  }
  return x;
}
function uniform(n: number, lo: number, hi: number, seed: number, round = true): Float32Array {
  const r = rng(seed), out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = round ? bf16(lo + (hi - lo) * r()) : lo + (hi - lo) * r();
  return out;
}
function ints(n: number, lo: number, hi: number, seed: number): Int8Array {
  const r = rng(seed), out = new Int8Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + Math.floor(r() * (hi - lo + 1));
  return out;
}
function bytes(n: number, seed: number, lo = 0, hi = 255): Uint8Array {
  const r = rng(seed), out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + Math.floor(r() * (hi - lo + 1));
  return out;
}
function decodeE4m3(b: number): number {
  const e = (b >> 3) & 15, m = b & 7;
  const v = e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7);
  return b & 0x80 ? -v : v;
}
function assertFinite(t: import('ava').ExecutionContext, a: ArrayLike<number>, what: string) {
  const i = firstNonFinite(a);
  if (i >= 0) t.fail(`${what}: element ${i} is ${a[i]} (unwritten or NaN)`);
}

// ---------------- (1) fused activation quantization + low-rank down ----------------
const actCases = [
  { M: 4608, K: 3072, r: 32, name: 'FLUX qkv input (M=4608, K=3072, r=32)' },
  { M: 256, K: 15360, r: 32, name: 'FLUX single-block linear2 input (K=15360)' },
  { M: 77, K: 192, r: 16, name: 'odd: M=77, K=3 groups, r=16' },
  { M: 130, K: 12288, r: 48, unsigned: true, name: 'unsigned shifted GELU output (fc2, K=12288, r=48)' },
  { M: 1, K: 64, r: 0, name: 'one token, one group, no branch' },
];
for (const c of actCases) {
  gpuTest(`quantizeAct INT4 bit-exact: ${c.name}`, (t) => {
    const x = activations(c.M, c.K, c.M + c.K);
    if (c.unsigned) for (let i = 0; i < x.length; i++) x[i] = Math.max(x[i] / 30, -0.17);  // GELU-like range
    const smooth = uniform(c.K, 0.5, 2, 7);
    const loraDown = c.r ? gaussian(c.r * c.K, 9, 0.05) : undefined;
    const res = G().quantizeAct({ x, M: c.M, K: c.K, smooth, rank: c.r, loraDown, unsigned: !!c.unsigned, shift: c.unsigned ? 0.171875 : 0 });
    assertFinite(t, res.gpu.scales, 'scales');
    const dq = firstBitDiff(res.gpu.q, res.cpu.q);
    t.is(dq, -1, dq >= 0 ? `q differs at ${dq}: gpu ${res.gpu.q[dq]} cpu ${res.cpu.q[dq]}` : '');
    const ds = firstBitDiff(res.gpu.scales, res.cpu.scales);
    t.is(ds, -1, ds >= 0 ? `scale differs at ${ds}: gpu ${res.gpu.scales[ds]} cpu ${res.cpu.scales[ds]}` : '');
    if (c.r) {
      assertFinite(t, res.gpu.loraAct!, 'loraAct');
      const e = relL2(res.gpu.loraAct!, res.cpu.loraAct!);
      t.true(e < 3e-5, `low-rank down-projection relative L2 ${e}`);
    }
  });
}

gpuTest('quantizeAct NVFP4 bit-exact (codes, E4M3 group scales, per-token scale), K not a multiple of 64', (t) => {
  for (const [M, K] of [[300, 3072], [45, 208]] as const) {
    const x = activations(M, K, K);
    const smooth = uniform(K, 0.5, 2, 3);
    const loraDown = gaussian(32 * K, 4, 0.05);
    const res = G().quantizeAct({ x, M, K, smooth, rank: 32, loraDown, precision: 'nvfp4' });
    t.is(firstBitDiff(res.gpu.q, res.cpu.q), -1, `codes M=${M} K=${K}`);
    t.is(firstBitDiff(res.gpu.scales, res.cpu.scales), -1, `group scales M=${M} K=${K}`);
    t.is(firstBitDiff(res.gpu.tensorScale!, res.cpu.tensorScale!), -1, `tensor scales M=${M} K=${K}`);
    t.true(relL2(res.gpu.loraAct!, res.cpu.loraAct!) < 3e-5);
  }
});

// ---------------- (2) W4A4 GEMM ----------------
function int4Gemm(M: number, N: number, K: number, seed: number, unsignedAct = false) {
  const Gr = K / 64;
  return {
    M, N, K,
    qa: unsignedAct ? ints(M * K, 0, 15, seed) : ints(M * K, -8, 7, seed),
    qw: ints(N * K, -8, 7, seed + 1),
    ascales: uniform(M * Gr, 0.01, 1, seed + 2),
    wscales: uniform(N * Gr, 0.001, 0.02, seed + 3),
  };
}
const gemmCases = [
  { M: 4608, N: 384, K: 3072, name: 'FLUX M=4608, K=3072' },
  { M: 256, N: 3072, K: 12288, name: 'FLUX fc2 K=12288' },
  { M: 77, N: 136, K: 192, name: 'odd: M=77, N=136, K=3 groups' },
  { M: 129, N: 256, K: 15360, name: 'M=129 (two tiles, one row), K=15360' },
];
for (const path of ['s8', 's4'] as const) {
  for (const c of gemmCases) {
    gpuTest(`gemmW4A4 INT4 ${path}: group GEMM bit-exact before the epilogue: ${c.name}`, (t) => {
      const res = G().gemmW4A4({ ...int4Gemm(c.M, c.N, c.K, c.M + c.N), path });
      assertFinite(t, res.gpu, 'output');
      const d = firstBitDiff(res.gpu, res.cpuRaw);
      t.is(d, -1, d >= 0 ? `element ${d}: gpu ${res.gpu[d]} cpu ${res.cpuRaw[d]}` : '');
    });
  }
  gpuTest(`gemmW4A4 INT4 ${path}: unsigned activations (0..15) bit-exact`, (t) => {
    const res = G().gemmW4A4({ ...int4Gemm(200, 256, 1024, 5, true), actUnsigned: true, path });
    t.is(firstBitDiff(res.gpu, res.cpuRaw), -1);
  });
}

gpuTest('gemmW4A4 INT4 epilogue: bias + low-rank up (r=32) in F32 output, then GELU + gated residual in BF16', (t) => {
  const M = 333, N = 3072, K = 3072, r = 32, gateRows = 100;
  const base = int4Gemm(M, N, K, 21);
  const ep = {
    bias: uniform(N, -0.5, 0.5, 22, false), rank: r,
    loraAct: gaussian(M * r, 23), loraUp: gaussian(N * r, 24, 0.1),
  };
  const f = G().gemmW4A4({ ...base, ...ep });
  assertFinite(t, f.gpu, 'F32 output');
  const e1 = relL2(f.gpu, f.cpu);
  t.true(e1 < 1e-5, `bias + low-rank, F32 output: relative L2 ${e1}`);
  const gate = uniform(Math.ceil(M / gateRows) * N, -1, 1, 25), residual = gaussian(M * N, 26);
  const b = G().gemmW4A4({ ...base, ...ep, act: 'gelu', residual, gate, gateRows, bf16Out: true });
  assertFinite(t, b.gpu, 'BF16 output');
  const e2 = relL2(b.gpu, b.cpu);
  t.true(e2 < 4e-3, `full epilogue, BF16 output: relative L2 ${e2}`);
  t.true(e2 > 0, 'BF16 rounding must show');
});

gpuTest('gemmW4A4 NVFP4 (int8-emulated E2M1 MMA): group GEMM bit-exact, odd shapes', (t) => {
  for (const [M, N, K] of [[300, 256, 3072], [77, 130, 208]] as const) {
    const Gr = K / 16;
    const asb = bytes(M * Gr, 31, 0x20, 0x58);
    const res = G().gemmW4A4({
      precision: 'nvfp4', M, N, K,
      qa: ints(M * K, 0, 15, 32), qw: ints(N * K, 0, 15, 33),
      ascales: Float32Array.from(asb, decodeE4m3), wscales: bytes(N * Gr, 34, 0x20, 0x58),
      tensorScale: uniform(M, 0.001, 0.01, 35, false), wtscale: 0.0123,
    });
    assertFinite(t, res.gpu, 'output');
    const d = firstBitDiff(res.gpu, res.cpuRaw);
    t.is(d, -1, d >= 0 ? `M=${M} N=${N} K=${K} element ${d}: gpu ${res.gpu[d]} cpu ${res.cpuRaw[d]}` : '');
  }
});

// ---------------- layers: upload repack + fused quantize + GEMM vs W4A4Linear::forward ----------------
function w4a4Layer(M: number, inF: number, out: number, r: number, seed: number, precision: 'int4' | 'nvfp4', actShift = 0) {
  const g = precision === 'int4' ? 64 : 16;
  const Kp = Math.ceil(inF / g) * g, Gr = Kp / g;
  const x = activations(M, inF, seed);
  if (actShift) for (let i = 0; i < x.length; i++) x[i] = Math.max(x[i] / 30, -0.17);
  return {
    precision, M, in: inF, out, rank: r, x, actShift,
    qweight: bytes(out * Kp / 2, seed + 1),
    wscales: precision === 'int4' ? uniform(out * Gr, 0.001, 0.02, seed + 2) : bytes(out * Gr, seed + 2, 0x20, 0x50),
    wtscale: 0.01,
    smooth: uniform(inF, 0.5, 2, seed + 3),
    loraDown: gaussian(r * inF, seed + 4, 0.05), loraUp: gaussian(out * r, seed + 5, 0.05),
    bias: uniform(out, -0.5, 0.5, seed + 6, false),
  };
}
const layerCases = [
  { M: 4608, in: 3072, out: 3072, r: 32, p: 'int4', name: 'INT4 FLUX out_proj shape (M=4608)' },
  { M: 333, in: 3072, out: 384, r: 48, p: 'int4', shift: 0.171875, name: 'INT4 unsigned shifted activations, r=48' },
  { M: 50, in: 200, out: 136, r: 16, p: 'int4', name: 'INT4 odd: K=200 (padded to 256), N=136' },
  { M: 300, in: 3072, out: 256, r: 32, p: 'nvfp4', name: 'NVFP4 M=300' },
  { M: 45, in: 208, out: 130, r: 16, p: 'nvfp4', name: 'NVFP4 odd: K=208, N=130' },
] as const;
for (const c of layerCases) {
  for (const path of c.p === 'int4' ? (['s8', 's4'] as const) : (['auto'] as const)) {
    gpuTest(`w4a4Layer ${path}: ${c.name} vs W4A4Linear::forward`, (t) => {
      const res = G().w4a4Layer({ ...w4a4Layer(c.M, c.in, c.out, c.r, c.M + c.in, c.p, 'shift' in c ? c.shift : 0), path });
      assertFinite(t, res.gpu, 'output');
      const e = relL2(res.gpu, res.cpu);
      t.true(e < 4e-3, `relative L2 ${e} (BF16 output rounding is ~1e-3)`);
    });
  }
}

// ---------------- (3) W4A16 ----------------
for (const [M, K, N] of [[1, 3072, 18432], [2, 3072, 9216], [3, 192, 100]] as const) {
  gpuTest(`gemvW4A16 M=${M} K=${K} N=${N} vs W4A16Linear::forward`, (t) => {
    const Gr = K / 64;
    const res = G().w4a16({
      M, K, N, x: activations(M, K, K + N), qweight: bytes(N * K / 2, 41),
      wscales: uniform(N * Gr, 0.001, 0.02, 42), wzeros: uniform(N * Gr, -0.1, 0.1, 43), bias: uniform(N, -1, 1, 44),
    });
    assertFinite(t, res.gpu, 'output');
    const e = relL2(res.gpu, res.cpu);
    t.true(e < 3e-5, `relative L2 ${e} (both F32, different summation orders)`);
  });
}

// ---------------- (4) BF16 GEMM (cuBLASLt) ----------------
gpuTest('gemmBf16 (cuBLASLt) vs float64', (t) => {
  if (!G().info().cublasLt) {
    t.throws(() => G().gemmBf16({ M: 1, N: 8, K: 8, x: new Float32Array(8), w: new Float32Array(64) }), { message: /gemmBf16.*cuBLASLt/ });
    t.log('built without cuBLASLt: checked that gemmBf16 says so');
    return;
  }
  const M = 333, N = 256, K = 3072;
  const res = G().gemmBf16({ M, N, K, x: activations(M, K, 51), w: gaussian(N * K, 52, 0.02) });
  assertFinite(t, res.gpu, 'output');
  const e = relL2(res.gpu, res.cpu);
  t.true(e < 4e-3, `relative L2 ${e}`);
});

// ---------------- errors name the kernel ----------------
gpuTest('bad shapes are errors naming the kernel', (t) => {
  t.throws(() => G().quantizeAct({ x: new Float32Array(100), M: 1, K: 100, smooth: new Float32Array(100).fill(1) }), {
    message: /quantizeActInt4: K=100 must be a multiple of 8/,
  });
  t.throws(() => G().gemmW4A4({ ...int4Gemm(4, 2, 64, 1), N: 3, qw: new Int8Array(3 * 64), wscales: new Float32Array(3) }), {
    message: /gemmW4A4\(int4\): bad shape/,
  });
  t.throws(() => G().gemmW4A4({ ...int4Gemm(4, 8, 64, 1), qa: new Int8Array(5) }), { message: /'qa' has 5 bytes/ });
});
