// The REST routes as data: each maps onto an op of ops.ts. The express app and the OpenAPI document
// are both built from this one table, so the document cannot miss a route.
import { LORA_ROUTES } from './lora-ops.ts';

export interface RouteDef {
  method: 'get' | 'post' | 'patch' | 'delete';
  /** Express path syntax (`:name` params). */
  path: string;
  op: string;
  /** Path params and the op arg each one fills. */
  params?: Record<string, string>;
  /** Whether the op's remaining args come from the request body. */
  body?: boolean;
  /** Return {job} at once (202) instead of waiting for job-like work. */
  detach?: boolean;
  /** Status of a success reply. */
  status?: number;
  summary?: string;
}

export const ROUTES: RouteDef[] = [
  { method: 'get', path: '/v1/health', op: 'health' },
  { method: 'get', path: '/v1/models', op: 'list_models' },
  { method: 'post', path: '/v1/models', op: 'load', body: true, detach: true, status: 201,
    summary: 'Load a checkpoint. 201 with the model; 202 with {job} when a 16-bit checkpoint is quantized first.' },
  { method: 'delete', path: '/v1/models/:id', op: 'unload', params: { id: 'model' } },
  { method: 'post', path: '/v1/models/:id/forward', op: 'forward', params: { id: 'model' }, body: true,
    summary: 'One transformer evaluation. JSON body (tensor data base64) or application/msgpack body (data bin); reply in the same format (or as Accept asks).' },
  { method: 'post', path: '/v1/quantize', op: 'quantize', body: true, detach: true, status: 202,
    summary: 'Start a quantization job; poll GET /v1/jobs/{id}.' },
  { method: 'get', path: '/v1/jobs/:id', op: 'job', params: { id: 'job' } },
  { method: 'delete', path: '/v1/jobs/:id', op: 'cancel_job', params: { id: 'job' } },
  { method: 'post', path: '/v1/tensors', op: 'put_tensor', body: true, status: 201,
    summary: 'Store a tensor in the content-hash cache; use {"ref": hash} in later requests.' },
  { method: 'delete', path: '/v1/tensors/:hash', op: 'drop_tensor', params: { hash: 'hash' } },
  ...LORA_ROUTES,
];
