// The op table: one entry per operation, shared by the WebSocket channel and the REST routes, so both
// validate the same way and do the same thing. Channel-only ops (auth, cancel) live in channel.ts.
import { existsSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { REF_LATENTS_METHODS, type ForwardInputs, type QuantizeOptions, type RefLatentsMethod, type TensorData } from '../engine/types.ts';
import type { JobRegistry } from '../jobs/registry.ts';
import { ApiError } from './errors.ts';
import { peekCheckpoint } from './checkpoint.ts';
import type { ModelRegistry } from './models.ts';
import type { PathSandbox } from './paths.ts';
import { checkArgs, type ArgSpecs, type LoraSpec } from './schema.ts';
import type { TensorCache } from './tensors.ts';
import { LORA_OPS } from './lora-ops.ts';

export const VERSION = '0.1.0';

export type Progress = (done: number, total: number, stage: string) => void;

export type Quantizer = (
  opts: QuantizeOptions,
  ctl: { onProgress?: Progress; signal?: AbortSignal },
) => Promise<unknown>;

export interface ServerState {
  models: ModelRegistry;
  jobs: JobRegistry;
  cache: TensorCache;
  sandbox: PathSandbox;
  log: Logger;
  quantize: Quantizer;
  device: string;
  startedAt: number;
  shuttingDown: boolean;
}

export interface OpContext {
  signal: AbortSignal;
  progress?: Progress;
  /** REST: return {job} for work that became a job instead of waiting for it. */
  detachJobs?: boolean;
}

export interface OpResult {
  result: Record<string, unknown>;
  tensors?: Record<string, TensorData>;
  /** REST status when not 200 (201 created, 202 accepted). */
  status?: number;
}

export interface OpDef {
  summary: string;
  args: ArgSpecs;
  run(s: ServerState, a: Record<string, unknown>, ctx: OpContext): Promise<OpResult>;
}

const PRECISIONS = ['int4', 'nvfp4'];
const DEVICES = ['cpu', 'cuda'];

/** Runs a job and either waits for it (forwarding progress and cancellation) or returns its id. */
async function runJob<T>(
  s: ServerState, kind: string, ctx: OpContext,
  work: (signal: AbortSignal, progress: Progress) => Promise<T>,
  shape: (r: T) => Record<string, unknown>,
): Promise<OpResult> {
  const job = s.jobs.start(kind, async ({ signal, progress }) => shape(await work(signal, progress)));
  if (ctx.detachJobs) return { result: { job: job.id }, status: 202 };
  const off = ctx.progress ? s.jobs.onProgress(job.id, (p) => ctx.progress!(p.done, p.total, p.stage)) : () => {};
  const onAbort = () => s.jobs.cancel(job.id, ctx.signal.reason instanceof Error ? ctx.signal.reason : new ApiError('cancelled', 'cancelled'));
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  try {
    return { result: { ...(await job.promise), job: job.id } };
  } finally {
    off();
    ctx.signal.removeEventListener('abort', onAbort);
  }
}

function quantizeOptions(s: ServerState, a: Record<string, unknown>): QuantizeOptions {
  const input = s.sandbox.resolve(a.input, 'input');
  const output = s.sandbox.resolve(a.output, 'output', false);
  if (existsSync(output) && !a.force) throw new ApiError('bad_args', `output: ${String(a.output)} exists (pass force: true to overwrite)`, 'output');
  const o: Record<string, unknown> = { input, output };
  for (const k of ['precision', 'rank', 'method', 'lowrank', 'gptq', 'force', 'samples', 'seed']) if (a[k] !== undefined) o[k] = a[k];
  if (a.calib !== undefined) o.calib = s.sandbox.resolve(a.calib, 'calib');
  return o as unknown as QuantizeOptions;
}

export const OPS: Record<string, OpDef> = {
  ping: {
    summary: 'Liveness check.',
    args: {},
    run: async () => ({ result: { time: Date.now() } }),
  },
  health: {
    summary: 'Server status: version, uptime, device, loaded models, cache use.',
    args: {},
    run: async (s) => ({
      result: {
        ok: true, server: 'svdq', version: VERSION, device: s.device, uptime_s: (Date.now() - s.startedAt) / 1000,
        models: s.models.list().length, cache: { entries: s.cache.size, bytes: s.cache.totalBytes, max_bytes: s.cache.maxBytes },
        model_dirs: s.sandbox.roots, shutting_down: s.shuttingDown,
      },
    }),
  },
  list_models: {
    summary: 'Loaded models with memory, precision and queue state.',
    args: {},
    run: async (s) => ({ result: { models: s.models.list().map((m) => s.models.info(m)) } }),
  },
  load: {
    summary: 'Load a checkpoint (a 16-bit checkpoint with `precision` is quantized first, as a job).',
    args: {
      path: { type: 'str', doc: 'checkpoint inside a model folder' },
      precision: { type: 'str', optional: true, oneOf: PRECISIONS },
      device: { type: 'str', optional: true, oneOf: DEVICES },
      memory_limit_bytes: { type: 'int', optional: true, doc: 'simulated device memory cap' },
      threads: { type: 'int', optional: true },
    },
    async run(s, a, ctx) {
      const path = s.sandbox.resolve(a.path, 'path');
      const peek = peekCheckpoint(path);
      const opts = { device: a.device as string | undefined, memoryLimitBytes: a.memory_limit_bytes as number | undefined, threads: a.threads as number | undefined };
      if (peek.quantized || a.precision === undefined) {
        const m = await s.models.load(path, opts, peek.quantized ? peek.precision : peek.precision);
        return { result: { ...s.models.info(m) }, status: 201 };
      }
      // 16-bit with a precision: quantize next to it (reused when present), then load, as one job.
      const precision = a.precision as 'int4' | 'nvfp4';
      const out = join(dirname(path), `svdq-${precision}_r32-${basename(path)}`);
      return runJob(s, 'load', ctx, async (signal, progress) => {
        if (!existsSync(out)) await s.quantize({ input: path, output: out, precision, rank: 32 }, { onProgress: progress, signal });
        progress(0, 1, 'load');
        const m = await s.models.load(out, opts, precision);
        progress(1, 1, 'load');
        return s.models.info(m);
      }, (r) => ({ ...r }));
    },
  },
  unload: {
    summary: 'Unload a model; its queued work fails with `cancelled`.',
    args: { model: { type: 'str' } },
    async run(s, a) {
      await s.models.unload(s.models.get(a.model).id, new ApiError('cancelled', `model ${String(a.model)} was unloaded`));
      return { result: { unloaded: true } };
    },
  },
  forward: {
    summary: 'One transformer evaluation (queued FIFO per model).',
    args: {
      model: { type: 'str' },
      x: { type: 'tensor', doc: 'latent [B,C,H,W]' },
      timestep: { type: 'tensor', doc: '[B] F32 in 0..1' },
      context: { type: 'tensor', doc: 'text context [B,T,Dctx]' },
      y: { type: 'tensor', doc: 'pooled vector [B,Dvec]' },
      guidance: { type: 'tensor', optional: true, doc: '[B] F32' },
      attention_mask: { type: 'tensor', optional: true, doc: 'additive bias (BOOL: true = attend) [L,L], [B,L,L] or [B,heads,L,L] over text+image+reference tokens' },
      ref_latents: { type: 'tensors', optional: true, doc: 'Kontext reference latents, each [B or 1,C,h,w]' },
      ref_latents_method: { type: 'str', optional: true, oneOf: [...REF_LATENTS_METHODS], doc: 'position ids of the reference latents (default offset)' },
      loras: { type: 'loras', optional: true, doc: 'LoRA stack for this forward' },
    },
    async run(s, a, ctx) {
      const m = s.models.get(a.model);
      const inp: ForwardInputs = { x: a.x as TensorData, timestep: a.timestep as TensorData, context: a.context as TensorData, y: a.y as TensorData };
      if (a.guidance) inp.guidance = a.guidance as TensorData;
      if (a.attention_mask) inp.attention_mask = a.attention_mask as TensorData;
      if (a.ref_latents) inp.ref_latents = a.ref_latents as TensorData[];
      if (a.ref_latents_method) inp.ref_latents_method = a.ref_latents_method as RefLatentsMethod;
      s.models.checkInputs(m, inp);
      const loras = a.loras ? (a.loras as LoraSpec[]).map((l) => ({ path: s.sandbox.resolve(l.path, 'loras'), strength: l.strength })) : undefined;
      const r = await s.models.forward(m, inp, loras, ctx.signal);
      return { result: { engine_ms: r.engineMs, queue_ms: r.queueMs }, tensors: { out: r.out } };
    },
  },
  quantize: {
    summary: 'Quantize a 16-bit checkpoint to SVDQuant 4-bit (a job with progress).',
    args: {
      input: { type: 'str' }, output: { type: 'str' },
      precision: { type: 'str', optional: true, oneOf: PRECISIONS }, rank: { type: 'int', optional: true },
      method: { type: 'str', optional: true, oneOf: ['svdquant', 'smoothquant', 'lowrank', 'naive', 'w4a16'] },
      lowrank: { type: 'str', optional: true, oneOf: ['svd', 'corda', 'whiten'] },
      gptq: { type: 'bool', optional: true, doc: 'GPTQ for the 4-bit residual (not with method w4a16)' },
      calib: { type: 'str', optional: true }, force: { type: 'bool', optional: true },
      samples: { type: 'int', optional: true }, seed: { type: 'int', optional: true },
    },
    async run(s, a, ctx) {
      const opts = quantizeOptions(s, a);
      return runJob(s, 'quantize', ctx, (signal, progress) => s.quantize(opts, { onProgress: progress, signal }),
        (r) => ({ output: opts.output, report: r }));
    },
  },
  put_tensor: {
    summary: 'Store a tensor in the content-hash cache; refer to it later as {ref: hash}.',
    args: { tensor: { type: 'tensor' } },
    async run(s, a) {
      const t = a.tensor as TensorData;
      const r = s.cache.put(t);
      return { result: { hash: r.hash, bytes: t.data.byteLength, cached: r.cached } };
    },
  },
  drop_tensor: {
    summary: 'Remove a tensor from the cache.',
    args: { hash: { type: 'str' } },
    run: async (s, a) => ({ result: { dropped: s.cache.drop(a.hash as string) } }),
  },
  job: {
    summary: 'State, progress and result of a job.',
    args: { job: { type: 'str' } },
    async run(s, a) {
      const j = s.jobs.get(a.job as string);
      if (!j) throw new ApiError('not_found', `job: no job '${String(a.job)}'`, 'job');
      return { result: { ...j } };
    },
  },
  cancel_job: {
    summary: 'Cancel a queued or running job.',
    args: { job: { type: 'str' } },
    async run(s, a) {
      const id = a.job as string;
      if (!s.jobs.get(id)) throw new ApiError('not_found', `job: no job '${id}'`, 'job');
      s.jobs.cancel(id, new ApiError('cancelled', `job ${id} was cancelled`));
      await new Promise((r) => setImmediate(r));
      return { result: { ...s.jobs.get(id)! } };
    },
  },
};

Object.assign(OPS, LORA_OPS);

/** Validates and runs `op`. Refuses new work while shutting down. */
export async function runOp(s: ServerState, op: string, rawArgs: unknown, ctx: OpContext): Promise<OpResult> {
  const def = Object.hasOwn(OPS, op) ? OPS[op] : undefined;
  if (!def) throw new ApiError('unknown_op', `unknown op '${op}' (ops: ${[...Object.keys(OPS), 'auth', 'cancel'].join(', ')})`);
  if (s.shuttingDown) throw new ApiError('shutting_down', 'the sidecar is shutting down');
  const a = checkArgs(op, def.args, rawArgs, s.cache);
  return def.run(s, a, ctx);
}
