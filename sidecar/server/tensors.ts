// Tensors arriving from clients: structural validation ({dtype, shape, data} with matching byte
// length, or {ref} into the content-hash cache) and the bounded LRU cache itself.
import { createHash } from 'node:crypto';
import type { DTypeName, TensorData } from '../engine/types.ts';
import { ApiError } from './errors.ts';

export const DTYPE_SIZE: Record<DTypeName, number> = {
  F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, I8: 1, U8: 1, I32: 4, I64: 8, BOOL: 1,
};

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !ArrayBuffer.isView(v);

/** The cache key: SHA-256 of "<dtype>:<d0>,<d1>,...:" followed by the data bytes (docs/PROTOCOL.md §3). */
export function tensorHash(t: TensorData): string {
  return createHash('sha256').update(`${t.dtype}:${t.shape.join(',')}:`).update(t.data).digest('hex');
}

/** LRU of tensors by content hash, bounded by total bytes. */
export class TensorCache {
  private readonly map = new Map<string, TensorData>(); // insertion order = recency
  private bytes = 0;

  constructor(readonly maxBytes: number) {}

  get size(): number {
    return this.map.size;
  }

  get totalBytes(): number {
    return this.bytes;
  }

  /** Stores `t` (copying its bytes so the frame buffer can be freed) and returns its hash. */
  put(t: TensorData): { hash: string; cached: boolean } {
    const hash = tensorHash(t);
    const had = this.map.get(hash);
    if (had) {
      this.map.delete(hash);
      this.map.set(hash, had);
      return { hash, cached: true };
    }
    if (t.data.byteLength > this.maxBytes) {
      throw new ApiError('too_large', `tensor of ${t.data.byteLength} bytes exceeds the cache size ${this.maxBytes} (--cache-mb)`, 'tensor');
    }
    this.map.set(hash, { dtype: t.dtype, shape: [...t.shape], data: Uint8Array.prototype.slice.call(t.data) });
    this.bytes += t.data.byteLength;
    for (const [k, v] of this.map) {
      if (this.bytes <= this.maxBytes) break;
      this.map.delete(k);
      this.bytes -= v.data.byteLength;
    }
    return { hash, cached: false };
  }

  get(hash: string): TensorData | undefined {
    const t = this.map.get(hash);
    if (t) {
      this.map.delete(hash);
      this.map.set(hash, t);
    }
    return t;
  }

  drop(hash: string): boolean {
    const t = this.map.get(hash);
    if (!t) return false;
    this.map.delete(hash);
    this.bytes -= t.data.byteLength;
    return true;
  }
}

/**
 * A client value as a TensorData: a {dtype, shape, data} map whose data length matches, or a {ref}
 * found in `cache`. Errors name `arg`.
 */
export function readTensor(v: unknown, arg: string, cache: TensorCache): TensorData {
  if (!isPlainObject(v)) throw new ApiError('bad_tensor', `${arg}: expected a tensor {dtype, shape, data} or {ref}`, arg);
  if ('ref' in v) {
    const extra = Object.keys(v).filter((k) => k !== 'ref');
    if (extra.length) throw new ApiError('bad_tensor', `${arg}: a tensor ref takes only 'ref', got also ${extra.join(', ')}`, arg);
    if (typeof v.ref !== 'string') throw new ApiError('bad_tensor', `${arg}: ref must be a hash string`, arg);
    const t = cache.get(v.ref);
    if (!t) throw new ApiError('unknown_ref', `${arg}: no cached tensor with hash ${v.ref} (send it with put_tensor or inline)`, arg);
    return t;
  }
  const extra = Object.keys(v).filter((k) => k !== 'dtype' && k !== 'shape' && k !== 'data');
  if (extra.length) throw new ApiError('bad_tensor', `${arg}: unexpected tensor key(s) ${extra.join(', ')} (allowed: dtype, shape, data)`, arg);
  const { dtype, shape, data } = v;
  if (typeof dtype !== 'string' || !(dtype in DTYPE_SIZE)) {
    throw new ApiError('bad_tensor', `${arg}: unknown dtype ${JSON.stringify(dtype)} (one of ${Object.keys(DTYPE_SIZE).join(', ')})`, arg);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new ApiError('bad_tensor', `${arg}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`, arg);
  }
  // Buffer is a Uint8Array; Float32Array etc. (msgpackr typed-array extensions) are refused on purpose.
  if (!(data instanceof Uint8Array)) {
    const what = ArrayBuffer.isView(data) ? data.constructor.name : typeof data;
    throw new ApiError('bad_tensor', `${arg}: data must be raw bytes (msgpack bin), got ${what}`, arg);
  }
  const n = (shape as number[]).reduce((a, b) => a * b, 1);
  const need = n * DTYPE_SIZE[dtype as DTypeName];
  if (data.byteLength !== need) {
    throw new ApiError('bad_tensor', `${arg}: data has ${data.byteLength} bytes, ${dtype}[${shape.join(',')}] needs ${need}`, arg);
  }
  return { dtype: dtype as DTypeName, shape: shape as number[], data };
}

/** Checks dtype membership and rank; `dims` entries that are numbers must match exactly. */
export function expectTensor(t: TensorData, arg: string, dtypes: DTypeName[], dims: Array<number | string>): void {
  if (!dtypes.includes(t.dtype)) throw new ApiError('bad_tensor', `${arg}: dtype ${t.dtype} not accepted (${dtypes.join(', ')})`, arg);
  if (t.shape.length !== dims.length) {
    throw new ApiError('bad_tensor', `${arg}: expected ${dims.length} dims [${dims.join(',')}], got shape [${t.shape.join(',')}]`, arg);
  }
  dims.forEach((d, i) => {
    if (typeof d === 'number' && t.shape[i] !== d) {
      throw new ApiError('bad_tensor', `${arg}: dim ${i} is ${t.shape[i]}, expected ${d} (shape [${t.shape.join(',')}], want [${dims.join(',')}])`, arg);
    }
  });
}
