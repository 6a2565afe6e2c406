// The engine facade on tiny random FLUX checkpoints: shapes, determinism, key formats, 16-bit inputs
// and weights, every bad input as a clear JS error, the memory cap, cancellation and a free event loop.
// (Numerical agreement with an independent PyTorch FLUX is test/python/test_flux_reference.py.)
import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { addon } from '../../sidecar/engine/addon.ts';
import { Engine } from '../../sidecar/engine/engine.ts';
import { bytesOf, f32Tensor, f32Values } from '../../sidecar/engine/tensor.ts';
import { SeededRandom } from '../../sidecar/sampling/rng.ts';
import type { ForwardInputs, TensorData } from '../../sidecar/engine/types.ts';
import { tinyFluxTensors, tinyInputs, writeTinyFlux } from './helpers/tiny-flux.ts';

const dir = mkdtempSync(join(tmpdir(), 'svdq-engine-'));
let n = 0;
const path = (name: string) => join(dir, `${n++}-${name}.safetensors`);

function relL2(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / den);
}

function toHalf(t: TensorData, dtype: 'BF16' | 'F16'): TensorData {
  // BF16 by truncation-with-rounding of the F32 bits; F16 through a DataView-free exact path for |v| < 65504.
  const v = f32Values(t);
  const out = new Uint16Array(v.length);
  const u = new Uint32Array(v.buffer, v.byteOffset, v.length);
  for (let i = 0; i < v.length; i++) {
    if (dtype === 'BF16') out[i] = (u[i]! + 0x7fff + ((u[i]! >>> 16) & 1)) >>> 16;
    else {
      const x = v[i]!;
      const s = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
      const a = Math.abs(x);
      if (a < 2 ** -14) out[i] = s | Math.round(a * 2 ** 24);
      else {
        const e = Math.floor(Math.log2(a));
        const m = Math.round((a / 2 ** e - 1) * 1024);
        out[i] = m === 1024 ? s | ((e + 16) << 10) : s | ((e + 15) << 10) | m;
      }
    }
  }
  return { dtype, shape: t.shape, data: bytesOf(out) };
}

test('forward gives a finite [B, C, H, W] output, deterministic, odd sizes cropped back', async (t) => {
  const p = path('basic');
  const cfg = await writeTinyFlux(p, { seed: 3, depth: 2, single: 2 });
  const e = await Engine.load(p);
  const info = e.info();
  t.is(info.config.hidden, 64);
  t.is(info.config.numHeads, 2);
  t.is(info.config.depthDouble, 2);
  t.is(info.config.depthSingle, 2);
  t.is(info.config.guidanceEmbed, false);
  t.deepEqual(info.config.axesDim, [4, 14, 14]);  // default split scaled to head dim 32
  t.true(info.weightBytes > 0);
  t.true(info.layers.some((l) => l.name === 'single_blocks.1.linear2' && l.kind.startsWith('dense')));
  const inputs = tinyInputs(cfg, { batch: 2, height: 7, width: 9, textTokens: 3 });
  const out = await e.forward(inputs);
  t.is(out.dtype, 'F32');
  t.deepEqual(out.shape, [2, cfg.inChannels, 7, 9]);
  const v = f32Values(out);
  t.true(v.every(Number.isFinite));
  t.true(v.some((x) => x !== 0));
  t.deepEqual(f32Values(await e.forward(inputs)), v);
  // The thread count changes how the GEMMs are split, not the result beyond rounding.
  const e1 = await Engine.load(p, { threads: 1 });
  t.true(relL2(f32Values(await e1.forward(inputs)), v) < 1e-6);
  e1.dispose();
  // Batch rows are independent: the second sample alone gives the second half of the batched output.
  const one = (tt: TensorData): TensorData => {
    const per = tt.data.byteLength / tt.shape[0]!;
    return { dtype: tt.dtype, shape: [1, ...tt.shape.slice(1)], data: tt.data.slice(per, 2 * per) };
  };
  const single = f32Values(await e.forward({ x: one(inputs.x), timestep: one(inputs.timestep), context: one(inputs.context), y: one(inputs.y) }));
  t.true(relL2(single, v.slice(v.length / 2)) < 1e-5);
  e.dispose();
  await t.throwsAsync(e.forward(inputs), { message: /disposed/ });
});

