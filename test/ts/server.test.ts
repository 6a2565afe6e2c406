// The sidecar over real sockets: auth, every kind of bad input (each answered with an error naming
// the problem while the connection stays usable), FIFO/concurrency, cancellation, disconnects,
// REST forward, OpenAPI coverage. The engine is the real native engine on a random tiny FLUX.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, symlinkSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Engine } from '../../sidecar/engine/engine.ts';
import type { ForwardInputs, TensorData } from '../../sidecar/engine/types.ts';
import { startServer, type RunningServer } from '../../sidecar/server/server.ts';
import { ChannelClient, tensor, f32 } from '../../sidecar/server/client.ts';
import { Packr } from 'msgpackr';
import { packr, unpackr } from '../../sidecar/server/channel.ts';
import { packChunks } from '../../sidecar/server/msgpack-chunks.ts';
import { openApiDocument } from '../../sidecar/server/openapi.ts';
import { ROUTES } from '../../sidecar/server/routes.ts';
import { OPS } from '../../sidecar/server/ops.ts';

const TOKEN = 'test-token-0123456789abcdef';
const MAX_FRAME = 1 << 20;

interface Cfg { ch: number; ctx: number; vec: number; guidance: boolean }

let srv: RunningServer;
let root: string;
let ckpt: string;
let ref: Engine;
let cfg: Cfg;
let model: string;

function num(c: Record<string, unknown>, ...names: string[]): number {
  for (const n of names) if (typeof c[n] === 'number') return c[n] as number;
  throw new Error(`config has none of ${names.join(', ')}: ${JSON.stringify(c)}`);
}

// Deterministic inputs: a small LCG so every run sees fresh-but-reproducible values per seed.
function rand(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = (s / 2 ** 32) * 2 - 1;
  }
  return a;
}

function inputs(seed: number, hw = 8, tokens = 8): ForwardInputs {
  const inp: ForwardInputs = {
    x: tensor('F32', [1, cfg.ch, hw, hw], rand(cfg.ch * hw * hw, seed)),
    timestep: tensor('F32', [1], new Float32Array([0.25 + (seed % 7) / 10])),
    context: tensor('F32', [1, tokens, cfg.ctx], rand(tokens * cfg.ctx, seed + 1000)),
    y: tensor('F32', [1, cfg.vec], rand(cfg.vec, seed + 2000)),
  };
  if (cfg.guidance) inp.guidance = tensor('F32', [1], new Float32Array([3.5]));
  return inp;
}

const asArgs = (inp: ForwardInputs) => ({ ...inp }) as Record<string, unknown>;

function maxRelErr(got: TensorData, want: TensorData): number {
  const g = f32(got), w = f32(want);
  if (g.length !== w.length) return Infinity;
  let num2 = 0, den = 0;
  for (let i = 0; i < g.length; i++) {
    if (Number.isNaN(g[i])) return Infinity;
    num2 = Math.max(num2, Math.abs(g[i] - w[i]));
    den = Math.max(den, Math.abs(w[i]));
  }
  return num2 / Math.max(den, 1e-12);
}

const connect = (via: 'header' | 'query' = 'header') => ChannelClient.connect(srv.url, { token: TOKEN, via });
const rest = (path: string, init: RequestInit = {}) =>
  fetch(srv.url + path, { ...init, headers: { authorization: `Bearer ${TOKEN}`, ...(init.headers ?? {}) } });

