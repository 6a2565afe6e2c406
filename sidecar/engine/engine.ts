// The engine facade the rest of the sidecar uses: load a checkpoint, run forwards (cancellable),
// manage LoRAs. Heavy work runs natively on worker threads; this file only adapts types.
import { addon } from './addon.ts';
import type { NativeEngine, NativeEngineInfo } from './addon.ts';
import { LoraStack } from './lora.ts';
import type { AddLoraResult, LoraInfo, LoraNative } from './lora.ts';
import type { ForwardInputs, ForwardOptions, LoadOptions, TensorData } from './types.ts';

export type EngineInfo = NativeEngineInfo;

const INPUT_NAMES = new Set(['x', 'timestep', 'context', 'y', 'guidance', 'attention_mask', 'ref_latents', 'ref_latents_method']);

export class Engine {
  private loras: LoraStack;

  private constructor(private native: NativeEngine | undefined) {
    const a = addon();
    const self = () => this.live();
    const lora: LoraNative = {
      loraLayers: () => (a.loraLayers as (e: NativeEngine) => ReturnType<LoraNative['loraLayers']>)(self()),
      attachLora: (id, layers, strength, file) =>
        (a.attachLora as (e: NativeEngine, ...r: unknown[]) => Promise<number>)(self(), id, layers, strength, file),
      setLoraStrength: (id, s) => (a.setLoraStrength as (e: NativeEngine, ...r: unknown[]) => Promise<number>)(self(), id, s),
      removeLora: (id) => (a.removeLora as (e: NativeEngine, ...r: unknown[]) => Promise<number>)(self(), id),
      orderLoras: (ids) => (a.orderLoras as (e: NativeEngine, ids: number[]) => Promise<number>)(self(), ids),
    };
    this.loras = new LoraStack(lora, (path) => a.readSafetensors(path));
  }

  /** Loads (memory-maps and validates) a FLUX checkpoint, 16-bit or SVDQuant. */
  static async load(path: string, opts: LoadOptions & { axesDim?: number[] } = {}): Promise<Engine> {
    const a = addon();
    return new Engine(new a.Engine(path, { axesDim: opts.axesDim, memoryLimitBytes: opts.memoryLimitBytes, threads: opts.threads }));
  }

  private live(): NativeEngine {
    if (!this.native) throw new Error('the engine was disposed');
    return this.native;
  }

  info(): EngineInfo {
    return this.live().info();
  }

  /** Runs the transformer: F32/BF16/F16 inputs, F32 output [B, C, H, W]. */
  async forward(inputs: ForwardInputs, opts: ForwardOptions = {}): Promise<TensorData> {
    const native = this.live();
    // A misspelt key (say 'guidence') would otherwise be dropped silently and change the result.
    for (const k of Object.keys(inputs))
      if (!INPUT_NAMES.has(k)) throw new Error(`forward: unknown input '${k}' (expected ${[...INPUT_NAMES].join(', ')})`);
    const { signal } = opts;
    if (signal?.aborted) throw abortError(signal);
    const cancel = new Int32Array(new SharedArrayBuffer(4));
    const onAbort = () => Atomics.store(cancel, 0, 1);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      // Absent optional inputs are left out rather than passed as undefined.
      const given = Object.fromEntries(Object.entries(inputs).filter(([, v]) => v !== undefined));
      return await native.forward(given, cancel);
    } catch (e) {
      if (signal?.aborted) throw abortError(signal);
      throw e;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  addLora(path: string, strength = 1): Promise<AddLoraResult> {
    return this.loras.add(path, strength);
  }
  setLoraStrength(id: number, strength: number): Promise<void> {
    return this.loras.setStrength(id, strength);
  }
  removeLora(id: number): Promise<void> {
    return this.loras.remove(id);
  }
  listLoras(): LoraInfo[] {
    return this.loras.list();
  }
  syncLoras(wanted: ReadonlyArray<{ path: string; strength: number }>): Promise<AddLoraResult[]> {
    return this.loras.sync(wanted);
  }

  dispose(): void {
    this.native?.dispose();
    this.native = undefined;
  }
}

function abortError(signal: AbortSignal): Error {
  const e = new Error(`forward cancelled${signal.reason instanceof Error ? `: ${signal.reason.message}` : ''}`);
  e.name = 'AbortError';
  return e;
}
