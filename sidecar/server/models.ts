// Loaded models: ids, one engine and one FIFO queue each. Loading the same checkpoint with the same
// options twice returns the model already loaded. Optional engine capabilities (LoRA) are looked up
// on the engine object, so adding them means adding an op that calls them, nothing here.
import type { ForwardInputs, LoadOptions, TensorData } from '../engine/types.ts';
import { FifoQueue } from '../jobs/queue.ts';
import { ApiError } from './errors.ts';
import { expectTensor } from './tensors.ts';
import type { LoraSpec } from './schema.ts';
import { loraApiError } from './lora-ops.ts';

export interface EngineInfo {
  config: Record<string, unknown>;
  weightBytes: number;
  /** The engine lists its linears; older facades gave a count. */
  layers: number | unknown[];
  path: string;
}

/** What the server needs of an engine (sidecar/engine/engine.ts). */
export interface EngineLike {
  info(): EngineInfo;
  forward(inputs: ForwardInputs, opts?: { signal?: AbortSignal }): Promise<TensorData>;
  dispose(): void;
  /** LoRA support, when the engine has it: make the attached stack equal `loras` (in order). */
  syncLoras?(loras: LoraSpec[]): Promise<unknown>;
  /** LoRA stack management (lora-ops.ts); changes run on the model's queue. */
  addLora?(path: string, strength: number): Promise<{ id: number; patched: number; unmatched: Array<{ key: string; reason: string }>; formats: string[] }>;
  setLoraStrength?(id: number, strength: number): Promise<void>;
  removeLora?(id: number): Promise<void>;
  listLoras?(): object[];
}

export interface ModelLoadOptions extends LoadOptions {
  device?: string;
}

export type EngineLoader = (path: string, opts: ModelLoadOptions) => Promise<EngineLike>;

export interface ModelEntry {
  id: string;
  path: string;
  key: string;
  engine: EngineLike;
  queue: FifoQueue;
  device: string;
  precision: string;
}

export interface ModelInfo {
  model: string;
  path: string;
  config: Record<string, unknown>;
  weight_bytes: number;
  layers: number;
  device: string;
  precision: string;
  queued: number;
  running: boolean;
}

/** A config value under any of its spellings (the engine's camelCase or BFL/ComfyUI snake_case). */
function cfg(config: Record<string, unknown>, ...names: string[]): number | undefined {
  for (const n of names) if (typeof config[n] === 'number') return config[n] as number;
  return undefined;
}

export class ModelRegistry {
  private next = 1;
  private readonly models = new Map<string, ModelEntry>();
  private readonly loading = new Map<string, Promise<ModelEntry>>();

  constructor(
    private readonly loader: EngineLoader,
    private readonly defaultDevice: string,
  ) {}

  list(): ModelEntry[] {
    return [...this.models.values()];
  }

  get(id: unknown, arg = 'model'): ModelEntry {
    const m = typeof id === 'string' ? this.models.get(id) : undefined;
    if (!m) {
      const ids = [...this.models.keys()];
      throw new ApiError('not_found', `${arg}: no loaded model '${String(id)}' (loaded: ${ids.length ? ids.join(', ') : 'none'})`, arg);
    }
    return m;
  }

  info(m: ModelEntry): ModelInfo {
    const i = m.engine.info();
    return {
      model: m.id, path: m.path, config: i.config, weight_bytes: i.weightBytes, layers: Array.isArray(i.layers) ? i.layers.length : i.layers,
      device: m.device, precision: m.precision, queued: m.queue.waiting, running: m.queue.running,
    };
  }

  /** Loads `path` (already sandboxed) or returns the model loaded from it with the same options. */
  async load(path: string, opts: ModelLoadOptions, precision: string): Promise<ModelEntry> {
    const device = opts.device ?? this.defaultDevice;
    const key = JSON.stringify([path, device, opts.memoryLimitBytes ?? null, opts.threads ?? null]);
    const have = [...this.models.values()].find((m) => m.key === key);
    if (have) return have;
    const pending = this.loading.get(key);
    if (pending) return pending;
    const p = (async () => {
      const engine = await this.loader(path, { ...opts, device });
      const m: ModelEntry = { id: `m${this.next++}`, path, key, engine, queue: new FifoQueue(), device, precision };
      this.models.set(m.id, m);
      return m;
    })();
    this.loading.set(key, p);
    try {
      return await p;
    } finally {
      this.loading.delete(key);
    }
  }

  /** Fails its queued work with `reason`, waits for the running forward, then frees the engine. */
  async unload(id: string, reason: Error): Promise<void> {
    const m = this.get(id);
    this.models.delete(id);
    m.queue.close(reason);
    await m.queue.idle();
    m.engine.dispose();
  }