test.before(async () => {
  root = mkdtempSync(join(tmpdir(), 'svdq-server-test-'));
  // A random tiny FLUX (BFL keys, F32) from the shared fixture generator; the folder is the model folder.
  execFileSync('python3', [join(import.meta.dirname, '..', '..', 'tools', 'fixtures', 'make_tiny_flux.py'), join(root, 'models'),
    '--dtype', 'f32', '--hidden', '64', '--heads', '2', '--depth', '1', '--single', '1', '--guidance', '--seed', '7'], { stdio: 'pipe' });
  ckpt = join(root, 'models', 'model.safetensors');
  writeFileSync(join(root, 'secret.safetensors'), 'outside');
  symlinkSync(join(root, 'secret.safetensors'), join(root, 'models', 'escape.safetensors'));
  const hdr = Buffer.from(JSON.stringify({ 'foo.weight': { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hdr.length));
  writeFileSync(join(root, 'models', 'notflux.safetensors'), Buffer.concat([len, hdr, Buffer.alloc(8)]));
  writeFileSync(join(root, 'models', 'corrupt.safetensors'), Buffer.from([8, 0, 0, 0, 0, 0, 0, 0, 123, 34, 120, 34]));
  ref = await Engine.load(ckpt);
  const c = ref.info().config as Record<string, unknown>;
  cfg = {
    ch: num(c, 'inChannels', 'in_channels'),
    ctx: num(c, 'contextDim', 'contextInDim', 'context_in_dim'),
    vec: num(c, 'vecDim', 'vecInDim', 'vec_in_dim'),
    guidance: Boolean(c.guidanceEmbed ?? c.guidance_embed),
  };
  srv = await startServer({ port: 0, modelDirs: [join(root, 'models')], token: TOKEN, maxFrameBytes: MAX_FRAME, log: pino({ level: 'silent' }) });
  const c1 = await connect();
  model = (await c1.request('load', { path: 'model.safetensors', threads: 1 })).result.model as string;
  c1.close();
});

test.after.always(async () => {
  await srv?.close('tests done');
  ref?.dispose();
  if (root) rmSync(root, { recursive: true, force: true });
});

test('health needs the token; wrong token is 401 with a clear error', async (t) => {
  const ok = await rest('/v1/health');
  t.is(ok.status, 200);
  t.is((await ok.json()).ok, true);
  const none = await fetch(srv.url + '/v1/health');
  t.is(none.status, 401);
  t.is((await none.json()).error.code, 'unauthorized');
  const bad = await fetch(srv.url + '/v1/models', { headers: { authorization: 'Bearer nope' } });
  t.is(bad.status, 401);
  t.regex((await bad.json()).error.message, /token/);
});

test('channel auth: header, query, auth frame; wrong token refused', async (t) => {
  for (const via of ['header', 'query'] as const) {
    const c = await connect(via);
    t.true((await c.call('ping')).ok);
    c.close();
  }
  const err = await t.throwsAsync(ChannelClient.connect(srv.url, { token: 'wrong-token-xxxxxxxx', via: 'query' }));
  t.regex(err!.message, /401/);
  const anon = await ChannelClient.connect(srv.url);
  const r = await anon.call('ping');
  t.is(r.error?.code, 'unauthorized');
  t.true((await anon.call('auth', { token: TOKEN })).ok);
  t.true((await anon.call('ping')).ok);
  anon.close();
  const anon2 = await ChannelClient.connect(srv.url);
  t.is((await anon2.call('auth', { token: 'wrong' })).error?.code, 'unauthorized');
  await anon2.whenClosed();
  t.is(anon2.closed?.code, 4401);
});

test('forward over the channel equals the engine called directly', async (t) => {
  const c = await connect();
  const inp = inputs(1);
  const r = await c.request('forward', { model }, asArgs(inp));
  const want = await ref.forward(inp);
  t.deepEqual(r.tensors.out.shape, want.shape);
  t.true(maxRelErr(r.tensors.out, want) < 1e-5, `rel err ${maxRelErr(r.tensors.out, want)}`);
  t.is(typeof r.result.engine_ms, 'number');
  c.close();
});

test('bad inputs each get an error naming the problem and the connection stays usable', async (t) => {
  const c = await connect();
  const good = inputs(2);
  const want = await ref.forward(good);
  const fwd = (over: Record<string, unknown>, args: Record<string, unknown> = { model }) => c.call('forward', args, { ...asArgs(good), ...over });
  const stillWorks = async (what: string) => {
    const r = await c.call('forward', { model }, asArgs(good));
    t.true(r.ok, `forward after ${what}: ${JSON.stringify(r.error)}`);
    t.true(maxRelErr(r.tensors!.out, want) < 1e-5, `result after ${what}`);
  };
  const expectErr = async (what: string, p: Promise<{ ok: boolean; error?: { code: string; message: string; arg?: string } }>, code: string, re: RegExp) => {
    const r = await p;
    t.false(r.ok, what);
    t.is(r.error?.code, code, `${what}: ${JSON.stringify(r.error)}`);
    t.regex(r.error?.message ?? '', re, what);
    await stillWorks(what);
  };

  c.sendRaw(Buffer.from([0x82, 0xa2, 0x69, 0x64, 0xc1]));
  await expectErr('malformed msgpack', c.nextOrphan(), 'bad_frame', /malformed msgpack/);
  c.sendRaw('{"id":1,"op":"ping"}');
  await expectErr('text frame', c.nextOrphan(), 'bad_frame', /binary/);
  c.sendRaw(packr.pack([1, 2, 3]));
  await expectErr('frame not a map', c.nextOrphan(), 'bad_frame', /map/);
  c.sendRaw(packr.pack({ id: 99, op: 'put_tensor', args: { tensor: tensor('U8', [MAX_FRAME + 10], new Uint8Array(MAX_FRAME + 10)) } }));
  await expectErr('oversized frame', c.nextOrphan(), 'too_large', /exceeds the limit of 1048576 bytes/);
  await expectErr('unknown op', c.call('frobnicate'), 'unknown_op', /frobnicate/);
  await expectErr('missing arg', c.call('forward', { model }, { x: good.x, timestep: good.timestep, y: good.y }), 'bad_args', /missing arg 'context'/);
  await expectErr('extra arg', fwd({ steps: 4 }), 'bad_args', /unexpected arg 'steps'/);
  await expectErr('wrong arg type', c.call('load', { path: 42 }), 'bad_args', /'path' must be a string/);
  await expectErr('wrong tensor dtype', fwd({ timestep: tensor('I32', [1], new Int32Array([1])) }), 'bad_tensor', /timestep: dtype I32 not accepted/);
  await expectErr('wrong tensor shape', fwd({ x: tensor('F32', [1, cfg.ch + 1, 8, 8], new Float32Array((cfg.ch + 1) * 64)) }), 'bad_tensor', new RegExp(`x: dim 1 is ${cfg.ch + 1}, expected ${cfg.ch}`));
  await expectErr('wrong rank', fwd({ y: tensor('F32', [cfg.vec], new Float32Array(cfg.vec)) }), 'bad_tensor', /y: expected 2 dims/);
  await expectErr('byte length mismatch', fwd({ context: { dtype: 'F32', shape: [1, 8, cfg.ctx], data: new Uint8Array(12) } }), 'bad_tensor', new RegExp(`context: data has 12 bytes, F32\\[1,8,${cfg.ctx}\\] needs ${8 * cfg.ctx * 4}`));
  // msgpackr's default packer sends a Float32Array as its own extension type, not as bytes.
  const naive = new Packr({ useRecords: false, moreTypes: true });
  c.sendRaw(naive.pack({ id: 'typed', op: 'put_tensor', args: { tensor: { dtype: 'F32', shape: [2], data: new Float32Array(2) } } }));
  await expectErr('typed array instead of bytes', c.nextOrphan(), 'bad_tensor', /tensor: data must be raw bytes \(msgpack bin\), got Float32Array/);
  await expectErr('unknown dtype', fwd({ y: { dtype: 'F64', shape: [1, cfg.vec], data: new Uint8Array(cfg.vec * 8) } }), 'bad_tensor', /y: unknown dtype "F64"/);
  await expectErr('unknown ref', fwd({ context: { ref: 'ab'.repeat(32) } }), 'unknown_ref', /context: no cached tensor/);
  await expectErr('path with ..', c.call('load', { path: '../secret.safetensors' }), 'forbidden_path', /outside the model folders/);
  await expectErr('absolute path elsewhere', c.call('load', { path: '/etc/passwd' }), 'forbidden_path', /outside the model folders/);
  await expectErr('symlink escape', c.call('load', { path: 'escape.safetensors' }), 'forbidden_path', /escape.safetensors is outside/);
  await expectErr('missing file', c.call('load', { path: 'nope.safetensors' }), 'not_found', /nope.safetensors does not exist/);
  await expectErr('unknown model id', fwd({}, { model: 'm999' }), 'not_found', /no loaded model 'm999'/);
  await expectErr('corrupt checkpoint header', c.call('load', { path: 'corrupt.safetensors' }), 'bad_args', /corrupt.safetensors: safetensors header/);
  await expectErr('engine error (not a FLUX checkpoint)', c.call('load', { path: 'notflux.safetensors' }), 'engine_error', /notflux.safetensors|img_in|missing/);
  await expectErr('bad frame id', Promise.resolve().then(() => { c.sendRaw(packr.pack({ id: [1], op: 'ping' })); return c.nextOrphan(); }), 'bad_request', /'id' must be/);
  c.close();
});

test('reference latents and an attention mask: channel and REST equal the engine; bad ones are named', async (t) => {
  const inp = inputs(9);
  const [, ch, h, w] = inp.x.shape as [number, number, number, number];
  // One reference of odd size (padded to whole patches), one of another size; a float bias mask.
  const refs = [tensor('F32', [1, ch, 5, 8], rand(ch * 40, 91)), tensor('F32', [1, ch, 6, 4], rand(ch * 24, 92))];
  const L = inp.context.shape[1]! + (h / 2) * (w / 2) + 3 * 4 + 3 * 2;
  const mask = tensor('F32', [L, L], rand(L * L, 93).map((v) => 3 * v));
  const kontext: ForwardInputs = { ...inp, ref_latents: refs, ref_latents_method: 'index', attention_mask: mask };
  const want = await ref.forward(kontext);
  const plain = await ref.forward(inp);
  t.true(maxRelErr(plain, want) > 1e-3, 'references and mask change the output');
  const c = await connect();
  const r = await c.request('forward', { model, ref_latents_method: 'index' }, { ...asArgs(inp), ref_latents: refs, attention_mask: mask });
  t.true(maxRelErr(r.tensors.out, want) < 1e-5, `channel: rel err ${maxRelErr(r.tensors.out, want)}`);
  const rm = await rest(`/v1/models/${model}/forward`, { method: 'POST', headers: { 'content-type': 'application/msgpack' }, body: packr.pack(asArgs(kontext)) as Uint8Array<ArrayBuffer> });
  t.is(rm.status, 200);
  t.true(maxRelErr((unpackr.unpack(Buffer.from(await rm.arrayBuffer())) as { tensors: { out: TensorData } }).tensors.out, want) < 1e-5, 'REST');
  // A boolean mask that keeps everything is no mask at all.
  const all = await c.request('forward', { model }, { ...asArgs(inp), attention_mask: tensor('BOOL', [1, 1, L - 18, L - 18], new Uint8Array((L - 18) ** 2).fill(1)) });
  t.true(maxRelErr(all.tensors.out, plain) < 1e-6);

  const expectErr = async (what: string, over: Record<string, unknown>, code: string, re: RegExp) => {
    const e = await c.call('forward', { model }, { ...asArgs(kontext), ...over });
    t.false(e.ok, what);
    t.is(e.error?.code, code, `${what}: ${JSON.stringify(e.error)}`);
    t.regex(e.error?.message ?? '', re, what);
  };
  await expectErr('mask that leaves out the references', { attention_mask: tensor('F32', [L - 18, L - 18], new Float32Array((L - 18) ** 2)) }, 'bad_tensor', new RegExp(`attention_mask: expected .* L = ${L}`));
  await expectErr('mask of another batch', { attention_mask: tensor('F32', [3, L, L], new Float32Array(3 * L * L)) }, 'bad_tensor', /attention_mask: .*B 1 or 1/);
  await expectErr('mask dtype', { attention_mask: tensor('I32', [L, L], new Int32Array(L * L)) }, 'bad_tensor', /attention_mask: dtype I32/);
  await expectErr('reference with wrong channels', { ref_latents: [tensor('F32', [1, ch + 1, 4, 4], new Float32Array((ch + 1) * 16))] }, 'bad_tensor', new RegExp(`ref_latents\\[0\\]: dim 1 is ${ch + 1}, expected ${ch}`));
  await expectErr('reference with another batch', { ref_latents: [tensor('F32', [2, ch, 4, 4], new Float32Array(2 * ch * 16))], attention_mask: undefined }, 'bad_tensor', /ref_latents\[0\]: batch 2 must be 1 or 1/);
  await expectErr('references not a list', { ref_latents: refs[0] }, 'bad_args', /'ref_latents' must be a list of tensors/);
  await expectErr('unknown method', { ref_latents_method: 'spiral' }, 'bad_args', /ref_latents_method' must be one of offset, index, uxo/);
  c.close();
});

test('engine out of memory (simulated cap) is an error; the model and the server stay usable', async (t) => {
  const c = await connect();
  const small = await c.request('load', { path: 'model.safetensors', memory_limit_bytes: 4096, threads: 1 });
  const capped = small.result.model as string;
  t.not(capped, model);
  const good = inputs(3);
  const r = await c.call('forward', { model: capped }, asArgs(good));
  t.is(r.error?.code, 'out_of_memory', JSON.stringify(r.error));
  t.regex(r.error!.message, /out of memory/);
  const again = await c.call('forward', { model: capped }, asArgs(good));
  t.is(again.error?.code, 'out_of_memory'); // same answer: the model did not get stuck
  const ok = await c.call('forward', { model }, asArgs(good));
  t.true(ok.ok);
  t.true(maxRelErr(ok.tensors!.out, await ref.forward(good)) < 1e-5);
  t.true((await c.call('unload', { model: capped })).ok);
  t.is((await c.call('forward', { model: capped }, asArgs(good))).error?.code, 'not_found');
  c.close();
});

test('content-hash cache: put_tensor then {ref} gives the same result as inline', async (t) => {
  const c = await connect();
  const inp = inputs(4);
  const put = await c.request('put_tensor', {}, { tensor: inp.context });
  t.regex(put.result.hash as string, /^[0-9a-f]{64}$/);
  t.false(put.result.cached as boolean);
  t.true((await c.request('put_tensor', {}, { tensor: inp.context })).result.cached as boolean);
  const viaRef = await c.request('forward', { model }, { ...asArgs(inp), context: { ref: put.result.hash } });
  t.true(maxRelErr(viaRef.tensors.out, await ref.forward(inp)) < 1e-5);
  t.true((await c.request('drop_tensor', { hash: put.result.hash })).result.dropped as boolean);
  t.is((await c.call('forward', { model }, { ...asArgs(inp), context: { ref: put.result.hash } })).error?.code, 'unknown_ref');
  c.close();
});

test.serial('50 concurrent forwards over 5 connections each get their own correct reply', async (t) => {
  const n = 50;
  const ins = Array.from({ length: n }, (_, i) => inputs(100 + i));
  const want: TensorData[] = [];
  for (const inp of ins) want.push(await ref.forward(inp)); // sequential reference
  const conns = await Promise.all(Array.from({ length: 5 }, () => connect()));
  const order: number[][] = conns.map(() => []);
  const replies = await Promise.all(ins.map((inp, i) => {
    const k = i % conns.length;
    return conns[k].call('forward', { model }, asArgs(inp)).then((r) => {
      order[k].push(i);
      return r;
    });
  }));
  replies.forEach((r, i) => {
    t.true(r.ok, `forward ${i}: ${JSON.stringify(r.error)}`);
    t.true(maxRelErr(r.tensors!.out, want[i]) < 1e-5, `forward ${i} got someone else's result`);
  });
  // One FIFO per model: each connection's forwards finish in the order it sent them.
  for (const o of order) t.deepEqual(o, [...o].sort((a, b) => a - b));
  for (const c of conns) c.close();
});

test('REST forward with JSON and msgpack bodies matches the engine', async (t) => {
  const inp = inputs(5);
  const want = await ref.forward(inp);
  const b64 = (x: TensorData) => ({ dtype: x.dtype, shape: x.shape, data: Buffer.from(x.data).toString('base64') });
  const jsonBody = Object.fromEntries(Object.entries(inp).map(([k, v]) => [k, b64(v as TensorData)]));
  const rj = await rest(`/v1/models/${model}/forward`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(jsonBody) });
  t.is(rj.status, 200);
  const j = await rj.json();
  const outJ: TensorData = { dtype: j.tensors.out.dtype, shape: j.tensors.out.shape, data: new Uint8Array(Buffer.from(j.tensors.out.data, 'base64')) };
  t.true(maxRelErr(outJ, want) < 1e-5);
  const rm = await rest(`/v1/models/${model}/forward`, { method: 'POST', headers: { 'content-type': 'application/msgpack' }, body: packr.pack(asArgs(inp)) as Uint8Array<ArrayBuffer> });
  t.is(rm.status, 200);
  t.is(rm.headers.get('content-type'), 'application/msgpack');
  const m = unpackr.unpack(Buffer.from(await rm.arrayBuffer())) as { tensors: { out: TensorData } };
  t.true(maxRelErr(m.tensors.out, want) < 1e-5);
  // Bad input over REST: status and error naming the arg.
  const bad = await rest(`/v1/models/${model}/forward`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...jsonBody, x: { ...jsonBody.x, shape: [1, 1] } }) });
  t.is(bad.status, 400);
  t.is((await bad.json()).error.arg, 'x');
  const unknown = await rest('/v1/models/m404/forward', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(jsonBody) });
  t.is(unknown.status, 404);
  const big = await rest(`/v1/models/${model}/forward`, { method: 'POST', headers: { 'content-type': 'application/msgpack' }, body: new Uint8Array(MAX_FRAME + 100) });
  t.is(big.status, 413);
  t.is((await big.json()).error.code, 'too_large');
  const malformed = await rest(`/v1/models/${model}/forward`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"x": ' });
  t.is(malformed.status, 400);
});

