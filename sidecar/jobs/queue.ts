// One FIFO per model: work on one model runs strictly one at a time in arrival order, so forwards
// never interleave on the engine's state; different models each have their own queue and run side by side.
// Cancelling queued work removes it; cancelling running work aborts its signal and rejects the caller
// at once, while the queue stays held until the engine actually returns (the model is never used twice).

/** The reason an aborted signal carries, or a generic cancellation error. */
export function abortReason(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  if (r instanceof Error) return r;
  const e = new Error(typeof r === 'string' ? r : 'cancelled');
  e.name = 'AbortError';
  return e;
}

interface Item {
  run: (signal: AbortSignal) => Promise<unknown>;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  signal?: AbortSignal;
  onAbort?: () => void;
  enqueued: number;
}

export interface QueueTiming {
  /** Milliseconds the item waited before it started. */
  queuedMs: number;
}

export class FifoQueue {
  private readonly items: Item[] = [];
  private busy = false;
  private closedWith: Error | undefined;

  /** Number of items waiting (not counting the running one). */
  get waiting(): number {
    return this.items.length;
  }

  get running(): boolean {
    return this.busy;
  }

  /**
   * Queues `run`; it gets a signal that aborts when `signal` aborts. Resolves with its value and the
   * time it waited. Rejects with the signal's reason if aborted, while queued or while running.
   */
  push<T>(run: (signal: AbortSignal, timing: QueueTiming) => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise<T>((resolve, reject) => {
      const item: Item = {
        run: (s) => run(s, { queuedMs: performance.now() - item.enqueued }),
        resolve: resolve as (v: unknown) => void,
        reject,
        signal,
        enqueued: performance.now(),
      };
      if (signal) {
        item.onAbort = () => {
          const i = this.items.indexOf(item);
          if (i >= 0) this.items.splice(i, 1);
          reject(abortReason(signal));
        };
        signal.addEventListener('abort', item.onAbort, { once: true });
      }
      this.items.push(item);
      this.pump();
    });
  }

  /** Fails every waiting item with `err` and refuses new ones; the running one is left to its signal. */
  close(err: Error): void {
    this.closedWith = err;
    for (const it of this.items.splice(0)) {
      if (it.onAbort) it.signal?.removeEventListener('abort', it.onAbort);
      it.reject(err);
    }
  }

  /** Resolves once nothing is running (used before disposing a model). */
  async idle(): Promise<void> {
    while (this.busy || this.items.length) await new Promise((r) => setTimeout(r, 5));
  }

  private pump(): void {
    if (this.busy) return;
    const item = this.items.shift();
    if (!item) return;
    this.busy = true;
    const ctrl = new AbortController();
    let settled = false;
    if (item.onAbort) item.signal!.removeEventListener('abort', item.onAbort);
    const onAbort = () => {
      ctrl.abort(item.signal!.reason);
      if (!settled) {
        settled = true;
        item.reject(abortReason(item.signal!));
      }
    };
    item.signal?.addEventListener('abort', onAbort, { once: true });
    let p: Promise<unknown>;
    try {
      p = item.run(ctrl.signal);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      (v) => {
        if (!settled) item.resolve(v);
      },
      (e) => {
        if (!settled) item.reject(e);
      },
    ).finally(() => {
      settled = true;
      item.signal?.removeEventListener('abort', onAbort);
      this.busy = false;
      this.pump();
    });
  }
}
