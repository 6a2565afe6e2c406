// Strict argument checking shared by the channel and REST: every op declares its args; a missing,
// extra or mistyped one is an error naming it. Tensor args are resolved (inline or {ref}) here too.
import type { TensorData } from '../engine/types.ts';
import { ApiError } from './errors.ts';
import { readTensor, type TensorCache } from './tensors.ts';

export type ArgType = 'str' | 'int' | 'num' | 'bool' | 'tensor' | 'tensors' | 'id' | 'loras';

export interface ArgSpec {
  type: ArgType;
  optional?: boolean;
  /** Allowed values for 'str'. */
  oneOf?: string[];
  doc?: string;
}

export type ArgSpecs = Record<string, ArgSpec>;

export interface LoraSpec {
  path: string;
  strength: number;
}

const TYPE_NAME: Record<ArgType, string> = {
  str: 'a string', int: 'an integer', num: 'a number', bool: 'a boolean', tensor: 'a tensor', tensors: 'a list of tensors',
  id: 'an integer or string id', loras: 'a list of {path, strength}',
};

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Uint8Array) return 'bytes';
  return typeof v === 'object' ? 'a map' : `${typeof v} ${JSON.stringify(v)}`.slice(0, 60);
}

function readLoras(v: unknown, arg: string): LoraSpec[] {
  if (!Array.isArray(v)) throw new ApiError('bad_args', `${arg}: expected ${TYPE_NAME.loras}, got ${describe(v)}`, arg);
  return v.map((l, i) => {
    const where = `${arg}[${i}]`;
    if (typeof l !== 'object' || l === null || Array.isArray(l)) throw new ApiError('bad_args', `${where}: expected {path, strength}`, arg);
    const extra = Object.keys(l).filter((k) => k !== 'path' && k !== 'strength');
    if (extra.length) throw new ApiError('bad_args', `${where}: unexpected key(s) ${extra.join(', ')}`, arg);
    const { path, strength } = l as Record<string, unknown>;
    if (typeof path !== 'string' || !path) throw new ApiError('bad_args', `${where}.path: expected a path string`, arg);
    if (typeof strength !== 'number' || !Number.isFinite(strength)) throw new ApiError('bad_args', `${where}.strength: expected a finite number`, arg);
    return { path, strength };
  });
}

/**
 * Validates `args` (a map) against `specs` for `op`, resolving tensors through `cache`.
 * Returns a fresh map holding only declared args.
 */
export function checkArgs(op: string, specs: ArgSpecs, args: unknown, cache: TensorCache): Record<string, unknown> {
  if (args === undefined || args === null) args = {};
  if (typeof args !== 'object' || Array.isArray(args) || args instanceof Uint8Array) {
    throw new ApiError('bad_args', `${op}: args must be a map, got ${describe(args)}`);
  }
  const a = args as Record<string, unknown>;
  for (const k of Object.keys(a)) {
    if (!(k in specs)) {
      const known = Object.keys(specs);
      throw new ApiError('bad_args', `${op}: unexpected arg '${k}' (${known.length ? 'takes ' + known.join(', ') : 'takes no args'})`, k);
    }
  }
  const out: Record<string, unknown> = {};
  for (const [k, spec] of Object.entries(specs)) {
    const v = a[k];
    if (v === undefined || v === null) {
      if (!spec.optional) throw new ApiError('bad_args', `${op}: missing arg '${k}' (${TYPE_NAME[spec.type]})`, k);
      continue;
    }
    const wrong = () => new ApiError('bad_args', `${op}: arg '${k}' must be ${TYPE_NAME[spec.type]}, got ${describe(v)}`, k);
    switch (spec.type) {
      case 'str':
        if (typeof v !== 'string') throw wrong();
        if (spec.oneOf && !spec.oneOf.includes(v)) {
          throw new ApiError('bad_args', `${op}: arg '${k}' must be one of ${spec.oneOf.join(', ')}, got ${JSON.stringify(v)}`, k);
        }
        out[k] = v;
        break;
      case 'int':
        if (typeof v === 'bigint') out[k] = Number(v);
        else if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw wrong();
        else out[k] = v;
        break;
      case 'num':
        if (typeof v !== 'number' || !Number.isFinite(v)) throw wrong();
        out[k] = v;
        break;
      case 'bool':
        if (typeof v !== 'boolean') throw wrong();
        out[k] = v;
        break;
      case 'id':
        if (!((typeof v === 'number' && Number.isSafeInteger(v)) || (typeof v === 'string' && v.length <= 128))) throw wrong();
        out[k] = v;
        break;
      case 'tensor':
        out[k] = readTensor(v, k, cache) as TensorData;
        break;
      case 'tensors':
        if (!Array.isArray(v)) throw wrong();
        out[k] = v.map((t, i) => readTensor(t, `${k}[${i}]`, cache));
        break;
      case 'loras':
        out[k] = readLoras(v, k);
        break;
    }
  }
  return out;
}