test('REST models and paths', async (t) => {
  const list = await (await rest('/v1/models')).json();
  t.true(list.models.some((m: { model: string; weight_bytes: number }) => m.model === model && m.weight_bytes > 0));
  const again = await rest('/v1/models', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ path: ckpt, threads: 1 }) });
  t.is(again.status, 201);
  t.is((await again.json()).model, model); // same checkpoint and options: the loaded model
  const outside = await rest('/v1/models', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ path: join(root, 'secret.safetensors') }) });
  t.is(outside.status, 403);
  const extra = await rest('/v1/models', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ path: 'model.safetensors', colour: 'red' }) });
  t.is(extra.status, 400);
  t.is((await extra.json()).error.arg, 'colour');
  t.is((await rest('/v1/jobs/job-404')).status, 404);
  t.is((await rest('/v1/nothing')).status, 404);
});

test.serial('cancellation: a queued forward is dropped, a running one is aborted; the model stays usable', async (t) => {
  const c = await connect();
  const big = inputs(6, 64, 64); // slow enough to still be running when the cancel arrives
  const first = c.call('forward', { model }, asArgs(big));
  const queuedId = c.peekId();
  const queued = c.call('forward', { model }, asArgs(big));
  const cq = await c.request('cancel', { target: queuedId });
  t.true(cq.result.cancelled as boolean);
  t.is((await queued).error?.code, 'cancelled');
  const runningId = c.peekId();
  await first;
  const running = c.call('forward', { model }, asArgs(big));
  await new Promise((r) => setTimeout(r, 30));
  const state = ((await c.request('list_models')).result.models as Array<{ model: string; running: boolean; queued: number }>).find((m) => m.model === model)!;
  t.true(state.running, 'the forward to cancel is running, not queued');
  t.is(state.queued, 0);
  const t0 = performance.now();
  await c.request('cancel', { target: runningId });
  const rr = await running;
  t.is(rr.error?.code, 'cancelled');
  t.regex(rr.error!.message, /cancelled by the client/);
  t.log(`running forward answered ${(performance.now() - t0).toFixed(1)} ms after cancel`);
  t.false((await c.request('cancel', { target: 12345 })).result.cancelled as boolean);
  const inp = inputs(7);
  const ok = await c.call('forward', { model }, asArgs(inp));
  t.true(ok.ok);
  t.true(maxRelErr(ok.tensors!.out, await ref.forward(inp)) < 1e-5);
  c.close();
});

