// The REST app: token check, body parsing (JSON with base64 tensor data, or msgpack), one handler per
// route of routes.ts running the matching op, and errors as {error: {code, message, arg}}.
import express, { type Request, type Response, type NextFunction } from 'express';
import type { TensorData } from '../engine/types.ts';
import { ApiError, HTTP_STATUS, toApiError } from './errors.ts';
import { bearer, tokenMatches } from './auth.ts';
import { runOp, type ServerState } from './ops.ts';
import { ROUTES } from './routes.ts';
import { openApiDocument } from './openapi.ts';
import { unpackr } from './channel.ts';
import { packChunks } from './msgpack-chunks.ts';

const MSGPACK = 'application/msgpack';
const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** JSON bodies carry tensor data as base64: turn those strings into bytes before validation. */
function decodeJsonTensors(body: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(body)) {
    if (v && typeof v === 'object' && !Array.isArray(v) && typeof (v as { data?: unknown }).data === 'string') {
      const s = (v as { data: string }).data;
      if (s.length % 4 !== 0 || !B64.test(s)) throw new ApiError('bad_tensor', `${k}: data is not valid base64`, k);
      out[k] = { ...(v as object), data: Buffer.from(s, 'base64') };
    } else out[k] = v;
  }
  return out;
}

function encodeJsonTensors(t: Record<string, TensorData>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(t).map(([k, v]) => [k, { dtype: v.dtype, shape: v.shape, data: Buffer.from(v.data.buffer, v.data.byteOffset, v.data.byteLength).toString('base64') }]));
}

function sendError(res: Response, e: unknown): void {
  const err = toApiError(e);
  if (res.headersSent) return void res.end();
  res.status(HTTP_STATUS[err.code]).json({ error: err.toJSON() });
}

export interface RestOptions {
  token: string;
  maxBodyBytes: number;
  /** In-flight REST requests, aborted with the shutdown reason. */
  inflight: Set<AbortController>;
}

export function restApp(s: ServerState, o: RestOptions): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.use((req, res, next) => {
    if (!tokenMatches(o.token, bearer(req.headers.authorization))) {
      s.log.warn({ path: req.path, remote: req.socket.remoteAddress }, 'rest: missing or wrong token');
      return sendError(res, new ApiError('unauthorized', 'missing or wrong token (Authorization: Bearer <token>)'));
    }
    next();
  });
  // base64 inflates by 4/3, so the JSON limit is a bit above the frame limit.
  app.use(express.json({ limit: Math.ceil(o.maxBodyBytes * 1.4) }));
  app.use(express.raw({ type: MSGPACK, limit: o.maxBodyBytes }));

  app.get('/v1/openapi.json', (_req, res) => void res.json(openApiDocument()));

  for (const r of ROUTES) {
    app[r.method](r.path, async (req: Request, res: Response) => {
      const ctrl = new AbortController();
      o.inflight.add(ctrl);
      // A client that goes away cancels its work (queued or running) instead of holding the model.
      res.on('close', () => {
        if (!res.writableFinished) ctrl.abort(new ApiError('cancelled', 'the client disconnected'));
        o.inflight.delete(ctrl);
      });
      const asMsgpack = req.is(MSGPACK) === MSGPACK;
      try {
        let args: Record<string, unknown> = {};
        if (r.body) {
          if (asMsgpack) {
            try {
              args = unpackr.unpack(req.body as Buffer) as Record<string, unknown>;
            } catch (e) {
              throw new ApiError('bad_frame', `malformed msgpack body: ${(e as Error).message}`);
            }
          } else {
            args = (req.body ?? {}) as Record<string, unknown>;
          }
          if (typeof args !== 'object' || args === null || Array.isArray(args)) throw new ApiError('bad_args', `${r.op}: body must be a map of args`);
          if (!asMsgpack) args = decodeJsonTensors(args);
        }
        for (const [p, arg] of Object.entries(r.params ?? {})) {
          if (arg in args) throw new ApiError('bad_args', `${r.op}: '${arg}' comes from the URL, not the body`, arg);
          args[arg] = req.params[p];
        }
        const out = await runOp(s, r.op, args, { signal: ctrl.signal, detachJobs: r.detach });
        if (ctrl.signal.aborted) throw ctrl.signal.reason;
        const status = out.status ?? (r.status && r.status !== 202 ? r.status : 200);
        // Reply in msgpack when asked for it, or when the body was msgpack and Accept does not say otherwise.
        const accept = req.get('accept');
        const wantsMsgpack = accept && accept !== '*/*' ? req.accepts(['json', MSGPACK]) === MSGPACK : asMsgpack;
        if (wantsMsgpack && out.tensors) {
          // Written chunk by chunk so the output tensor is not copied into one body buffer.
          const chunks = packChunks({ ...out.result, tensors: out.tensors });
          res.status(status).type(MSGPACK).setHeader('content-length', chunks.reduce((n, c) => n + c.byteLength, 0));
          for (const ch of chunks) res.write(ch);
          res.end();
        } else {
          res.status(status).json(out.tensors ? { ...out.result, tensors: encodeJsonTensors(out.tensors) } : out.result);
        }
      } catch (e) {
        const err = ctrl.signal.aborted && ctrl.signal.reason instanceof ApiError ? ctrl.signal.reason : toApiError(e);
        if (err.code === 'engine_error' || err.code === 'internal' || err.code === 'out_of_memory') s.log.warn({ op: r.op, code: err.code, msg: err.message }, 'rest: request failed');
        sendError(res, err);
      }
    });
  }

  app.use((req, res) => sendError(res, new ApiError('not_found', `no route ${req.method} ${req.path} (see /v1/openapi.json)`)));
  // Body-parser failures (too large, malformed JSON) arrive here.
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    const t = (err as { type?: string }).type;
    if (t === 'entity.too.large') return sendError(res, new ApiError('too_large', `request body exceeds the limit of ${o.maxBodyBytes} bytes (--max-frame-mb)`));
    if (t === 'entity.parse.failed') return sendError(res, new ApiError('bad_frame', `malformed JSON body: ${(err as Error).message}`));
    sendError(res, err);
  });
  return app;
}