test('timestep, y and guidance each change the output', async (t) => {
  const p = path('cond');
  const cfg = await writeTinyFlux(p, { seed: 4, guidance: true });
  const e = await Engine.load(p);
  t.is(e.info().config.guidanceEmbed, true);
  const base = tinyInputs(cfg, { seed: 9 });
  const ref = f32Values(await e.forward(base));
  const alt = tinyInputs(cfg, { seed: 10 });
  for (const k of ['timestep', 'y', 'guidance', 'context'] as const) {
    const out = f32Values(await e.forward({ ...base, [k]: alt[k] }));
    t.true(relL2(out, ref) > 1e-4, `changing ${k} should change the output`);
  }
  e.dispose();
});

test('ComfyUI-prefixed keys load to the identical model; BF16 weights stay close to F32', async (t) => {
  const plain = path('plain'), comfy = path('comfy'), bf16 = path('bf16');
  const cfg = await writeTinyFlux(plain, { seed: 5 });
  await writeTinyFlux(comfy, { seed: 5, comfyPrefix: true });
  await writeTinyFlux(bf16, { seed: 5, dtype: 'BF16' });
  const inputs = tinyInputs(cfg, { seed: 11, height: 6, width: 10 });
  const [a, b, c] = await Promise.all([plain, comfy, bf16].map(async (p) => {
    const e = await Engine.load(p);
    const out = f32Values(await e.forward(inputs));
    const kinds = new Set(e.info().layers.map((l) => l.kind));
    e.dispose();
    return { out, kinds };
  }));
  t.deepEqual(b!.out, a!.out);
  t.deepEqual([...c!.kinds], ['dense-bf16']);
  t.true(c!.out.length === a!.out.length);
  const err = relL2(c!.out, a!.out);
  t.true(err > 0 && err < 3e-2, `bf16 weights rel err ${err}`);
});

test('F16 and BF16 inputs are accepted and agree with F32 inputs to their precision', async (t) => {
  const p = path('half-in');
  const cfg = await writeTinyFlux(p, { seed: 6 });
  const e = await Engine.load(p);
  const inputs = tinyInputs(cfg, { seed: 12 });
  const ref = f32Values(await e.forward(inputs));
  for (const dt of ['BF16', 'F16'] as const) {
    const half: ForwardInputs = { x: toHalf(inputs.x, dt), timestep: inputs.timestep, context: toHalf(inputs.context, dt), y: toHalf(inputs.y, dt) };
    const err = relL2(f32Values(await e.forward(half)), ref);
    t.true(err > 0 && err < (dt === 'BF16' ? 5e-2 : 5e-3), `${dt} inputs rel err ${err}`);
  }
  e.dispose();
});

