// Quantizing a FLUX.1-dev-shaped model on this machine: wall time and peak RSS of `svdq quantize` on
// a model of FLUX.1-dev's width (hidden 3072, 24 heads, T5 4096, CLIP 768) with a few blocks, random
// BF16 weights, extrapolated per block to FLUX.1-dev's 19 double + 38 single blocks (12B).
//
//   node --import tsx bench/quantize.ts [--double 1] [--single 2] [--hidden 3072] [--keep DIR [--reuse]]
//   (--double 19 --single 38 is FLUX.1-dev itself: a 22 GiB input and about 6 GiB of output on disk;
//   --reuse keeps an input already in DIR.)
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { QuantizeReport } from '../sidecar/quant/quantize.ts';

const { values } = parseArgs({
  options: {
    double: { type: 'string', default: '1' },
    single: { type: 'string', default: '2' },
    hidden: { type: 'string', default: '3072' },
    keep: { type: 'string' },
    reuse: { type: 'boolean' },
  },
});
const D = Number(values.double), S = Number(values.single), h = Number(values.hidden);
const heads = h / 128, mlp = 4 * h, ctx = 4096, vec = 768, FULL = { double: 19, single: 38 };

/** boost: every 97th row (output channel) scaled by it. */
interface TensorSpec { name: string; shape: number[]; scale: number; boost?: number }

/** The model's tensors: BFL names and shapes; random uniform values of variance 1/in (biases small).
 *  The input embedders' every 97th output channel is 16x larger: activation outliers in the residual
 *  stream, as FLUX has, for the smoothing search to find. */
function modelSpecs(): TensorSpec[] {
  const t: TensorSpec[] = [];
  const linear = (name: string, inF: number, outF: number, boost?: number) => {
    t.push({ name: `${name}.weight`, shape: [outF, inF], scale: Math.sqrt(12 / inF), boost });
    t.push({ name: `${name}.bias`, shape: [outF], scale: 0.04 });
  };
  const norm = (name: string) => t.push({ name, shape: [128], scale: 0.2 });
  for (const p of ['time_in', 'guidance_in']) (linear(`${p}.in_layer`, 256, h), linear(`${p}.out_layer`, h, h));
  linear('vector_in.in_layer', vec, h), linear('vector_in.out_layer', h, h);
  linear('img_in', 64, h, 16), linear('txt_in', ctx, h, 16);
  for (let i = 0; i < D; i++)
    for (const s of ['img', 'txt']) {
      const p = `double_blocks.${i}.${s}`;
      linear(`${p}_mod.lin`, h, 6 * h), linear(`${p}_attn.qkv`, h, 3 * h), linear(`${p}_attn.proj`, h, h);
      linear(`${p}_mlp.0`, h, mlp), linear(`${p}_mlp.2`, mlp, h);
      norm(`${p}_attn.norm.query_norm.scale`), norm(`${p}_attn.norm.key_norm.scale`);
    }
  for (let i = 0; i < S; i++) {
    const p = `single_blocks.${i}`;
    linear(`${p}.modulation.lin`, h, 3 * h), linear(`${p}.linear1`, h, 3 * h + mlp), linear(`${p}.linear2`, h + mlp, h);
    norm(`${p}.norm.query_norm.scale`), norm(`${p}.norm.key_norm.scale`);
  }
  linear('final_layer.adaLN_modulation.1', h, 2 * h), linear('final_layer.linear', h, 64);
  return t;
}

/** Writes the model as BF16 safetensors tensor by tensor (a 12B model does not fit in memory), values
 *  from a fixed xorshift stream. */
function writeModel(path: string, specs: TensorSpec[], note: string): void {
  let s = 0x9e3779b9;
  const next = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32 - 0.5;
  };
  const header: Record<string, unknown> = { __metadata__: { note } };
  let offset = 0;
  for (const t of specs) {
    const bytes = 2 * t.shape.reduce((a, b) => a * b, 1);
    header[t.name] = { dtype: 'BF16', shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const text = JSON.stringify(header);
  const json = Buffer.from(text.padEnd(Math.ceil(text.length / 8) * 8, ' '));  // data starts 8-aligned
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, len), writeSync(fd, json);
    const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer), chunk = new Uint16Array(1 << 22);
    for (const t of specs) {
      const total = t.shape.reduce((a, b) => a * b, 1), row = t.shape.at(-1)!;
      for (let done = 0; done < total; ) {
        const n = Math.min(total - done, chunk.length);
        for (let i = 0; i < n; i++) {
          const boosted = t.boost !== undefined && Math.floor((done + i) / row) % 97 === 0;
          f32[0] = next() * t.scale * (boosted ? t.boost! : 1);
          chunk[i] = u32[0]! >>> 16;
        }
        writeSync(fd, chunk, 0, 2 * n);
        done += n;
      }
    }
  } finally {
    closeSync(fd);
  }
}

const dir = values.keep ?? mkdtempSync(join(tmpdir(), 'svdq-bench-quantize-'));
mkdirSync(dir, { recursive: true });
const input = join(dir, 'flux-shaped.safetensors'), output = join(dir, 'flux-shaped-int4.safetensors');
try {
  let t0 = performance.now();
  if (!values.reuse || !existsSync(input)) writeModel(input, modelSpecs(), 'bench/quantize.ts: random FLUX.1-dev-width weights');
  const gib = statSync(input).size / 2 ** 30;
  console.log(`model: hidden ${h}, ${heads} heads, ${D} double + ${S} single blocks, ${gib.toFixed(2)} GiB BF16 (written in ${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  t0 = performance.now();
  // A child process, so its peak RSS is the quantizer's alone (not this generator's).
  const r = spawnSync(process.execPath, [join(import.meta.dirname, '..', 'bin', 'svdq.mjs'), 'quantize', input, '-o', output, '--force', '--json'],
    { encoding: 'utf8', maxBuffer: 1 << 26, stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) throw new Error(`svdq quantize failed (${r.status})`);
  const rep = JSON.parse(r.stdout) as QuantizeReport;
  const sum = (re: RegExp) => rep.svdq.layers.filter((l) => re.test(l.name)).reduce((a, l) => a + l.seconds, 0);
  const perDouble = D ? sum(/^double_blocks\./) / D : 0, perSingle = S ? sum(/^single_blocks\./) / S : 0;
  const rest = rep.seconds - rep.calibSeconds - sum(/^(double|single)_blocks\./);
  // Calibration runs the whole 16-bit model: it scales with the block count like the weights do.
  const weight = (d: number, s: number) => d * 36 + s * 15;  // block weights in units of hidden^2
  const full = rep.calibSeconds * (weight(FULL.double, FULL.single) / weight(D, S)) + FULL.double * perDouble + FULL.single * perSingle + rest;
  console.log(`quantize: ${rep.seconds.toFixed(0)} s (calibration ${rep.calibSeconds.toFixed(0)} s; ${perDouble.toFixed(0)} s per double block, ${perSingle.toFixed(0)} s per single block), peak RSS ${(rep.peakRssBytes / 2 ** 30).toFixed(2)} GiB`);
  console.log(`wall ${((performance.now() - t0) / 1000).toFixed(0)} s; extrapolated to ${FULL.double} double + ${FULL.single} single blocks (12B): ${(full / 60).toFixed(0)} min (goal 30 min)`);
} finally {
  if (!values.keep) rmSync(dir, { recursive: true, force: true });
}
