// Just enough of a safetensors header to decide whether a checkpoint is already SVDQuant (4-bit)
// or 16-bit and needs quantizing before a `load` with a precision. Full parsing is the engine's job.
import { openSync, readSync, closeSync, fstatSync } from 'node:fs';
import { ApiError } from './errors.ts';

export interface CheckpointPeek {
  quantized: boolean;
  precision: string;
}

const MAX_HEADER = 256 * 1024 * 1024;

export function peekCheckpoint(path: string): CheckpointPeek {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const lenBuf = Buffer.alloc(8);
    if (size < 8 || readSync(fd, lenBuf, 0, 8, 0) !== 8) throw new ApiError('bad_args', `${path}: too short for a safetensors file`, 'path');
    const n = Number(lenBuf.readBigUInt64LE(0));
    if (n <= 0 || n > MAX_HEADER || 8 + n > size) throw new ApiError('bad_args', `${path}: safetensors header length ${n} does not fit the file (${size} bytes)`, 'path');
    const hdr = Buffer.alloc(n);
    readSync(fd, hdr, 0, n, 8);
    let json: Record<string, { dtype?: string } | Record<string, string>>;
    try {
      json = JSON.parse(hdr.toString('utf8'));
    } catch (e) {
      throw new ApiError('bad_args', `${path}: safetensors header is not JSON (${(e as Error).message})`, 'path');
    }
    const meta = (json.__metadata__ ?? {}) as Record<string, string>;
    const keys = Object.keys(json).filter((k) => k !== '__metadata__');
    const quantized = keys.some((k) => k.endsWith('.qweight')) || 'quantization_config' in meta;
    let precision = 'bf16';
    if (quantized) {
      precision = 'int4';
      try {
        const q = JSON.parse(meta.quantization_config ?? '{}');
        const w = String(q.precision ?? q.weight?.dtype ?? q.method ?? '');
        if (/fp4/i.test(w)) precision = 'nvfp4';
      } catch {
        /* keep int4: the engine reads the metadata properly */
      }
    } else {
      const first = keys.map((k) => (json[k] as { dtype?: string }).dtype).find((d) => typeof d === 'string');
      if (first) precision = first.toLowerCase();
    }
    return { quantized, precision };
  } finally {
    closeSync(fd);
  }
}