test('bad inputs are JS errors naming the input and expected vs got', async (t) => {
  const p = path('badin');
  const cfg = await writeTinyFlux(p, { seed: 7 });
  const e = await Engine.load(p);
  const ok = tinyInputs(cfg, { batch: 2 });
  const f32 = (shape: number[]): TensorData => ({ dtype: 'F32', shape, data: new Uint8Array(4 * shape.reduce((a, b) => a * b, 1)) });
  const cases: Array<[string, Partial<ForwardInputs> & Record<string, unknown>, RegExp]> = [
    ['x channels', { x: f32([2, 3, 8, 8]) }, /input 'x': expected shape \[B, 4, H, W\].*got \[2, 3, 8, 8\]/],
    ['x rank', { x: f32([2, 4, 8]) }, /input 'x': expected shape \[B, 4, H, W\].*got \[2, 4, 8\]/],
    ['context width', { context: f32([2, 4, 31]) }, /input 'context': expected shape \[2, T, 32\].*got \[2, 4, 31\]/],
    ['y batch', { y: f32([1, 16]) }, /input 'y': expected shape \[2, 16\], got \[1, 16\]/],
    ['timestep shape', { timestep: f32([2, 1]) }, /input 'timestep': expected shape \[2\], got \[2, 1\]/],
    ['integer dtype', { x: { dtype: 'I32', shape: [2, 4, 8, 8], data: new Uint8Array(4 * 512) } }, /input 'x': dtype I32 is not supported/],
    ['bytes vs shape', { y: { dtype: 'F32', shape: [2, 16], data: new Uint8Array(12) } }, /input 'y': shape \[2, 16\] of F32 needs 128 bytes, got 12/],
    ['unknown input', { bogus: f32([1]) }, /unknown input 'bogus'/],
    ['not a tensor', { context: 'hello' as unknown as TensorData }, /input 'context': expected a tensor/],
    ['reference channels', { ref_latents: [f32([1, 3, 4, 4])] }, /input 'ref_latents\[0\]': expected shape \[2 or 1, 4, h, w\], got \[1, 3, 4, 4\]/],
    ['reference batch', { ref_latents: [f32([1, 4, 4, 4]), f32([3, 4, 4, 4])] }, /input 'ref_latents\[1\]': expected shape \[2 or 1/],
    ['references not an array', { ref_latents: f32([1, 4, 4, 4]) as unknown as TensorData[] }, /input 'ref_latents': expected an array of tensors/],
    ['reference method', { ref_latents_method: 'spiral' as 'index' }, /ref_latents_method': expected offset, index, uxo or index_timestep_zero, got 'spiral'/],
    ['mask length', { attention_mask: f32([19, 19]) }, /input 'attention_mask': expected shape .* with L = 20 \(4 text \+ 16 image\/reference tokens\).*got \[19, 19\]/],
    ['mask heads', { attention_mask: f32([2, 3, 20, 20]) }, /input 'attention_mask'.*heads 2 or 1; got \[2, 3, 20, 20\]/],
    ['mask dtype', { attention_mask: { dtype: 'I8', shape: [20, 20], data: new Uint8Array(400) } }, /input 'attention_mask': dtype I8 is not supported/],
  ];
  for (const [what, patch, msg] of cases) {
    await t.throwsAsync(e.forward({ ...ok, ...patch } as ForwardInputs), { message: msg }, what);
  }
  // The engine is still usable afterwards.
  t.deepEqual((await e.forward(ok)).shape, [2, 4, 8, 8]);
  e.dispose();
});

test('reference latents: batch 1 broadcasts, they change the output, and neutral masks change nothing', async (t) => {
  const p = path('kontext');
  const cfg = await writeTinyFlux(p, { seed: 17 });
  const e = await Engine.load(p);
  const inp = tinyInputs(cfg, { seed: 18, batch: 2, height: 8, width: 6, textTokens: 3 });
  const rng = new SeededRandom(19);
  const one = rng.normal(cfg.inChannels * 5 * 7);
  const shared = f32Tensor(one, [1, cfg.inChannels, 5, 7]);
  const repeated = f32Tensor(Float32Array.from([...one, ...one]), [2, cfg.inChannels, 5, 7]);
  const plain = f32Values(await e.forward(inp));
  const withRef = await e.forward({ ...inp, ref_latents: [shared] });
  t.deepEqual(withRef.shape, [2, cfg.inChannels, 8, 6], 'the output covers the image tokens only');
  t.true(relL2(f32Values(withRef), plain) > 1e-3);
  t.deepEqual(f32Values(await e.forward({ ...inp, ref_latents: [repeated] })), f32Values(withRef));
  t.notDeepEqual(f32Values(await e.forward({ ...inp, ref_latents: [shared], ref_latents_method: 'uxo' })), f32Values(withRef));
  const L = 3 + 12 + 12;
  t.deepEqual(f32Values(await e.forward({ ...inp, ref_latents: [shared], attention_mask: f32Tensor(new Float32Array(L * L), [L, L]) })), f32Values(withRef));
  // A query row with every key masked outputs zeros instead of NaN; the others are unaffected by it.
  const keep = new Uint8Array(2 * L * L).fill(1);
  keep.fill(0, 5 * L, 6 * L);
  const out = f32Values(await e.forward({ ...inp, ref_latents: [shared], attention_mask: { dtype: 'BOOL', shape: [2, L, L], data: keep } }));
  t.false(out.some((v) => !Number.isFinite(v)));
  e.dispose();
});

test('bad checkpoints: missing tensor, wrong shape, not FLUX, unreadable file', async (t) => {
  const w = (name: string, edit: (ts: Record<string, TensorData>) => void): string => {
    const { tensors } = tinyFluxTensors({ seed: 8 });
    edit(tensors);
    const p = path(name);
    addon().writeSafetensors(p, tensors, {}, true);
    return p;
  };
  const missing = w('missing', (ts) => { delete ts['double_blocks.0.txt_mlp.2.weight']; });
  await t.throwsAsync(Engine.load(missing), { message: new RegExp(`${missing}: missing tensor 'double_blocks\\.0\\.txt_mlp\\.2\\.weight'`) });
  const shape = w('shape', (ts) => { ts['single_blocks.0.linear2.weight'] = { dtype: 'F32', shape: [64, 300], data: new Uint8Array(64 * 300 * 4) }; });
  await t.throwsAsync(Engine.load(shape), { message: /tensor 'single_blocks\.0\.linear2\.weight' has shape \[64, 300\], expected \[64, 320\]/ });
  const norm = w('norm', (ts) => { ts['double_blocks.0.txt_attn.norm.key_norm.scale'] = { dtype: 'F32', shape: [16], data: new Uint8Array(64) }; });
  await t.throwsAsync(Engine.load(norm), { message: /tensor 'double_blocks\.0\.txt_attn\.norm\.key_norm\.scale' has shape \[16\], expected \[32\]/ });
  const notFlux = path('notflux');
  addon().writeSafetensors(notFlux, { 'encoder.layers.0.weight': { dtype: 'F32', shape: [2, 2], data: new Uint8Array(16) } }, {}, true);
  await t.throwsAsync(Engine.load(notFlux), { message: /img_in\.weight/ });
  await t.throwsAsync(Engine.load(join(dir, 'nope.safetensors')), { message: /nope\.safetensors: cannot open/ });
  const p = path('axes');
  await writeTinyFlux(p, { seed: 8 });
  await t.throwsAsync(Engine.load(p, { axesDim: [4, 14, 16] }), { message: /RoPE axes sum to 34 but the head dim is 32/ });
});

test('memory cap: a forward that would not fit fails with out of memory before computing', async (t) => {
  const p = path('mem');
  const cfg = await writeTinyFlux(p, { seed: 9 });
  const e = await Engine.load(p, { memoryLimitBytes: 4_000_000 });
  await t.throwsAsync(e.forward(tinyInputs(cfg, { height: 64, width: 64 })), { message: /out of memory: .* needs \d+ bytes, the limit is 4000000/ });
  // A small forward still fits under the same cap.
  t.deepEqual((await e.forward(tinyInputs(cfg, { height: 4, width: 4, textTokens: 2 }))).shape, [1, 4, 4, 4]);
  e.dispose();
});

test('abort cancels a running forward (AbortError) while the event loop stays free', async (t) => {
  const p = path('cancel');
  const cfg = await writeTinyFlux(p, { seed: 10, hidden: 128, depth: 6, single: 6 });
  const e = await Engine.load(p);
  const inputs = tinyInputs(cfg, { height: 64, width: 64, textTokens: 16 });
  const t0 = performance.now();
  await e.forward(inputs);
  const full = performance.now() - t0;
  // Timers fire while a forward runs on a worker thread.
  let ticks = 0;
  const timer = setInterval(() => ticks++, 5);
  const ac = new AbortController();
  const started = performance.now();
  const run = e.forward(inputs, { signal: ac.signal });
  setTimeout(() => ac.abort(), Math.min(20, full / 4));
  await t.throwsAsync(run, { name: 'AbortError', message: /cancelled/ });
  clearInterval(timer);
  t.true(ticks >= 1, 'event loop was blocked');
  t.true(performance.now() - started < full * 0.9 + 50, `cancel took ${performance.now() - started} ms, full forward ${full} ms`);
  // Already aborted: rejected without running; a fresh forward afterwards works.
  await t.throwsAsync(e.forward(inputs, { signal: AbortSignal.abort() }), { name: 'AbortError' });
  t.deepEqual((await e.forward(inputs)).shape, [1, 4, 64, 64]);
  e.dispose();
});
