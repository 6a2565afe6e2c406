// Conversions between TensorData (raw little-endian bytes) and typed arrays.
import type { DTypeName, TensorData } from './types.ts';

/** A Uint8Array view over a typed array's bytes (msgpackr and the addon take Uint8Array). */
export function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

export function f32Tensor(values: Float32Array | number[], shape: number[]): TensorData {
  const data = values instanceof Float32Array ? values : Float32Array.from(values);
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== data.length) throw new Error(`f32Tensor: ${data.length} values for shape [${shape.join(', ')}]`);
  return { dtype: 'F32', shape, data: bytesOf(data) };
}

/** The values of an F32 tensor (copied when its bytes are not 4-byte aligned). */
export function f32Values(t: TensorData): Float32Array {
  if (t.dtype !== 'F32') throw new Error(`expected an F32 tensor, got ${t.dtype}`);
  if (t.data.byteOffset % 4 === 0) return new Float32Array(t.data.buffer, t.data.byteOffset, t.data.byteLength / 4);
  // Copy through Uint8Array's slice: a Node Buffer's own slice() is a view over its shared pool.
  return new Float32Array(Uint8Array.prototype.slice.call(t.data).buffer);
}

export function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

const sizes: Record<DTypeName, number> = { F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, I8: 1, U8: 1, I32: 4, I64: 8, BOOL: 1 };
export function dtypeSize(d: DTypeName): number {
  return sizes[d];
}
