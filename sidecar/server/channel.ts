// The WebSocket channel (/v1/channel): msgpack frames {id, op, args, tensors}, one final reply per
// request plus progress frames, per-connection cancellation, and everything pending on a connection
// cancelled when it closes. Protocol: docs/PROTOCOL.md.
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { Packr, Unpackr } from 'msgpackr';
import { WebSocketServer, type WebSocket, type RawData } from 'ws';
import { ApiError, toApiError } from './errors.ts';
import { bearer, tokenMatches } from './auth.ts';
import { runOp, VERSION, type ServerState, type OpResult } from './ops.ts';
import { packChunks } from './msgpack-chunks.ts';

// Plain msgpack both ways: no records/structures extension, bin for bytes, maps as objects.
export const packr = new Packr({ useRecords: false, moreTypes: false });
export const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

export interface ChannelOptions {
  token: string;
  /** Frames larger than this get a too_large error reply; the connection stays open. */
  maxFrameBytes: number;
}

type Id = number | string;

interface Conn {
  ws: WebSocket;
  authed: boolean;
  pending: Map<Id, AbortController>;
  n: number;
}

export class Channel {
  readonly wss: WebSocketServer;
  private readonly conns = new Set<Conn>();
  private readonly inflight = new Set<Promise<void>>();
  private nextConn = 1;

  constructor(
    private readonly s: ServerState,
    private readonly opts: ChannelOptions,
  ) {
    // The hard limit sits above the soft one so a slightly large frame still gets a proper error
    // reply; past it ws closes the connection with 1009 before buffering more.
    this.wss = new WebSocketServer({ noServer: true, maxPayload: opts.maxFrameBytes * 2 + (1 << 20), perMessageDeflate: false });
  }

