// `svdq serve` as a child process: prints its URL, writes the token file 0600, binds loopback, and on
// SIGTERM fails in-flight and queued requests with a clear error, then exits 0.
import test from 'ava';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, statSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChannelClient, tensor } from '../../sidecar/server/client.ts';

const repo = join(import.meta.dirname, '..', '..');

function startServe(args: string[]): Promise<{ child: ChildProcess; url: string; stderr: () => string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(repo, 'sidecar/cli/serve.ts'), ...args], { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${out}\n${err}`)), 30000);
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1], stderr: () => err });
      }
    });
    child.on('exit', (code) => reject(new Error(`serve exited ${code}: ${err}`)));
  });
}

test('svdq serve: token file 0600, loopback URL, SIGTERM fails in-flight work clearly and exits 0', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'svdq-serve-test-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  execFileSync('python3', [join(repo, 'tools', 'fixtures', 'make_tiny_flux.py'), join(root, 'models'),
    '--dtype', 'f32', '--hidden', '64', '--heads', '2', '--depth', '1', '--single', '1', '--guidance', '--seed', '3'], { stdio: 'pipe' });
  const tokenFile = join(root, 'cfg', 'token');
  const { child, url, stderr } = await startServe(['--port', '0', '--models', join(root, 'models'), '--token-file', tokenFile, '--log-level', 'debug']);
  t.teardown(() => void child.kill('SIGKILL'));
  t.regex(url, /^http:\/\/127\.0\.0\.1:\d+$/);
  t.is(statSync(tokenFile).mode & 0o777, 0o600);
  const token = readFileSync(tokenFile, 'utf8').trim();
  t.true(token.length >= 32);
  t.is((await fetch(url + '/v1/health')).status, 401);
  t.is((await fetch(url + '/v1/health', { headers: { authorization: `Bearer ${token}` } })).status, 200);

  const c = await ChannelClient.connect(url, { token });
  const m = await c.request('load', { path: 'model.safetensors' });
  const cfg = m.result.config as Record<string, number | boolean>;
  const ch = (cfg.inChannels ?? cfg.in_channels) as number;
  const ctx = (cfg.contextDim ?? cfg.context_in_dim) as number;
  const vec = (cfg.vecDim ?? cfg.vec_in_dim) as number;
  const hw = 96; // big enough that the forward is still running when SIGTERM lands
  const args = {
    model: m.result.model,
    x: tensor('F32', [1, ch, hw, hw], new Float32Array(ch * hw * hw).fill(0.1)),
    timestep: tensor('F32', [1], new Float32Array([0.5])),
    context: tensor('F32', [1, 8, ctx], new Float32Array(8 * ctx).fill(0.01)),
    y: tensor('F32', [1, vec], new Float32Array(vec)),
    guidance: tensor('F32', [1], new Float32Array([3.5])),
  } as Record<string, unknown>;
  if (!(cfg.guidanceEmbed ?? cfg.guidance_embed)) delete args.guidance;
  const running = c.call('forward', args);
  const queued = c.call('forward', args);
  await new Promise((r) => setTimeout(r, 100));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  child.kill('SIGTERM');
  for (const p of [running, queued]) {
    const r = await p;
    t.false(r.ok);
    t.is(r.error?.code, 'shutting_down', JSON.stringify(r.error));
    t.regex(r.error!.message, /shutting down \(SIGTERM\)/);
  }
  t.is(await exited, 0, stderr());
  await c.whenClosed();
  t.is(c.closed?.code, 1001);
  t.regex(stderr(), /sidecar stopped/);
});
