// Wires the sidecar together: state (models, jobs, cache, sandbox), the REST app and the channel on
// one HTTP server, and a shutdown that fails in-flight work with a clear error before closing.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino, type Logger } from 'pino';
import { JobRegistry } from '../jobs/registry.ts';
import { ApiError, toApiError } from './errors.ts';
import { ModelRegistry, type EngineLoader } from './models.ts';
import { PathSandbox } from './paths.ts';
import { TensorCache } from './tensors.ts';
import { Channel } from './channel.ts';
import { restApp } from './rest.ts';
import type { Quantizer, ServerState } from './ops.ts';

export interface ServeOptions {
  host?: string;
  port?: number;
  modelDirs: string[];
  device?: string;
  token: string;
  maxFrameBytes?: number;
  cacheBytes?: number;
  log?: Logger;
  /** Defaults to the native engine (sidecar/engine/engine.ts). */
  loadEngine?: EngineLoader;
  /** Defaults to sidecar/quant/quantize.ts. */
  quantize?: Quantizer;
}

export interface RunningServer {
  url: string;
  port: number;
  host: string;
  state: ServerState;
  http: Server;
  /** Fails in-flight work with shutting_down (naming `why`), closes sockets, frees models. */
  close(why?: string): Promise<void>;
}

const defaultLoader: EngineLoader = async (path, opts) => {
  const { Engine } = await import('../engine/engine.ts');
  return Engine.load(path, opts);
};

// Resolved at call time (not a static import) so the server builds and serves without the
// quantizer module; a quantize request then fails with `unsupported` instead of the whole sidecar.
const QUANTIZE_MODULE = '../quant/quantize.ts';
const defaultQuantizer: Quantizer = async (opts, ctl) => {
  let mod: { quantizeCheckpoint?: Quantizer };
  try {
    mod = (await import(QUANTIZE_MODULE)) as { quantizeCheckpoint?: Quantizer };
  } catch (e) {
    throw new ApiError('unsupported', `quantization is not available in this build (${QUANTIZE_MODULE}: ${(e as Error).message})`);
  }
  if (typeof mod.quantizeCheckpoint !== 'function') throw new ApiError('unsupported', `${QUANTIZE_MODULE} has no quantizeCheckpoint()`);
  return mod.quantizeCheckpoint(opts, ctl);
};

export async function startServer(o: ServeOptions): Promise<RunningServer> {
  const log = o.log ?? pino({ level: process.env.SVDQ_LOG_LEVEL ?? 'info' });
  const maxFrameBytes = o.maxFrameBytes ?? 512 * 2 ** 20;
  const device = o.device ?? 'cpu';
  const state: ServerState = {
    models: new ModelRegistry(o.loadEngine ?? defaultLoader, device),
    jobs: new JobRegistry((e) => toApiError(e).toJSON()),
    cache: new TensorCache(o.cacheBytes ?? 1024 * 2 ** 20),
    sandbox: new PathSandbox(o.modelDirs),
    log,
    quantize: o.quantize ?? defaultQuantizer,
    device,
    startedAt: Date.now(),
    shuttingDown: false,
  };
  const restInflight = new Set<AbortController>();
  const app = restApp(state, { token: o.token, maxBodyBytes: maxFrameBytes, inflight: restInflight });
  const channel = new Channel(state, { token: o.token, maxFrameBytes });
  const http = createServer(app);
  http.on('upgrade', (req, socket, head) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path !== '/v1/channel') {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
      return;
    }
    channel.handleUpgrade(req, socket, head);
  });
  const host = o.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(o.port ?? 8190, host, () => {
      http.off('error', reject);
      resolve();
    });
  });
  const port = (http.address() as AddressInfo).port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  log.info({ url, modelDirs: state.sandbox.roots, device }, 'svdq sidecar listening');

  let closing: Promise<void> | undefined;
  const close = (why = 'shutdown requested') => {
    closing ??= (async () => {
      state.shuttingDown = true;
      log.info({ why }, 'shutting down: failing in-flight requests');
      const reason = new ApiError('shutting_down', `the sidecar is shutting down (${why}); the request was not completed`);
      http.close(); // stop accepting; existing sockets are closed below
      for (const c of restInflight) c.abort(reason);
      await Promise.all([channel.shutdown(reason), state.jobs.cancelAll(reason)]);
      await new Promise((r) => setTimeout(r, 20)); // let REST error replies flush
      http.closeAllConnections();
      await state.models.unloadAll(reason);
      log.info('sidecar stopped');
    })();
    return closing;
  };
  return { url, port, host, state, http, close };
}