  /** HTTP upgrade handler for /v1/channel: a wrong header/query token is refused with 401 here. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const given = bearer(req.headers.authorization) ?? url.searchParams.get('token') ?? undefined;
    if (given !== undefined && !tokenMatches(this.opts.token, given)) {
      this.s.log.warn({ remote: req.socket.remoteAddress }, 'channel: bad token on upgrade');
      socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nbad token\n');
      return;
    }
    if (this.s.shuttingDown) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\nshutting down\n');
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.attach(ws, given !== undefined));
  }

  private attach(ws: WebSocket, authed: boolean): void {
    const c: Conn = { ws, authed, pending: new Map(), n: this.nextConn++ };
    this.conns.add(c);
    const log = this.s.log.child({ conn: c.n });
    log.debug('channel: connected');
    ws.on('message', (data, isBinary) => this.onFrame(c, data, isBinary));
    ws.on('error', (e) => log.warn({ err: e.message }, 'channel: socket error'));
    ws.on('close', (code) => {
      this.conns.delete(c);
      if (c.pending.size) log.info({ pending: c.pending.size, code }, 'channel: closed with requests pending; cancelling them');
      for (const ctrl of c.pending.values()) ctrl.abort(new ApiError('cancelled', 'the client disconnected'));
      c.pending.clear();
    });
  }

  private send(c: Conn, msg: Record<string, unknown>): void {
    if (c.ws.readyState !== c.ws.OPEN) return;
    try {
      const chunks = packChunks(msg);
      if (chunks.length === 1) return c.ws.send(chunks[0]);
      // One message in several fragments: big tensors go out without being copied into a frame.
      // The sends run back to back in this tick, so no other reply can interleave.
      chunks.forEach((ch, i) => c.ws.send(ch, { binary: true, fin: i === chunks.length - 1 }));
    } catch (e) {
      // A reply that cannot be packed is our bug; report it instead of dropping the request.
      c.ws.send(packr.pack({ id: msg.id ?? null, ok: false, error: { code: 'internal', message: `reply could not be encoded: ${(e as Error).message}` } }));
    }
  }

  private fail(c: Conn, id: Id | null, e: unknown): void {
    const err = toApiError(e);
    this.send(c, { id, ok: false, error: err.toJSON() });
  }

  private onFrame(c: Conn, data: RawData, isBinary: boolean): void {
    // ws hands us a Buffer (binaryType nodebuffer); use it as is: tensor data stays a view into it.
    const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    if (!isBinary) return this.fail(c, null, new ApiError('bad_frame', 'text frames are not accepted: send one binary msgpack map per message'));
    if (buf.byteLength > this.opts.maxFrameBytes) {
      return this.fail(c, null, new ApiError('too_large', `frame of ${buf.byteLength} bytes exceeds the limit of ${this.opts.maxFrameBytes} bytes (--max-frame-mb)`));
    }
    let msg: unknown;
    try {
      msg = unpackr.unpack(buf);
    } catch (e) {
      return this.fail(c, null, new ApiError('bad_frame', `malformed msgpack: ${(e as Error).message}`));
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg) || msg instanceof Uint8Array) {
      return this.fail(c, null, new ApiError('bad_frame', 'a frame must be a msgpack map {id, op, args}'));
    }
    const f = msg as Record<string, unknown>;
    const id = f.id;
    if (!((typeof id === 'number' && Number.isSafeInteger(id)) || (typeof id === 'string' && id.length <= 128))) {
      return this.fail(c, null, new ApiError('bad_request', `frame 'id' must be an integer or a string of at most 128 chars, got ${JSON.stringify(id) ?? 'nothing'}`));
    }
    const extra = Object.keys(f).filter((k) => !['id', 'op', 'args', 'tensors'].includes(k));
    if (extra.length) return this.fail(c, id, new ApiError('bad_request', `unexpected frame key(s) ${extra.join(', ')} (allowed: id, op, args, tensors)`));
    if (typeof f.op !== 'string') return this.fail(c, id, new ApiError('bad_request', "frame 'op' must be a string"));
    if (c.pending.has(id)) return this.fail(c, id, new ApiError('bad_request', `id ${id} is already in flight on this connection`));
    const op = f.op;

    if (op === 'auth') return this.auth(c, id, f.args);
    if (!c.authed) return this.fail(c, id, new ApiError('unauthorized', "not authenticated: send {op: 'auth', args: {token}} first"));
    if (op === 'cancel') return this.cancel(c, id, f.args);

    let args = f.args;
    if (f.tensors !== undefined) {
      const t = f.tensors;
      if (typeof t !== 'object' || t === null || Array.isArray(t) || t instanceof Uint8Array) {
        return this.fail(c, id, new ApiError('bad_args', "frame 'tensors' must be a map name -> tensor", 'tensors'));
      }
      const a = (args ?? {}) as Record<string, unknown>;
      if (typeof a !== 'object' || Array.isArray(a)) return this.fail(c, id, new ApiError('bad_args', `${op}: args must be a map`));
      const dup = Object.keys(t).find((k) => k in a);
      if (dup) return this.fail(c, id, new ApiError('bad_args', `${op}: '${dup}' given both in args and in tensors`, dup));
      args = { ...a, ...t };
    }
    this.start(c, id, op, args);
  }

  private auth(c: Conn, id: Id, args: unknown): void {
    const a = (args ?? {}) as Record<string, unknown>;
    const extra = typeof a === 'object' ? Object.keys(a).filter((k) => k !== 'token') : [];
    if (extra.length) return this.fail(c, id, new ApiError('bad_args', `auth: unexpected arg '${extra[0]}' (takes token)`, extra[0]));
    if (typeof a.token !== 'string') return this.fail(c, id, new ApiError('bad_args', "auth: missing arg 'token' (a string)", 'token'));
    if (!tokenMatches(this.opts.token, a.token)) {
      this.fail(c, id, new ApiError('unauthorized', 'auth: wrong token'));
      c.ws.close(4401, 'unauthorized');
      return;
    }
    c.authed = true;
    this.send(c, { id, ok: true, result: { server: 'svdq', version: VERSION } });
  }

  private cancel(c: Conn, id: Id, args: unknown): void {
    const a = (args ?? {}) as Record<string, unknown>;
    const extra = typeof a === 'object' && a ? Object.keys(a).filter((k) => k !== 'target') : [];
    if (extra.length) return this.fail(c, id, new ApiError('bad_args', `cancel: unexpected arg '${extra[0]}' (takes target)`, extra[0]));
    const target = a.target;
    if (!(typeof target === 'number' || typeof target === 'string')) {
      return this.fail(c, id, new ApiError('bad_args', "cancel: missing arg 'target' (the id of a request on this connection)", 'target'));
    }
    const ctrl = c.pending.get(target);
    if (ctrl) ctrl.abort(new ApiError('cancelled', `request ${target} was cancelled by the client`));
    this.send(c, { id, ok: true, result: { cancelled: ctrl !== undefined } });
  }

  private start(c: Conn, id: Id, op: string, args: unknown): void {
    const ctrl = new AbortController();
    c.pending.set(id, ctrl);
    const t0 = performance.now();
    const progress = (done: number, total: number, stage: string) => this.send(c, { id, progress: { done, total, stage } });
    const p = (async () => {
      let r: OpResult;
      try {
        r = await runOp(this.s, op, args, { signal: ctrl.signal, progress });
      } catch (e) {
        // Once aborted, the abort reason (cancel, disconnect, shutdown) is the truth, not the engine's wording.
        const err = ctrl.signal.aborted && ctrl.signal.reason instanceof ApiError ? ctrl.signal.reason : toApiError(e);
        const lvl = err.code === 'internal' ? 'error' : err.code === 'engine_error' || err.code === 'out_of_memory' ? 'warn' : 'debug';
        this.s.log[lvl]({ conn: c.n, id, op, code: err.code, msg: err.message }, 'channel: request failed');
        if (c.pending.get(id) === ctrl) c.pending.delete(id);
        return this.fail(c, id, err);
      }
      if (c.pending.get(id) === ctrl) c.pending.delete(id);
      if (ctrl.signal.aborted && ctrl.signal.reason instanceof ApiError) return this.fail(c, id, ctrl.signal.reason);
      this.s.log.debug({ conn: c.n, id, op, ms: +(performance.now() - t0).toFixed(2) }, 'channel: done');
      const reply: Record<string, unknown> = { id, ok: true, result: r.result };
      if (r.tensors) reply.tensors = r.tensors;
      this.send(c, reply);
    })();
    this.inflight.add(p);
    p.finally(() => this.inflight.delete(p));
  }

  /** Fails everything pending with `reason`, waits until the replies are sent, then closes all sockets. */
  async shutdown(reason: ApiError, graceMs = 5000): Promise<void> {
    for (const c of this.conns) for (const ctrl of c.pending.values()) ctrl.abort(reason);
    await Promise.race([Promise.allSettled([...this.inflight]), new Promise((r) => setTimeout(r, graceMs))]);
    for (const c of this.conns) c.ws.close(1001, 'server shutting down');
    await new Promise((r) => setTimeout(r, 20));
    for (const c of this.conns) c.ws.terminate();
    this.wss.close();
  }
}