test.serial('a client that disconnects mid-request does not leave the model locked', async (t) => {
  const a = await connect();
  const big = inputs(8, 64, 64);
  for (let i = 0; i < 4; i++) void a.call('forward', { model }, asArgs(big));
  await new Promise((r) => setTimeout(r, 30));
  a.terminate();
  const b = await connect();
  const inp = inputs(9);
  const t0 = performance.now();
  const r = await b.call('forward', { model }, asArgs(inp));
  t.true(r.ok, JSON.stringify(r.error));
  t.true(maxRelErr(r.tensors!.out, await ref.forward(inp)) < 1e-5);
  t.log(`forward after disconnect took ${(performance.now() - t0).toFixed(1)} ms`);
  const info = (await b.request('list_models')).result.models as Array<{ model: string; queued: number }>;
  t.is(info.find((m) => m.model === model)!.queued, 0);
  b.close();
});

test('the OpenAPI document describes every route and every body arg', async (t) => {
  const doc = await (await rest('/v1/openapi.json')).json();
  t.is(doc.openapi.slice(0, 2), '3.');
  t.deepEqual(doc, JSON.parse(JSON.stringify(openApiDocument())));
  for (const r of ROUTES) {
    const p = r.path.replace(/:(\w+)/g, '{$1}');
    const e = doc.paths[p]?.[r.method];
    t.truthy(e, `${r.method} ${p} missing`);
    if (r.body) {
      const props = Object.keys(e.requestBody.content['application/json'].schema.properties);
      const fromPath = new Set(Object.values(r.params ?? {}));
      t.deepEqual(props.sort(), Object.keys(OPS[r.op].args).filter((k) => !fromPath.has(k)).sort());
    }
  }
  // The route list is all there.
  for (const [m, p] of [['get', '/v1/health'], ['get', '/v1/models'], ['post', '/v1/models'], ['delete', '/v1/models/{id}'],
    ['post', '/v1/quantize'], ['get', '/v1/jobs/{id}'], ['delete', '/v1/jobs/{id}'], ['post', '/v1/models/{id}/forward']]) {
    t.truthy(doc.paths[p]?.[m], `${m} ${p}`);
  }
});

