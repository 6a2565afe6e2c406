// `svdq serve`: start the sidecar (REST + WebSocket channel) and keep it running until SIGINT/SIGTERM.
import { parseArgs } from 'node:util';
import { delimiter, resolve } from 'node:path';
import { pino } from 'pino';
import { defaultTokenFile, loadOrCreateToken } from '../server/auth.ts';
import { startServer } from '../server/server.ts';

export const USAGE = `svdq serve [--host 127.0.0.1] [--port 8190] [--models DIR ...] [--device cpu|cuda]
           [--token-file F] [--max-frame-mb 512] [--cache-mb 1024] [--log-level info]

Starts the sidecar: REST under /v1 (OpenAPI at /v1/openapi.json) and the msgpack channel at
/v1/channel (docs/PROTOCOL.md). Clients authenticate with the token in the token file (created
with mode 0600 if missing). Clients may only name files inside the --models folders
(also taken from SVDQ_MODELS, ${delimiter}-separated).`;

function num(v: string | undefined, name: string, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name}: expected a positive number, got ${v}`);
  return n;
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8190' },
      models: { type: 'string', multiple: true },
      device: { type: 'string', default: 'cpu' },
      'token-file': { type: 'string' },
      'max-frame-mb': { type: 'string' },
      'cache-mb': { type: 'string' },
      'log-level': { type: 'string', default: process.env.SVDQ_LOG_LEVEL ?? 'info' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.device !== 'cpu' && values.device !== 'cuda') throw new Error(`--device: expected cpu or cuda, got ${values.device}`);
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port: expected 0..65535, got ${values.port}`);
  const dirs = values.models ?? (process.env.SVDQ_MODELS ? process.env.SVDQ_MODELS.split(delimiter).filter(Boolean) : []);
  const tokenFile = resolve(values['token-file'] ?? defaultTokenFile());
  const token = loadOrCreateToken(tokenFile);
  const log = pino({ level: values['log-level'] }, pino.destination(2)); // logs on stderr, the URL on stdout
  // An engine or handler bug must not take the sidecar (and every client's models) down with it.
  process.on('unhandledRejection', (e) => log.error({ err: e instanceof Error ? e.stack : String(e) }, 'unhandled rejection'));
  if (!dirs.length) log.warn('no --models folders: requests naming files will be refused');
  if (values.host !== '127.0.0.1' && values.host !== 'localhost' && values.host !== '::1') {
    log.warn({ host: values.host }, 'listening beyond loopback: anyone who can reach this port and has the token can use the GPU');
  }
  const srv = await startServer({
    host: values.host, port, modelDirs: dirs.map((d) => resolve(d)), device: values.device, token, log,
    maxFrameBytes: Math.round(num(values['max-frame-mb'], 'max-frame-mb', 512) * 2 ** 20),
    cacheBytes: Math.round(num(values['cache-mb'], 'cache-mb', 1024) * 2 ** 20),
  });
  console.log(`svdq sidecar listening on ${srv.url}`);
  console.log(`token file: ${tokenFile}`);
  console.log(`channel: ${srv.url.replace(/^http/, 'ws')}/v1/channel   openapi: ${srv.url}/v1/openapi.json`);
  await new Promise<void>((done) => {
    const stop = (sig: string) => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      srv.close(sig).then(done, (e) => {
        log.error({ err: (e as Error).message }, 'error during shutdown');
        done();
      });
    };
    const onInt = () => stop('SIGINT');
    const onTerm = () => stop('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
  return 0;
}

export default main;

// Direct use: `node --import tsx sidecar/cli/serve.ts ...` (the svdq dispatcher imports main()).
if (import.meta.url === `file://${process.argv[1]}`) {
  main(process.argv.slice(2)).then((c) => process.exit(c), (e) => {
    console.error(`svdq serve: ${(e as Error).message}`);
    process.exit(2);
  });
}
