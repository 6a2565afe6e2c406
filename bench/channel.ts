// Channel overhead of one forward: a 1024x1024 image's latent [1,16,128,128] (4096 tokens x 64
// after 2x2 patching) with a cached [1,512,4096] text context, over the WebSocket channel and over
// REST (msgpack and JSON bodies). Overhead = client round trip minus the engine time the server
// measured around engine.forward, so the model's own speed drops out; a tiny model keeps it short.
//   node --import tsx bench/channel.ts [--iters 20] [--inproc]
// The sidecar runs as a child process (`svdq serve`) unless --inproc; the client is this process.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ChannelClient, tensor } from '../sidecar/server/client.ts';
import { packr, unpackr } from '../sidecar/server/channel.ts';
import { startServer } from '../sidecar/server/server.ts';
import type { TensorData } from '../sidecar/engine/types.ts';

const { values } = parseArgs({ options: { iters: { type: 'string', default: '20' }, inproc: { type: 'boolean', default: false } } });
const iters = Number(values.iters);
const repo = join(import.meta.dirname, '..');
const root = mkdtempSync(join(tmpdir(), 'svdq-bench-channel-'));
// FLUX.1's input widths (16 latent channels, 4096 context, 768 vector) on a one-block-each model.
execFileSync('python3', [join(repo, 'tools', 'fixtures', 'make_tiny_flux.py'), join(root, 'models'), '--dtype', 'f32', '--hidden', '64',
  '--heads', '2', '--depth', '1', '--single', '1', '--guidance', '--in-channels', '16', '--context', '4096', '--vec', '768', '--seed', '1'], { stdio: 'pipe' });
const token = 'bench-token-0123456789abcdef0123';

let url: string;
let stop: () => Promise<void>;
if (values.inproc) {
  const { pino } = await import('pino');
  const srv = await startServer({ port: 0, modelDirs: [join(root, 'models')], token, log: pino({ level: 'warn' }) });
  url = srv.url;
  stop = () => srv.close('bench done');
} else {
  const tf = join(root, 'token');
  const { writeFileSync } = await import('node:fs');
  writeFileSync(tf, token, { mode: 0o600 });
  const child = spawn(process.execPath, ['--import', 'tsx', join(repo, 'sidecar/cli/serve.ts'), '--port', '0', '--models', join(root, 'models'), '--token-file', tf, '--log-level', 'warn'], { cwd: repo, stdio: ['ignore', 'pipe', 'inherit'] });
  url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    child.on('exit', (c) => reject(new Error(`serve exited ${c}`)));
  });
  stop = async () => {
    const done = new Promise((r) => child.on('exit', r));
    child.kill('SIGTERM');
    await done;
  };
}

const c = await ChannelClient.connect(url, { token });
const m = await c.request('load', { path: 'model.safetensors', threads: 1 }); // one BLAS thread: less contention with the event loops being measured
const cfg = m.result.config as Record<string, unknown>;
const model = m.result.model as string;
const rnd = (n: number) => Float32Array.from({ length: n }, () => Math.random() * 2 - 1);
const context = tensor('F32', [1, 512, 4096], rnd(512 * 4096));
const x = tensor('F32', [1, 16, 128, 128], rnd(16 * 128 * 128));
const small = {
  timestep: tensor('F32', [1], new Float32Array([0.5])),
  y: tensor('F32', [1, 768], rnd(768)),
  ...((cfg.guidanceEmbed ?? cfg.guidance_embed) ? { guidance: tensor('F32', [1], new Float32Array([3.5])) } : {}),
};
const hash = (await c.request('put_tensor', {}, { tensor: context })).result.hash as string;
const now = () => performance.now();
const med = (a: number[]) => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)];
const p90 = (a: number[]) => [...a].sort((p, q) => p - q)[Math.min(a.length - 1, Math.floor(a.length * 0.9))];

interface Sample { rtt: number; engine: number }
async function measure(name: string, once: () => Promise<{ engineMs: number; out: TensorData }>): Promise<Record<string, number | string>> {
  const s: Sample[] = [];
  for (let i = 0; i < iters + 2; i++) {
    const t0 = now();
    const r = await once();
    const rtt = now() - t0;
    if (r.out.shape.join(',') !== '1,16,128,128') throw new Error(`${name}: out shape ${r.out.shape}`);
    if (i >= 2) s.push({ rtt, engine: r.engineMs }); // two warm-up rounds
  }
  const over = s.map((q) => q.rtt - q.engine);
  return { path: name, rtt_ms: +med(s.map((q) => q.rtt)).toFixed(2), engine_ms: +med(s.map((q) => q.engine)).toFixed(2), overhead_ms: +med(over).toFixed(2), overhead_p90_ms: +p90(over).toFixed(2) };
}