test('a frame over the hard limit closes the socket with 1009; other connections are unaffected', async (t) => {
  const c = await connect();
  const other = await connect();
  c.sendRaw(new Uint8Array(3 * MAX_FRAME + 10));
  await c.whenClosed();
  t.is(c.closed?.code, 1009);
  t.true((await other.call('ping')).ok);
  other.close();
});

test('reply encoder: chunked msgpack decodes like msgpackr and passes big bytes through uncopied', (t) => {
  const big = new Uint8Array(100_000).map((_, i) => i & 255);
  const values: unknown[] = [null, true, 0, 127, 128, 65536, 2 ** 32 - 1, -1, -33, -70000, 1.5, 'é'.repeat(40), 'x'.repeat(70_000),
    [1, 'a', [2]], Array.from({ length: 70_000 }, (_, i) => i % 3), { a: { b: [1, { c: 'd' }] } }, new Uint8Array(300).fill(7), big,
    { id: 1, ok: true, result: { engine_ms: 3.25 }, tensors: { out: { dtype: 'F32', shape: [1, 16], data: big } } }];
  const plain = (v: unknown): unknown => JSON.parse(JSON.stringify(v, (_k, x) => (x instanceof Uint8Array ? Array.from(x) : x?.type === 'Buffer' ? x.data : x)));
  for (const v of values) {
    const chunks = packChunks(v);
    t.deepEqual(plain(unpackr.unpack(Buffer.concat(chunks))), plain(v));
  }
  t.true(packChunks({ data: big }).includes(big));
});

