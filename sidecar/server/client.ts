// A small TypeScript client for the channel (docs/PROTOCOL.md): used by the tests, the benchmark and
// scripts. One socket, many requests in flight, replies matched by id.
import { WebSocket } from 'ws';
import type { TensorData } from '../engine/types.ts';
import { packr, unpackr } from './channel.ts';

export interface Reply {
  id: number | string | null;
  ok: boolean;
  result?: Record<string, unknown>;
  tensors?: Record<string, TensorData>;
  error?: { code: string; message: string; arg?: string };
}

export class ChannelError extends Error {
  constructor(readonly code: string, message: string, readonly arg?: string) {
    super(message);
    this.name = 'ChannelError';
  }
}

type Progress = (p: { done: number; total: number; stage: string }) => void;

export class ChannelClient {
  private nextId = 1;
  private readonly waiting = new Map<number | string, { resolve: (r: Reply) => void; progress?: Progress }>();
  private readonly orphans: Reply[] = [];
  private orphanWaiters: Array<(r: Reply) => void> = [];
  closed: { code: number; reason: string } | undefined;
  private closeWaiters: Array<() => void> = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer) => {
      const m = unpackr.unpack(data) as Reply & { progress?: { done: number; total: number; stage: string } };
      if (m.id === null || m.id === undefined || !this.waiting.has(m.id)) {
        const w = this.orphanWaiters.shift();
        if (w) w(m);
        else this.orphans.push(m);
        return;
      }
      const w = this.waiting.get(m.id)!;
      if (m.progress && m.ok === undefined) return void w.progress?.(m.progress);
      this.waiting.delete(m.id);
      w.resolve(m);
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      for (const [id, w] of this.waiting) w.resolve({ id, ok: false, error: { code: 'connection_closed', message: `socket closed (${code} ${reason.toString()})` } });
      this.waiting.clear();
      for (const w of this.closeWaiters.splice(0)) w();
    });
  }

  /** Opens `url` (http(s)://host:port or ws://...; /v1/channel is appended when missing). */
  static connect(url: string, opts: { token?: string; via?: 'header' | 'query' } = {}): Promise<ChannelClient> {
    let u = url.replace(/^http/, 'ws');
    if (!u.includes('/v1/channel')) u = u.replace(/\/$/, '') + '/v1/channel';
    const headers: Record<string, string> = {};
    if (opts.token && (opts.via ?? 'header') === 'header') headers.authorization = `Bearer ${opts.token}`;
    if (opts.token && opts.via === 'query') u += `?token=${encodeURIComponent(opts.token)}`;
    const ws = new WebSocket(u, { headers, perMessageDeflate: false, maxPayload: 2 ** 31 });
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new ChannelClient(ws)));
      ws.once('unexpected-response', (_req, res) => reject(new ChannelError('http_' + res.statusCode, `upgrade refused: HTTP ${res.statusCode}`)));
      ws.once('error', reject);
    });
  }

  /** Sends a request and resolves with its final reply, ok or not. */
  call(op: string, args?: Record<string, unknown>, tensors?: Record<string, unknown>, opts: { progress?: Progress; id?: number | string } = {}): Promise<Reply> {
    const id = opts.id ?? this.nextId++;
    const frame: Record<string, unknown> = { id, op };
    if (args) frame.args = args;
    if (tensors) frame.tensors = tensors;
    const p = new Promise<Reply>((resolve) => this.waiting.set(id, { resolve, progress: opts.progress }));
    this.ws.send(packr.pack(frame));
    return p;
  }

  /** Like call, but returns the result (and tensors) or throws ChannelError. */
  async request(op: string, args?: Record<string, unknown>, tensors?: Record<string, unknown>, opts: { progress?: Progress } = {}): Promise<{ result: Record<string, unknown>; tensors: Record<string, TensorData> }> {
    const r = await this.call(op, args, tensors, opts);
    if (!r.ok) throw new ChannelError(r.error!.code, r.error!.message, r.error!.arg);
    return { result: r.result ?? {}, tensors: r.tensors ?? {} };
  }

  /** The id a call() would use next (to cancel it by id). */
  peekId(): number {
    return this.nextId;
  }

  sendRaw(data: Uint8Array | string): void {
    this.ws.send(data);
  }

  /** The next reply that matched no pending request (errors for undecodable frames have id null). */
  nextOrphan(): Promise<Reply> {
    const r = this.orphans.shift();
    if (r) return Promise.resolve(r);
    return new Promise((resolve) => this.orphanWaiters.push(resolve));
  }

  whenClosed(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((r) => this.closeWaiters.push(r));
  }

  close(): void {
    this.ws.close();
  }

  terminate(): void {
    this.ws.terminate();
  }
}

/** A tensor map with a Uint8Array view of `a`'s bytes (never the typed array itself). */
export function tensor(dtype: TensorData['dtype'], shape: number[], a: ArrayBufferView): TensorData {
  return { dtype, shape, data: new Uint8Array(a.buffer, a.byteOffset, a.byteLength) };
}

/** The F32 values of a tensor (copying when the bytes are not 4-aligned). */
export function f32(t: TensorData): Float32Array {
  if (t.dtype !== 'F32') throw new Error(`expected F32, got ${t.dtype}`);
  const d = t.data.byteOffset % 4 === 0 ? t.data : new Uint8Array(t.data); // copy: Buffer.slice would be a view
  return new Float32Array(d.buffer, d.byteOffset, d.byteLength / 4);
}
