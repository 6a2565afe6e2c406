// LoRA ops and routes: attach a LoRA file to a loaded model, change its strength, remove it, list
// them. Each change runs on the model's FIFO, so it lands between forwards, never during one.
// (A forward that carries `loras` makes the stack equal that list first: see ModelRegistry.forward.)
import { LoraFormatError } from '../formats/lora.ts';
import { ApiError, toApiError } from './errors.ts';
import type { ModelEntry } from './models.ts';
import type { OpDef, ServerState } from './ops.ts';
import type { RouteDef } from './routes.ts';

/** LoRA errors as API errors: a bad file is the client's (400), an unknown id is 404. */
export function loraApiError(e: unknown, arg: string): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof LoraFormatError) return new ApiError('bad_args', `${arg}: ${e.message}`, arg);
  if (e instanceof Error && e.name === 'UnknownLoraError') return new ApiError('not_found', `lora: ${e.message}`, 'lora');
  if (e instanceof RangeError) return new ApiError('bad_args', `strength: ${e.message}`, 'strength');
  return toApiError(e);
}

function loraId(v: unknown): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < 1) throw new ApiError('not_found', `lora: no LoRA with id ${JSON.stringify(v)}`, 'lora');
  return n;
}

function engineLoras(m: ModelEntry): Required<Pick<ModelEntry['engine'], 'addLora' | 'setLoraStrength' | 'removeLora' | 'listLoras'>> {
  const e = m.engine;
  if (!e.addLora || !e.setLoraStrength || !e.removeLora || !e.listLoras) {
    throw new ApiError('unsupported', `model ${m.id}: this engine build has no LoRA support`);
  }
  return e as Required<typeof e>;
}

/** Runs a LoRA change in the model's queue, mapping errors. */
async function queued<T>(s: ServerState, model: unknown, signal: AbortSignal, arg: string, fn: (l: ReturnType<typeof engineLoras>) => Promise<T>): Promise<T> {
  const m = s.models.get(model);
  const l = engineLoras(m);
  try {
    return await m.queue.push(() => fn(l), signal);
  } catch (e) {
    throw loraApiError(e, arg);
  }
}

export const LORA_OPS: Record<string, OpDef> = {
  add_lora: {
    summary: 'Attach a LoRA file (kohya, diffusers/PEFT or BFL/ComfyUI keys) to a model, without re-quantizing.',
    args: {
      model: { type: 'str' },
      path: { type: 'str', doc: 'LoRA safetensors inside a model folder' },
      strength: { type: 'num', optional: true, doc: 'default 1' },
    },
    async run(s, a, ctx) {
      const path = s.sandbox.resolve(a.path, 'path');
      const strength = (a.strength as number | undefined) ?? 1;
      const r = await queued(s, a.model, ctx.signal, 'path', (l) => l.addLora(path, strength));
      return { result: { lora: r.id, patched: r.patched, unmatched: r.unmatched, formats: r.formats, strength }, status: 201 };
    },
  },
  set_lora_strength: {
    summary: 'Change the strength of an attached LoRA (no reload).',
    args: { model: { type: 'str' }, lora: { type: 'id' }, strength: { type: 'num' } },
    async run(s, a, ctx) {
      const id = loraId(a.lora);
      await queued(s, a.model, ctx.signal, 'lora', (l) => l.setLoraStrength(id, a.strength as number));
      return { result: { lora: id, strength: a.strength } };
    },
  },
  remove_lora: {
    summary: 'Detach a LoRA; the model computes exactly as before it was added.',
    args: { model: { type: 'str' }, lora: { type: 'id' } },
    async run(s, a, ctx) {
      const id = loraId(a.lora);
      await queued(s, a.model, ctx.signal, 'lora', (l) => l.removeLora(id));
      return { result: { lora: id, removed: true } };
    },
  },
  list_loras: {
    summary: 'LoRAs attached to a model.',
    args: { model: { type: 'str' } },
    async run(s, a) {
      return { result: { loras: engineLoras(s.models.get(a.model)).listLoras() } };
    },
  },
};

export const LORA_ROUTES: RouteDef[] = [
  { method: 'get', path: '/v1/models/:id/loras', op: 'list_loras', params: { id: 'model' } },
  { method: 'post', path: '/v1/models/:id/loras', op: 'add_lora', params: { id: 'model' }, body: true, status: 201,
    summary: 'Attach a LoRA: body {path, strength?}. 201 with {lora, patched, unmatched: [{key, reason}], formats}.' },
  { method: 'patch', path: '/v1/models/:id/loras/:lid', op: 'set_lora_strength', params: { id: 'model', lid: 'lora' }, body: true,
    summary: 'Change a LoRA\'s strength: body {strength}.' },
  { method: 'delete', path: '/v1/models/:id/loras/:lid', op: 'remove_lora', params: { id: 'model', lid: 'lora' } },
];
