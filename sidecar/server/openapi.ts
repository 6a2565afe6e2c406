// The OpenAPI 3 document served at /v1/openapi.json, generated from the route table and the ops' arg
// specs (the same specs the server validates with).
import { OPS, VERSION } from './ops.ts';
import { ROUTES } from './routes.ts';
import type { ArgSpec } from './schema.ts';
import { HTTP_STATUS } from './errors.ts';

const ref = (n: string) => ({ $ref: `#/components/schemas/${n}` });

function argSchema(a: ArgSpec): Record<string, unknown> {
  const base: Record<string, unknown> = (() => {
    switch (a.type) {
      case 'str': return a.oneOf ? { type: 'string', enum: a.oneOf } : { type: 'string' };
      case 'int': return { type: 'integer' };
      case 'num': return { type: 'number' };
      case 'bool': return { type: 'boolean' };
      case 'id': return { oneOf: [{ type: 'integer' }, { type: 'string' }] };
      case 'tensor': return { oneOf: [ref('Tensor'), ref('TensorRef')] };
      case 'tensors': return { type: 'array', items: { oneOf: [ref('Tensor'), ref('TensorRef')] } };
      case 'loras': return { type: 'array', items: ref('LoraSpec') };
    }
  })();
  return a.doc ? { ...base, description: a.doc } : base;
}

const RESULT_SCHEMA: Record<string, unknown> = {
  health: { type: 'object', properties: { ok: { type: 'boolean' }, version: { type: 'string' }, device: { type: 'string' }, models: { type: 'integer' } } },
  list_models: { type: 'object', properties: { models: { type: 'array', items: ref('ModelInfo') } } },
  load: { oneOf: [ref('ModelInfo'), ref('JobAccepted')] },
  unload: { type: 'object', properties: { unloaded: { type: 'boolean' } } },
  forward: {
    type: 'object',
    properties: {
      engine_ms: { type: 'number' }, queue_ms: { type: 'number' },
      tensors: { type: 'object', properties: { out: ref('Tensor') }, required: ['out'] },
    },
  },
  quantize: ref('JobAccepted'),
  job: ref('Job'),
  cancel_job: ref('Job'),
  put_tensor: { type: 'object', properties: { hash: { type: 'string' }, bytes: { type: 'integer' }, cached: { type: 'boolean' } } },
  drop_tensor: { type: 'object', properties: { dropped: { type: 'boolean' } } },
};

export function openApiDocument(): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of ROUTES) {
    const op = OPS[r.op];
    const oaPath = r.path.replace(/:(\w+)/g, '{$1}');
    const fromPath = new Set(Object.values(r.params ?? {}));
    const bodyArgs = Object.entries(op.args).filter(([k]) => !fromPath.has(k));
    const errorCodes = [400, 401, 403, 404, 409, 413, 499, 500, 503, 507];
    const responses: Record<string, unknown> = {
      [String(r.status ?? 200)]: { description: 'success', content: { 'application/json': { schema: RESULT_SCHEMA[r.op] ?? { type: 'object' } } } },
    };
    if (r.op === 'load') responses['202'] = { description: 'quantizing first: a job was started', content: { 'application/json': { schema: ref('JobAccepted') } } };
    for (const c of errorCodes) {
      const codes = Object.entries(HTTP_STATUS).filter(([, s]) => s === c).map(([k]) => k);
      responses[String(c)] = { description: `error (${codes.join(', ')})`, content: { 'application/json': { schema: ref('Error') } } };
    }
    const entry: Record<string, unknown> = {
      operationId: r.op,
      summary: r.summary ?? op.summary,
      description: `Channel op \`${r.op}\` (docs/PROTOCOL.md).`,
      parameters: Object.entries(r.params ?? {}).map(([p, arg]) => ({ name: p, in: 'path', required: true, schema: { type: 'string' }, description: `the ${arg} id` })),
      responses,
    };
    if (r.body) {
      const schema = {
        type: 'object', additionalProperties: false,
        properties: Object.fromEntries(bodyArgs.map(([k, a]) => [k, argSchema(a)])),
        required: bodyArgs.filter(([, a]) => !a.optional).map(([k]) => k),
      };
      entry.requestBody = {
        required: true,
        content: { 'application/json': { schema }, ...(r.op === 'forward' ? { 'application/msgpack': { schema } } : {}) },
      };
    }
    (paths[oaPath] ??= {})[r.method] = entry;
  }
  paths['/v1/openapi.json'] = { get: { operationId: 'openapi', summary: 'This document.', responses: { 200: { description: 'OpenAPI 3 document', content: { 'application/json': { schema: { type: 'object' } } } } } } };
  paths['/v1/channel'] = {
    get: {
      operationId: 'channel', summary: 'WebSocket upgrade: the msgpack channel (docs/PROTOCOL.md). Token by header, ?token= or an auth frame.',
      parameters: [{ name: 'token', in: 'query', required: false, schema: { type: 'string' } }],
      responses: { 101: { description: 'switching protocols' }, 401: { description: 'wrong token' } },
    },
  };
  return {
    openapi: '3.0.3',
    info: { title: 'svdq sidecar', version: VERSION, description: 'SVDQuant 4-bit FLUX inference sidecar. Every route needs `Authorization: Bearer <token>` (the token file printed by `svdq serve`).' },
    servers: [{ url: '/' }],
    security: [{ bearer: [] }],
    paths,
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      schemas: {
        Tensor: {
          type: 'object', additionalProperties: false, required: ['dtype', 'shape', 'data'],
          properties: {
            dtype: { type: 'string', enum: ['F32', 'F16', 'BF16', 'F8_E4M3', 'I8', 'U8', 'I32', 'I64', 'BOOL'] },
            shape: { type: 'array', items: { type: 'integer', minimum: 0 } },
            data: { type: 'string', format: 'byte', description: 'little-endian elements; base64 in JSON, bin in msgpack' },
          },
        },
        TensorRef: { type: 'object', additionalProperties: false, required: ['ref'], properties: { ref: { type: 'string', description: 'hash from put_tensor' } } },
        LoraSpec: { type: 'object', additionalProperties: false, required: ['path', 'strength'], properties: { path: { type: 'string' }, strength: { type: 'number' } } },
        ModelInfo: {
          type: 'object',
          properties: {
            model: { type: 'string' }, path: { type: 'string' }, config: { type: 'object' }, weight_bytes: { type: 'integer' },
            layers: { type: 'integer' }, device: { type: 'string' }, precision: { type: 'string' }, queued: { type: 'integer' }, running: { type: 'boolean' },
          },
        },
        JobAccepted: { type: 'object', properties: { job: { type: 'string' } }, required: ['job'] },
        Job: {
          type: 'object',
          properties: {
            id: { type: 'string' }, kind: { type: 'string' }, state: { type: 'string', enum: ['queued', 'running', 'done', 'failed', 'cancelled'] },
            progress: { type: 'object', nullable: true, properties: { done: { type: 'integer' }, total: { type: 'integer' }, stage: { type: 'string' } } },
            result: {}, error: ref('ErrorBody'), created: { type: 'number' }, finished: { type: 'number' },
          },
        },
        ErrorBody: { type: 'object', required: ['code', 'message'], properties: { code: { type: 'string', enum: Object.keys(HTTP_STATUS) }, message: { type: 'string' }, arg: { type: 'string' } } },
        Error: { type: 'object', required: ['error'], properties: { error: ref('ErrorBody') } },
      },
    },
  };
}
