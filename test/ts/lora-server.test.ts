// LoRA routes of the sidecar over a real socket: add / list / rescale / remove, per-forward `loras`
// lists, and bad input answered with errors naming the problem. The engine is a stand-in whose
// LoRA stack is the real one (LoraStack over the native binding, on FLUX-shaped layers without
// weights); its forward reports the stack it sees, so ordering with forwards is observable.
import test from 'ava';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { LoraStack } from '../../sidecar/engine/lora.ts';
import type { LoraNative } from '../../sidecar/engine/lora.ts';
import type { ForwardInputs, TensorData } from '../../sidecar/engine/types.ts';
import type { EngineLike } from '../../sidecar/server/models.ts';
import { startServer, type RunningServer } from '../../sidecar/server/server.ts';
import { asDiffusers, asKohya, randomLora, readSafetensorsFile, tinyFluxLayers, writeSafetensorsFile } from './helpers/lora-fixtures.ts';

type Fn = (...a: unknown[]) => unknown;
const addon = createRequire(import.meta.url)('../../native/build/Release/svdq.node') as Record<string, Fn>;
const layers = tinyFluxLayers();
const TOKEN = 'lora-test-token-0123456789';

class LoraOnlyEngine implements EngineLike {
  readonly model = addon.loraShapeModel!(Object.fromEntries([...layers].map(([n, s]) => [n, [s.in, s.out]])));
  readonly stack: LoraStack;
  constructor(readonly path: string) {
    const m = this.model;
    const native: LoraNative = {
      loraLayers: () => addon.loraLayers!(m) as ReturnType<LoraNative['loraLayers']>,
      attachLora: (id, l, s, f) => addon.attachLora!(m, id, l, s, f) as Promise<number>,
      setLoraStrength: (id, s) => addon.setLoraStrength!(m, id, s) as Promise<number>,
      removeLora: (id) => addon.removeLora!(m, id) as Promise<number>,
    };
    this.stack = new LoraStack(native, readSafetensorsFile);
  }
  info() {
    return { config: { in_channels: 16, context_in_dim: 12, vec_in_dim: 10, patch_size: 2, guidance_embed: false }, weightBytes: 0, layers: layers.size, path: this.path };
  }
  /** out[0] = number of layers carrying a LoRA, out[1] = sum of strengths: what the engine state is. */
  async forward(inp: ForwardInputs): Promise<TensorData> {
    const state = addon.loraState!(this.model) as Array<{ loras: Array<{ strength: number }> }>;
    const n = inp.x.shape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    out[0] = state.length;
    out[1] = this.stack.list().reduce((s, l) => s + l.strength, 0);
    return { dtype: 'F32', shape: inp.x.shape, data: new Uint8Array(out.buffer) };
  }
  dispose(): void {}
  syncLoras(l: Array<{ path: string; strength: number }>) { return this.stack.sync(l); }
  addLora(p: string, s: number) { return this.stack.add(p, s); }
  setLoraStrength(id: number, s: number) { return this.stack.setStrength(id, s); }
  removeLora(id: number) { return this.stack.remove(id); }
  listLoras() { return this.stack.list().map((l) => ({ lora: l.id, name: l.name, path: l.path, strength: l.strength, patched: l.patched, unmatched: l.unmatched, formats: l.formats })); }
}

let srv: RunningServer;
let root: string;

const rest = (path: string, init: { method?: string; body?: unknown } = {}) =>
  fetch(srv.url + path, {
    method: init.method ?? (init.body ? 'POST' : 'GET'),
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    ...(init.body ? { body: JSON.stringify(init.body) } : {}),
  }).then(async (r) => ({ status: r.status, json: (await r.json()) as Record<string, any> }));

function b64(a: Float32Array): string {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
}
const forwardBody = (loras?: unknown) => ({
  x: { dtype: 'F32', shape: [1, 16, 2, 2], data: b64(new Float32Array(64)) },
  timestep: { dtype: 'F32', shape: [1], data: b64(new Float32Array([0.5])) },
  context: { dtype: 'F32', shape: [1, 3, 12], data: b64(new Float32Array(36)) },
  y: { dtype: 'F32', shape: [1, 10], data: b64(new Float32Array(10)) },
  ...(loras ? { loras } : {}),
});
const outOf = (j: Record<string, any>) => new Float32Array(new Uint8Array(Buffer.from(j.tensors.out.data, 'base64')).buffer);

test.before(async () => {
  root = mkdtempSync(join(tmpdir(), 'svdq-lora-server-'));
  const models = join(root, 'models');
  mkdirSync(models);
  writeSafetensorsFile(join(models, 'base.safetensors'), { metadata: {}, tensors: { 'img_in.weight': { dtype: 'F32', shape: [1], data: new Uint8Array(4) } } });
  writeSafetensorsFile(join(models, 'style.safetensors'), asDiffusers(randomLora(layers, 1, { rank: 2 })));
  writeSafetensorsFile(join(models, 'single.safetensors'), asKohya(randomLora(layers, 2, { rank: 2, only: (n) => n.startsWith('single_') }), layers));
  const bad = asKohya(randomLora(layers, 3, { rank: 2, only: (n) => n === 'proj_out' }), layers);
  bad.tensors['lora_unet_final_layer_linear.lora_down.weight'] = { dtype: 'F32', shape: [2, 5], data: new Uint8Array(40) };
  writeSafetensorsFile(join(models, 'bad.safetensors'), bad);
  writeSafetensorsFile(join(root, 'outside.safetensors'), asDiffusers(randomLora(layers, 4, { rank: 2 })));
  srv = await startServer({
    port: 0, modelDirs: [models], token: TOKEN, log: pino({ level: 'silent' }),
    loadEngine: async (path) => new LoraOnlyEngine(path),
  });
});
test.after.always(async () => {
  await srv?.close('tests done');
});

