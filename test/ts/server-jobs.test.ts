// Jobs over real sockets: quantize as a REST job (202, poll, cancel) and as a channel op with
// progress frames and cancel. The quantizer here is a scripted one that reports progress, honours
// its abort signal and writes its output file, so these tests pin down the job machinery itself
// (registry, progress, cancellation, path checks, failures); the real quantizer is H3's module.
import test from 'ava';
import { existsSync, mkdtempSync, mkdirSync, writeFileSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { QuantizeOptions } from '../../sidecar/engine/types.ts';
import { startServer, type RunningServer } from '../../sidecar/server/server.ts';
import { ChannelClient } from '../../sidecar/server/client.ts';

const TOKEN = 'jobs-token-0123456789abcdef';
let srv: RunningServer;
let root: string;
const seen: QuantizeOptions[] = [];

async function scriptedQuantize(opts: QuantizeOptions, ctl: { onProgress?: (d: number, t: number, s: string) => void; signal?: AbortSignal }) {
  seen.push(opts);
  if (opts.input.endsWith('broken.safetensors')) throw new Error(`${opts.input}: tensor double_blocks.0.img_attn.qkv.weight has shape [3], expected 2 dims`);
  const steps = 10;
  for (let i = 0; i < steps; i++) {
    if (ctl.signal?.aborted) throw ctl.signal.reason;
    ctl.onProgress?.(i, steps, 'layers');
    await new Promise((r) => setTimeout(r, 15));
  }
  ctl.onProgress?.(steps, steps, 'layers');
  writeFileSync(opts.output, `quantized from ${opts.input} at ${opts.precision ?? 'int4'}`);
  return { layers: steps, precision: opts.precision ?? 'int4' };
}

const rest = (path: string, init: RequestInit = {}) =>
  fetch(srv.url + path, { ...init, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', ...(init.headers ?? {}) } });
const post = (path: string, body: unknown) => rest(path, { method: 'POST', body: JSON.stringify(body) });

async function until(job: string, states: string[]): Promise<Record<string, any>> {
  for (let i = 0; i < 400; i++) {
    const j = await (await rest(`/v1/jobs/${job}`)).json();
    if (states.includes(j.state)) return j;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`job ${job} never reached ${states}`);
}

test.before(async () => {
  root = mkdtempSync(join(tmpdir(), 'svdq-jobs-test-'));
  mkdirSync(join(root, 'models'));
  writeFileSync(join(root, 'models', 'bf16.safetensors'), 'x');
  writeFileSync(join(root, 'models', 'broken.safetensors'), 'x');
  srv = await startServer({ port: 0, modelDirs: [join(root, 'models')], token: TOKEN, quantize: scriptedQuantize, log: pino({ level: 'silent' }) });
});

test.after.always(async () => {
  await srv?.close('tests done');
  if (root) rmSync(root, { recursive: true, force: true });
});

test.serial('REST quantize: 202 with a job, progress while running, result when done', async (t) => {
  const r = await post('/v1/quantize', { input: 'bf16.safetensors', output: 'q1.safetensors', precision: 'int4', rank: 16, gptq: true });
  t.is(r.status, 202);
  const { job } = await r.json();
  t.regex(job, /^job-\d+$/);
  const mid = await until(job, ['running', 'done']);
  t.truthy(mid.progress === null || mid.progress.stage === 'layers');
  const done = await until(job, ['done']);
  t.deepEqual(done.progress, { done: 10, total: 10, stage: 'layers' });
  t.is(done.result.report.layers, 10);
  t.is(done.result.output, join(root, 'models', 'q1.safetensors'));
  t.regex(readFileSync(join(root, 'models', 'q1.safetensors'), 'utf8'), /bf16.safetensors at int4/);
  t.is(seen.at(-1)!.rank, 16);
  t.is(seen.at(-1)!.gptq, true);
});

test.serial('REST quantize: cancel a running job; output not written; paths and existing outputs checked', async (t) => {
  const { job } = await (await post('/v1/quantize', { input: 'bf16.safetensors', output: 'q2.safetensors' })).json();
  await until(job, ['running']);
  await new Promise((r) => setTimeout(r, 30));
  const del = await rest(`/v1/jobs/${job}`, { method: 'DELETE' });
  t.is(del.status, 200);
  const j = await until(job, ['cancelled', 'failed', 'done']);
  t.is(j.state, 'cancelled');
  t.is(j.error.code, 'cancelled');
  t.false(existsSync(join(root, 'models', 'q2.safetensors')));
  const outside = await post('/v1/quantize', { input: 'bf16.safetensors', output: join(root, 'out.safetensors') });
  t.is(outside.status, 403);
  t.is((await outside.json()).error.arg, 'output');
  const exists = await post('/v1/quantize', { input: 'bf16.safetensors', output: 'q1.safetensors' });
  t.is(exists.status, 400);
  t.regex((await exists.json()).error.message, /exists \(pass force: true/);
  const badPrecision = await post('/v1/quantize', { input: 'bf16.safetensors', output: 'q3.safetensors', precision: 'int3' });
  t.regex((await badPrecision.json()).error.message, /'precision' must be one of int4, nvfp4/);
});

test.serial('a failing quantizer fails its job with its message; the server carries on', async (t) => {
  const { job } = await (await post('/v1/quantize', { input: 'broken.safetensors', output: 'q4.safetensors' })).json();
  const j = await until(job, ['failed', 'done']);
  t.is(j.state, 'failed');
  t.is(j.error.code, 'engine_error');
  t.regex(j.error.message, /broken.safetensors: tensor double_blocks.0.img_attn.qkv.weight/);
  t.is((await rest('/v1/health')).status, 200);
});

test.serial('channel quantize streams progress frames; cancel stops it', async (t) => {
  const c = await ChannelClient.connect(srv.url, { token: TOKEN });
  const frames: Array<{ done: number; total: number; stage: string }> = [];
  const r = await c.request('quantize', { input: 'bf16.safetensors', output: 'q5.safetensors', force: true }, undefined, { progress: (p) => frames.push(p) });
  t.true(frames.length >= 5);
  t.deepEqual(frames.map((f) => f.done), [...frames.map((f) => f.done)].sort((a, b) => a - b));
  t.deepEqual(frames.at(-1), { done: 10, total: 10, stage: 'layers' });
  t.regex(r.result.job as string, /^job-/);
  const id = c.peekId();
  const running = c.call('quantize', { input: 'bf16.safetensors', output: 'q6.safetensors' });
  await new Promise((res) => setTimeout(res, 40));
  t.true((await c.request('cancel', { target: id })).result.cancelled as boolean);
  const rr = await running;
  t.is(rr.error?.code, 'cancelled');
  t.false(existsSync(join(root, 'models', 'q6.safetensors')));
  t.true((await c.call('ping')).ok);
  c.close();
});
