// A msgpack encoder for replies that leaves large byte arrays where they are: the result is a list
// of chunks (small encoded parts, and the big Uint8Arrays themselves) that the channel sends as the
// fragments of one WebSocket message. A 4 MiB output tensor then costs no copy in JS on the way out.
// Covers what replies hold: null, booleans, numbers, strings, arrays, plain maps, bytes.

const BIG = 64 * 1024;

export function packChunks(value: unknown): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  let buf = Buffer.allocUnsafe(4096);
  let pos = 0;
  const room = (n: number) => {
    if (pos + n <= buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(buf.length * 2, pos + n));
    buf.copy(next, 0, 0, pos);
    buf = next;
  };
  const flush = () => {
    if (pos) chunks.push(buf.subarray(0, pos));
    buf = Buffer.allocUnsafe(4096);
    pos = 0;
  };
  const u8 = (b: number) => {
    room(1);
    buf[pos++] = b;
  };
  const head = (small: number, smallMax: number, c8: number | undefined, c16: number, c32: number, n: number) => {
    if (n <= smallMax) return u8(small | n);
    room(5);
    if (c8 !== undefined && n < 0x100) {
      buf[pos++] = c8;
      buf[pos++] = n;
    } else if (n < 0x10000) {
      buf[pos++] = c16;
      buf.writeUInt16BE(n, pos);
      pos += 2;
    } else {
      buf[pos++] = c32;
      buf.writeUInt32BE(n, pos);
      pos += 4;
    }
  };
  const enc = (v: unknown): void => {
    if (v === null || v === undefined) return u8(0xc0);
    if (v === false) return u8(0xc2);
    if (v === true) return u8(0xc3);
    if (typeof v === 'number') {
      room(9);
      if (Number.isInteger(v) && v >= 0 && v < 0x80) buf[pos++] = v;
      else if (Number.isInteger(v) && v < 0 && v >= -32) buf[pos++] = 0xe0 | (v + 32);
      else if (Number.isInteger(v) && v >= 0 && v <= 0xffffffff) {
        buf[pos++] = 0xce;
        buf.writeUInt32BE(v, pos);
        pos += 4;
      } else if (Number.isInteger(v) && v < 0 && v >= -0x80000000) {
        buf[pos++] = 0xd2;
        buf.writeInt32BE(v, pos);
        pos += 4;
      } else {
        buf[pos++] = 0xcb;
        buf.writeDoubleBE(v, pos);
        pos += 8;
      }
      return;
    }
    if (typeof v === 'bigint') {
      room(9);
      buf[pos++] = 0xd3;
      buf.writeBigInt64BE(v, pos);
      pos += 8;
      return;
    }
    if (typeof v === 'string') {
      const n = Buffer.byteLength(v);
      head(0xa0, 31, 0xd9, 0xda, 0xdb, n);
      room(n);
      pos += buf.write(v, pos, 'utf8');
      return;
    }
    if (v instanceof Uint8Array) {
      const n = v.byteLength;
      room(5);
      if (n < 0x100) (buf[pos++] = 0xc4), (buf[pos++] = n);
      else if (n < 0x10000) (buf[pos++] = 0xc5), buf.writeUInt16BE(n, pos), (pos += 2);
      else (buf[pos++] = 0xc6), buf.writeUInt32BE(n, pos), (pos += 4);
      if (n >= BIG) {
        flush();
        chunks.push(v);
      } else {
        room(n);
        buf.set(v, pos);
        pos += n;
      }
      return;
    }
    if (Array.isArray(v)) {
      head(0x90, 15, undefined, 0xdc, 0xdd, v.length);
      for (const x of v) enc(x);
      return;
    }
    if (typeof v === 'object') {
      if (ArrayBuffer.isView(v)) throw new TypeError(`cannot encode ${v.constructor.name}: send a Uint8Array view`);
      const keys = Object.keys(v).filter((k) => (v as Record<string, unknown>)[k] !== undefined);
      head(0x80, 15, undefined, 0xde, 0xdf, keys.length);
      for (const k of keys) {
        enc(k);
        enc((v as Record<string, unknown>)[k]);
      }
      return;
    }
    throw new TypeError(`cannot encode a ${typeof v} in a reply`);
  };
  enc(value);
  flush();
  return chunks;
}