const wsArgs = { model, x, context: { ref: hash }, ...small };
const results: Array<Record<string, number | string>> = [];
results.push(await measure('ws (msgpack, context by ref)', async () => {
  const r = await c.request('forward', wsArgs);
  return { engineMs: r.result.engine_ms as number, out: r.tensors.out };
}));
const restUrl = `${url}/v1/models/${model}/forward`;
const { model: _m, ...restArgs } = wsArgs;
results.push(await measure('rest msgpack (context by ref)', async () => {
  const res = await fetch(restUrl, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/msgpack' }, body: packr.pack(restArgs) as Uint8Array<ArrayBuffer> });
  const b = unpackr.unpack(Buffer.from(await res.arrayBuffer())) as { engine_ms: number; tensors: { out: TensorData } };
  return { engineMs: b.engine_ms, out: b.tensors.out };
}));
const b64 = (t: TensorData) => ({ dtype: t.dtype, shape: t.shape, data: Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('base64') });
results.push(await measure('rest json/base64 (context by ref)', async () => {
  const body = JSON.stringify({ x: b64(x), context: { ref: hash }, ...Object.fromEntries(Object.entries(small).map(([k, v]) => [k, b64(v)])) });
  const res = await fetch(restUrl, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body });
  const j = (await res.json()) as { engine_ms: number; tensors: { out: { dtype: 'F32'; shape: number[]; data: string } } };
  return { engineMs: j.engine_ms, out: { ...j.tensors.out, data: Buffer.from(j.tensors.out.data, 'base64') } };
}));
results.push(await measure('ws (context inline, 8 MiB every step)', async () => {
  const r = await c.request('forward', { ...wsArgs, context });
  return { engineMs: r.result.engine_ms as number, out: r.tensors.out };
}));

c.close();
await stop();

// The floor under all of this: the same bytes (4 MiB up, 4 MiB down) through a bare ws echo server
// in another process, no msgpack, no engine. Overhead above it is what the protocol itself costs.
const echoSrc = `import { WebSocketServer } from 'ws';
const out = Buffer.alloc(4 << 20);
const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false, maxPayload: 1 << 30 });
wss.on('listening', () => console.log('port ' + wss.address().port));
wss.on('connection', (ws) => ws.on('message', () => ws.send(out)));`;
const echo = spawn(process.execPath, ['--input-type=module', '-e', echoSrc], { cwd: repo, stdio: ['ignore', 'pipe', 'inherit'] });
const echoPort = await new Promise<number>((resolve) => echo.stdout!.on('data', (d) => resolve(Number(/port (\d+)/.exec(String(d))![1]))));
const { WebSocket } = await import('ws');
const raw = new WebSocket(`ws://127.0.0.1:${echoPort}`, { perMessageDeflate: false, maxPayload: 1 << 30 });
await new Promise((r) => raw.once('open', r));
const up = Buffer.alloc((4 << 20) + 200);
const floor: number[] = [];
for (let i = 0; i < iters + 2; i++) {
  const t0 = now();
  await new Promise((r) => {
    raw.once('message', r);
    raw.send(up);
  });
  if (i >= 2) floor.push(now() - t0);
}
raw.close();
echo.kill();
const floorMs = +med(floor).toFixed(2);
results.push({ path: 'floor: bare ws echo, same bytes', rtt_ms: floorMs, engine_ms: 0, overhead_ms: floorMs, overhead_p90_ms: +p90(floor).toFixed(2) });
for (const r of results) r.above_floor_ms = +((r.overhead_ms as number) - floorMs).toFixed(2);
rmSync(root, { recursive: true, force: true });
console.log(`channel overhead, ${values.inproc ? 'server in-process' : 'server as child process'}, ${iters} iterations after 2 warm-up, x [1,16,128,128] F32 (4 MiB), context [1,512,4096] F32 (8 MiB), out 4 MiB`);
console.table(results);
console.log(JSON.stringify({ bench: 'channel', inproc: values.inproc, iters, results }));
