// Errors as the server reports them: a stable code, a message naming the problem, optionally the arg.
// Every failure (validation, engine, cancellation, shutdown) is turned into one of these so a bad
// request costs one error reply, never the process.

export type ErrorCode =
  | 'bad_frame' | 'bad_request' | 'unknown_op' | 'bad_args' | 'bad_tensor' | 'unknown_ref'
  | 'unauthorized' | 'forbidden_path' | 'not_found' | 'too_large' | 'out_of_memory' | 'engine_error'
  | 'unsupported' | 'cancelled' | 'shutting_down' | 'internal';

export const HTTP_STATUS: Record<ErrorCode, number> = {
  bad_frame: 400, bad_request: 400, unknown_op: 404, bad_args: 400, bad_tensor: 400, unknown_ref: 409,
  unauthorized: 401, forbidden_path: 403, not_found: 404, too_large: 413, out_of_memory: 507,
  engine_error: 500, unsupported: 501, cancelled: 499, shutting_down: 503, internal: 500,
};

export class ApiError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly arg?: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  toJSON(): { code: ErrorCode; message: string; arg?: string } {
    return this.arg === undefined ? { code: this.code, message: this.message } : { code: this.code, message: this.message, arg: this.arg };
  }
}

export const cancelled = (why: string) => new ApiError('cancelled', why);

/**
 * Any thrown value as an ApiError. Engine errors keep their message; "out of memory" anywhere in it
 * (the engine's wording for a device or simulated memory cap) becomes out_of_memory.
 */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof Error) {
    if (e.name === 'AbortError') return new ApiError('cancelled', e.message || 'cancelled');
    if (/out of memory/i.test(e.message)) return new ApiError('out_of_memory', e.message);
    const code = (e as { code?: unknown }).code;
    if (code === 'ENOENT') return new ApiError('not_found', e.message);
    return new ApiError('engine_error', e.message || String(e));
  }
  return new ApiError('internal', `non-error thrown: ${String(e)}`);
}