  async unloadAll(reason: Error): Promise<void> {
    await Promise.allSettled([...this.models.keys()].map((id) => this.unload(id, reason)));
  }

  /** Checks inputs against the model's config before queuing, so a bad shape never waits in line. */
  checkInputs(m: ModelEntry, inp: ForwardInputs): void {
    const c = m.engine.info().config;
    const float: Array<'F32' | 'F16' | 'BF16'> = ['F32', 'F16', 'BF16'];
    const ch = cfg(c, 'inChannels', 'in_channels');
    expectTensor(inp.x, 'x', float, ['B', ch ?? 'C', 'H', 'W']);
    const [b, , h, w] = inp.x.shape;
    const p = cfg(c, 'patchSize', 'patch_size') ?? 2;
    if (h % p || w % p) throw new ApiError('bad_tensor', `x: height ${h} and width ${w} must be multiples of the patch size ${p}`, 'x');
    expectTensor(inp.timestep, 'timestep', ['F32'], [b]);
    expectTensor(inp.context, 'context', float, [b, 'T', cfg(c, 'contextDim', 'contextInDim', 'context_in_dim') ?? 'D']);
    expectTensor(inp.y, 'y', float, [b, cfg(c, 'vecDim', 'vecInDim', 'vec_in_dim') ?? 'D']);
    if (inp.guidance) expectTensor(inp.guidance, 'guidance', ['F32'], [b]);
    // Reference latents join the image tokens; the mask must cover the whole joint sequence.
    const tokens = (hh: number, ww: number) => Math.ceil(hh / p) * Math.ceil(ww / p);
    let seq = inp.context.shape[1] + tokens(h, w);
    (inp.ref_latents ?? []).forEach((r, i) => {
      const arg = `ref_latents[${i}]`;
      expectTensor(r, arg, float, ['B', ch ?? 'C', 'h', 'w']);
      if (r.shape[0] !== 1 && r.shape[0] !== b) throw new ApiError('bad_tensor', `${arg}: batch ${r.shape[0]} must be 1 or ${b} (the batch of x)`, 'ref_latents');
      seq += tokens(r.shape[2], r.shape[3]);
    });
    if (inp.attention_mask) checkMask(inp.attention_mask, b, seq, cfg(c, 'numHeads') ?? 1);
    const needsGuidance = c.guidanceEmbed ?? c.guidance_embed;
    if (needsGuidance === true && !inp.guidance) {
      throw new ApiError('bad_args', 'forward: missing arg \'guidance\' (this model is guidance-distilled)', 'guidance');
    }
  }

  /** Queues one forward on the model's FIFO; aborting `signal` cancels it queued or running. */
  forward(m: ModelEntry, inp: ForwardInputs, loras: LoraSpec[] | undefined, signal: AbortSignal): Promise<{ out: TensorData; engineMs: number; queueMs: number }> {
    return m.queue.push(async (s, timing) => {
      if (loras !== undefined) {
        if (!m.engine.syncLoras) {
          if (loras.length) throw new ApiError('unsupported', 'loras: this engine build has no LoRA support yet', 'loras');
        } else {
          try {
            await m.engine.syncLoras(loras);
          } catch (e) {
            throw loraApiError(e, 'loras'); // a bad LoRA file is the client's error, not the engine's
          }
        }
      }
      const t0 = performance.now();
      const out = await m.engine.forward(inp, { signal: s });
      return { out, engineMs: performance.now() - t0, queueMs: timing.queuedMs };
    }, signal);
  }
}

/** An attention mask over L joint tokens: [L,L], [B or 1,L,L] or [B or 1,1 or heads,L,L]. */
function checkMask(mask: TensorData, batch: number, L: number, heads: number): void {
  const s = mask.shape, n = s.length;
  if (!['F32', 'F16', 'BF16', 'BOOL'].includes(mask.dtype)) throw new ApiError('bad_tensor', `attention_mask: dtype ${mask.dtype} not accepted (F32, F16, BF16, BOOL)`, 'attention_mask');
  const ok = n >= 2 && n <= 4 && s[n - 1] === L && s[n - 2] === L && (n < 3 || s[0] === 1 || s[0] === batch) && (n < 4 || s[1] === 1 || s[1] === heads);
  if (!ok) {
    throw new ApiError('bad_tensor', `attention_mask: expected [L,L], [B,L,L] or [B,heads,L,L] with L = ${L} (text + image + reference tokens), B ${batch} or 1, heads ${heads} or 1; got [${s.join(',')}]`, 'attention_mask');
  }
}