test.serial('load with a precision quantizes a 16-bit checkpoint on demand as a job, then serves it', async (t) => {
  const r = await rest('/v1/models', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ path: 'model.safetensors', precision: 'int4' }) });
  t.is(r.status, 202);
  const { job } = await r.json();
  let j: Record<string, any> = {};
  for (let i = 0; i < 1200; i++) {
    j = await (await rest(`/v1/jobs/${job}`)).json();
    if (j.state !== 'running' && j.state !== 'queued') break;
    await new Promise((res) => setTimeout(res, 100));
  }
  t.is(j.state, 'done', JSON.stringify(j.error));
  t.is(j.result.precision, 'int4');
  t.regex(j.result.path, /svdq-int4_r32-model\.safetensors$/);
  // The channel sees the same model: the quantized checkpoint now exists, so no job this time.
  const c = await connect();
  const again = await c.request('load', { path: 'model.safetensors', precision: 'int4' });
  t.is(again.result.model, j.result.model);
  const inp = inputs(11);
  const q = await c.request('forward', { model: j.result.model }, asArgs(inp));
  const err = maxRelErr(q.tensors.out, await ref.forward(inp));
  t.log(`4-bit vs 16-bit forward: max abs diff / max |ref| = ${err.toFixed(4)}`);
  t.true(err > 0 && err < 0.5, `quantized output should be close to, not equal to, the 16-bit one (${err})`);
  c.close();
});
