// The engine's LoRA stack: read a file, map it onto the model's layers, attach it natively, and
// later rescale or remove it, all without reloading or re-quantizing the base model.
// The native side orders LoRA changes after forwards in flight (exclusive lock on a worker thread),
// so callers may change LoRAs while a sampling run is going: the change lands between forwards.
import { statSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { planLora } from '../formats/lora.ts';
import type { LoraLayerPlan, LoraNaming, LoraSource, UnmatchedKey } from '../formats/lora.ts';
import type { LayerShape } from '../formats/flux-keys.ts';

export { LoraFormatError } from '../formats/lora.ts';
export type { UnmatchedKey } from '../formats/lora.ts';

/** What the native engine offers for LoRAs (native/binding/lora.cpp). */
export interface LoraNative {
  /** Every linear of the loaded model: BFL name, in/out features. */
  loraLayers(): Array<{ name: string; in: number; out: number }>;
  /**
   * Decodes and fuses the planned factors natively and attaches all layers or none; resolves to the
   * number of layers patched. Rejects naming `file` and the key (NaN/Inf, bytes that do not fit).
   */
  attachLora(id: number, layers: LoraLayerPlan[], strength: number, file: string): Promise<number>;
  setLoraStrength(id: number, strength: number): Promise<number>;
  removeLora(id: number): Promise<number>;
  /** Makes every layer add its LoRAs in this id order (bit-identical outputs for the same stack). */
  orderLoras?(ids: number[]): Promise<unknown>;
}

export interface AddLoraResult {
  id: number;
  /** Number of model layers that carry this LoRA. */
  patched: number;
  /** Keys of the file that were not applied, each with the reason. */
  unmatched: UnmatchedKey[];
  formats: LoraNaming[];
}

export interface LoraInfo {
  id: number;
  path: string;
  /** Absolute path, and size:mtime when attached: how sync() recognises the same file. */
  key: string;
  stamp: string;
  name: string;
  strength: number;
  patched: number;
  unmatched: number;
  formats: LoraNaming[];
}

/** An id that names no attached LoRA (the server answers 404). */
export class UnknownLoraError extends Error {
  constructor(id: number) {
    super(`no LoRA with id ${id} is attached`);
    this.name = 'UnknownLoraError';
  }
}

function fileStamp(path: string): string {
  try {
    const st = statSync(path);
    return `${st.size}:${st.mtimeMs}`;
  } catch {
    return 'missing'; // add() then fails with the reader's clear error
  }
}

function checkStrength(strength: number): void {
  if (typeof strength !== 'number' || !Number.isFinite(strength)) {
    throw new RangeError(`LoRA strength must be a finite number, got ${String(strength)}`);
  }
}

export class LoraStack {
  private nextId = 1;
  private readonly active = new Map<number, LoraInfo>();
  private layerShapes: Map<string, LayerShape> | undefined;

  constructor(
    private readonly native: LoraNative,
    private readonly readFile: (path: string) => LoraSource | Promise<LoraSource>,
  ) {}

  private layers(): Map<string, LayerShape> {
    this.layerShapes ??= new Map(this.native.loraLayers().map((l) => [l.name, { in: l.in, out: l.out }]));
    return this.layerShapes;
  }

  /** Reads and attaches a LoRA file. A bad file throws (LoraFormatError naming the key) and changes nothing. */
  async add(path: string, strength = 1): Promise<AddLoraResult> {
    checkStrength(strength);
    const key = resolve(path);
    const stamp = fileStamp(key);
    const src = await this.readFile(path);
    const parsed = planLora(src, this.layers(), { file: path });
    const id = this.nextId++;
    const patched = await this.native.attachLora(id, parsed.layers, strength, path);
    this.active.set(id, {
      id,
      path,
      key,
      stamp,
      name: basename(path),
      strength,
      patched,
      unmatched: parsed.unmatched.length,
      formats: parsed.formats,
    });
    return { id, patched, unmatched: parsed.unmatched, formats: parsed.formats };
  }

  private get(id: number): LoraInfo {
    const info = this.active.get(id);
    if (!info) throw new UnknownLoraError(id);
    return info;
  }

  async setStrength(id: number, strength: number): Promise<void> {
    checkStrength(strength);
    const info = this.get(id);
    await this.native.setLoraStrength(id, strength);
    info.strength = strength;
  }

  async remove(id: number): Promise<void> {
    this.get(id);
    await this.native.removeLora(id);
    this.active.delete(id);
  }

  /**
   * Makes the attached set equal `wanted` (what a ComfyUI graph asks for with every forward): adds
   * missing files, rescales, removes the rest. The same file twice counts once with the strengths
   * summed (the branches would add up to exactly that). A file changed on disk (size or mtime) is
   * read again. Returns the add results of the files newly attached.
   */
  async sync(wanted: ReadonlyArray<{ path: string; strength: number }>): Promise<AddLoraResult[]> {
    const want = new Map<string, { strength: number; stamp: string }>();
    for (const w of wanted) {
      checkStrength(w.strength);
      const key = resolve(w.path);
      const prev = want.get(key);
      want.set(key, { strength: (prev?.strength ?? 0) + w.strength, stamp: prev?.stamp ?? fileStamp(key) });
    }
    for (const info of this.list()) {
      const w = want.get(info.key);
      if (!w || w.stamp !== info.stamp) await this.remove(info.id);
    }
    const added: AddLoraResult[] = [];
    const order: number[] = [];
    for (const [key, w] of want) {
      const have = [...this.active.values()].find((i) => i.key === key);
      if (!have) {
        const r = await this.add(key, w.strength);
        added.push(r);
        order.push(r.id);
      } else {
        if (have.strength !== w.strength) await this.setStrength(have.id, w.strength);
        order.push(have.id);
      }
    }
    // Same list, same summation order: the output does not depend on how the stack was reached.
    const now = [...this.active.keys()];
    if (this.native.orderLoras && now.join() !== order.join()) {
      await this.native.orderLoras(order);
      const infos = new Map(this.active);
      this.active.clear();
      for (const id of order) this.active.set(id, infos.get(id)!);
    }
    return added;
  }

  list(): LoraInfo[] {
    return [...this.active.values()].map((i) => ({ ...i }));
  }
}