test.serial('add, list, rescale, remove over REST', async (t) => {
  const load = await rest('/v1/models', { body: { path: 'base.safetensors' } });
  t.is(load.status, 201, JSON.stringify(load.json));
  const m = load.json.model as string;
  const add = await rest(`/v1/models/${m}/loras`, { body: { path: 'style.safetensors', strength: 0.5 } });
  t.is(add.status, 201, JSON.stringify(add.json));
  t.is(add.json.patched, layers.size);
  t.deepEqual(add.json.unmatched, []);
  t.deepEqual(add.json.formats, ['diffusers']);
  const id = add.json.lora as number;
  const add2 = await rest(`/v1/models/${m}/loras`, { body: { path: 'single.safetensors' } });
  t.is(add2.json.patched, 6);
  let list = await rest(`/v1/models/${m}/loras`);
  t.deepEqual(list.json.loras.map((l: any) => [l.name, l.strength]), [['style.safetensors', 0.5], ['single.safetensors', 1]]);
  const patch = await rest(`/v1/models/${m}/loras/${id}`, { method: 'PATCH', body: { strength: -1 } });
  t.is(patch.status, 200, JSON.stringify(patch.json));
  let fwd = await rest(`/v1/models/${m}/forward`, { body: forwardBody() });
  t.is(fwd.status, 200, JSON.stringify(fwd.json));
  t.deepEqual([...outOf(fwd.json).slice(0, 2)], [layers.size, 0], 'the forward sees strengths -1 and 1');
  const del = await rest(`/v1/models/${m}/loras/${id}`, { method: 'DELETE' });
  t.deepEqual(del.json, { lora: id, removed: true });
  list = await rest(`/v1/models/${m}/loras`);
  t.deepEqual(list.json.loras.map((l: any) => l.name), ['single.safetensors']);
  fwd = await rest(`/v1/models/${m}/forward`, { body: forwardBody() });
  t.deepEqual([...outOf(fwd.json).slice(0, 2)], [6, 1]);
  // unknown ids
  t.is((await rest(`/v1/models/${m}/loras/${id}`, { method: 'DELETE' })).status, 404);
  t.is((await rest(`/v1/models/${m}/loras/abc`, { method: 'PATCH', body: { strength: 1 } })).status, 404);
  t.is((await rest(`/v1/models/nope/loras`, { body: { path: 'style.safetensors' } })).status, 404);
});

test.serial('bad LoRA input: clear errors, and the model is unchanged and usable', async (t) => {
  const m = (await rest('/v1/models', { body: { path: 'base.safetensors' } })).json.model as string;
  const before = (await rest(`/v1/models/${m}/loras`)).json.loras;
  const bad = await rest(`/v1/models/${m}/loras`, { body: { path: 'bad.safetensors' } });
  t.is(bad.status, 400);
  t.is(bad.json.error.code, 'bad_args');
  t.is(bad.json.error.arg, 'path');
  t.regex(bad.json.error.message, /lora_unet_final_layer_linear\.lora_down\.weight: shape \[2, 5\] does not fit layer 'final_layer\.linear': expected \[2, 8\]/);
  const outside = await rest(`/v1/models/${m}/loras`, { body: { path: join(root, 'outside.safetensors') } });
  t.is(outside.status, 403);
  t.is((await rest(`/v1/models/${m}/loras`, { body: { path: 'missing.safetensors' } })).status, 404);
  const strength = await rest(`/v1/models/${m}/loras`, { body: { path: 'style.safetensors', strength: 'x' } });
  t.is(strength.status, 400);
  t.is(strength.json.error.arg, 'strength');
  t.deepEqual((await rest(`/v1/models/${m}/loras`)).json.loras, before);
  const fwd = await rest(`/v1/models/${m}/forward`, { body: forwardBody([{ path: 'bad.safetensors', strength: 1 }]) });
  t.is(fwd.status, 400);
  t.is(fwd.json.error.arg, 'loras');
  t.regex(fwd.json.error.message, /bad\.safetensors: lora_unet_final_layer_linear\.lora_down\.weight/);
  t.is((await rest(`/v1/models/${m}/forward`, { body: forwardBody() })).status, 200, 'still usable');
});

test.serial('a forward carrying `loras` makes the stack exactly that list', async (t) => {
  const m = (await rest('/v1/models', { body: { path: 'base.safetensors' } })).json.model as string;
  let fwd = await rest(`/v1/models/${m}/forward`, { body: forwardBody([{ path: 'style.safetensors', strength: 0.25 }, { path: 'single.safetensors', strength: 2 }]) });
  t.is(fwd.status, 200, JSON.stringify(fwd.json));
  t.deepEqual([...outOf(fwd.json).slice(0, 2)], [layers.size, 2.25]);
  fwd = await rest(`/v1/models/${m}/forward`, { body: forwardBody([]) });
  t.deepEqual([...outOf(fwd.json).slice(0, 2)], [0, 0]);
  t.deepEqual((await rest(`/v1/models/${m}/loras`)).json.loras, []);
});

test('the OpenAPI document lists the LoRA routes', async (t) => {
  const doc = (await rest('/v1/openapi.json')).json;
  t.truthy(doc.paths['/v1/models/{id}/loras'].post);
  t.truthy(doc.paths['/v1/models/{id}/loras'].get);
  t.truthy(doc.paths['/v1/models/{id}/loras/{lid}'].patch);
  t.truthy(doc.paths['/v1/models/{id}/loras/{lid}'].delete);
});
