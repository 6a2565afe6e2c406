// The safetensors reader is a security boundary: every malformed file is a clear error naming the
// file (and tensor), never a crash; the writer round-trips every dtype and writes atomically.
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { addon } from '../../sidecar/engine/addon.ts';
import type { DTypeName, TensorData } from '../../sidecar/engine/types.ts';

const dir = mkdtempSync(join(tmpdir(), 'svdq-st-'));

function rawFile(name: string, header: unknown, data = Buffer.alloc(0), lenOverride?: bigint): string {
  const h = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lenOverride ?? BigInt(h.length));
  const p = join(dir, name);
  writeFileSync(p, Buffer.concat([len, h, data]));
  return p;
}

const bad: Array<[string, () => string, RegExp]> = [
  ['shorter than the length prefix', () => { const p = join(dir, 'tiny.st'); writeFileSync(p, Buffer.from([1, 2, 3])); return p; }, /tiny\.st: not a safetensors file/],
  ['header length past the end', () => rawFile('len.st', {}, Buffer.alloc(4), 1000n), /len\.st: header length 1000 runs past the end/],
  ['header that is not JSON', () => rawFile('json.st', '{"a": [1, 2'), /json\.st: invalid safetensors header/],
  ['trailing garbage after the JSON', () => rawFile('trail.st', '{} x'), /trail\.st: invalid safetensors header: trailing/],
  ['unknown dtype', () => rawFile('dt.st', { w: { dtype: 'F24', shape: [1], data_offsets: [0, 3] } }, Buffer.alloc(3)), /dt\.st: tensor 'w': unknown dtype 'F24'/],
  ['span that does not match the shape', () => rawFile('span.st', { w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } }, Buffer.alloc(12)), /span\.st: tensor 'w': shape \[2, 2\] of F32 needs 16 bytes but data_offsets span 12/],
  ['span past the end of the file', () => rawFile('past.st', { w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, Buffer.alloc(8)), /past\.st: tensor 'w': data span 0\.\.16 ends past the data section \(8 bytes\)/],
  ['overlapping tensors', () => rawFile('ovl.st', { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, Buffer.alloc(12)), /ovl\.st: tensors 'a' and 'b' overlap/],
  ['offsets running backwards', () => rawFile('back.st', { w: { dtype: 'U8', shape: [0], data_offsets: [4, 0] } }, Buffer.alloc(4)), /back\.st: tensor 'w': data_offsets \[4, 0\] run backwards/],
  ['negative shape', () => rawFile('neg.st', '{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', Buffer.alloc(4)), /neg\.st: invalid safetensors header: expected a non-negative integer/],
  ['missing field', () => rawFile('field.st', { w: { dtype: 'F32', shape: [1] } }, Buffer.alloc(4)), /field\.st: tensor 'w': needs dtype, shape and data_offsets/],
  ['a tensor named twice', () => rawFile('dup.st', '{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', Buffer.alloc(2)), /dup\.st: .*'w' appears twice/],
  ['a file that does not exist', () => join(dir, 'nope.st'), /nope\.st: cannot open/],
];

for (const [what, make, message] of bad) {
  test(`reader rejects ${what}`, (t) => {
    const p = make();
    t.throws(() => addon().readSafetensors(p), { message });
    t.throws(() => addon().inspectSafetensors(p), { message });
  });
}

test('a truncated copy of a valid file is rejected, naming the tensor', (t) => {
  const p = join(dir, 'good.st');
  addon().writeSafetensors(p, { w: { dtype: 'F32', shape: [16], data: new Uint8Array(64) } }, {}, true);
  const bytes = readFileSync(p);
  const cut = join(dir, 'cut.st');
  writeFileSync(cut, bytes.subarray(0, bytes.length - 10));
  t.throws(() => addon().readSafetensors(cut), { message: /cut\.st: tensor 'w': data span 0\.\.64 ends past the data section \(54 bytes\)/ });
});

const sizes: Record<DTypeName, number> = { F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, I8: 1, U8: 1, I32: 4, I64: 8, BOOL: 1 };

test('every dtype round-trips byte for byte with metadata', (t) => {
  const tensors: Record<string, TensorData> = {};
  for (const [dt, size] of Object.entries(sizes) as Array<[DTypeName, number]>) {
    const data = new Uint8Array(3 * 5 * size);
    for (let i = 0; i < data.length; i++) data[i] = (Math.random() * 256) | 0;
    if (dt === 'BOOL') data.forEach((_, i) => (data[i] &= 1));
    tensors[`t.${dt}`] = { dtype: dt, shape: [3, 5], data };
  }
  tensors.empty = { dtype: 'F32', shape: [0, 4], data: new Uint8Array(0) };
  const p = join(dir, 'all.st');
  addon().writeSafetensors(p, tensors, { note: 'ünïcode "quoted"\n' }, true);
  const back = addon().readSafetensors(p);
  t.deepEqual(back.metadata, { note: 'ünïcode "quoted"\n' });
  for (const [k, v] of Object.entries(tensors)) {
    t.is(back.tensors[k].dtype, v.dtype);
    t.deepEqual(back.tensors[k].shape, v.shape);
    t.deepEqual(Buffer.from(back.tensors[k].data), Buffer.from(v.data), k);
  }
  t.deepEqual(addon().inspectSafetensors(p).tensors['t.BF16'], { dtype: 'BF16', shape: [3, 5] });
});

test('writer refuses an existing file unless told, checks byte lengths, and leaves no temporaries', (t) => {
  const p = join(dir, 'exists.st');
  addon().writeSafetensors(p, { a: { dtype: 'U8', shape: [1], data: new Uint8Array(1) } }, {}, true);
  t.throws(() => addon().writeSafetensors(p, { a: { dtype: 'U8', shape: [1], data: new Uint8Array(1) } }), { message: /exists\.st: output exists/ });
  t.throws(() => addon().writeSafetensors(join(dir, 'len.out'), { a: { dtype: 'F32', shape: [2], data: new Uint8Array(7) } }), {
    message: /tensor 'a': shape \[2\] of F32 needs 8 bytes, got 7/,
  });
  t.false(existsSync(join(dir, 'len.out')));
  t.deepEqual(readdirSync(dir).filter((f) => f.includes('.tmp-')), []);
});
