// Long-running work (quantize, load-with-quantize) as jobs with ids, progress and cancellation, so
// REST clients can poll them and channel clients can follow them through progress frames.
import { abortReason } from './queue.ts';

export type JobState = 'queued' | 'running' | 'done' | 'failed' | 'cancelled';

export interface JobProgress {
  done: number;
  total: number;
  stage: string;
}

export interface JobView {
  id: string;
  kind: string;
  state: JobState;
  progress: JobProgress | null;
  result?: unknown;
  error?: { code: string; message: string };
  created: number;
  finished?: number;
}

export type JobRunner<T> = (ctx: {
  signal: AbortSignal;
  progress: (done: number, total: number, stage: string) => void;
}) => Promise<T>;

interface Job {
  view: JobView;
  ctrl: AbortController;
  promise: Promise<unknown>;
  listeners: Set<(p: JobProgress) => void>;
}

/** Maps any thrown value to the {code, message} a job reports. */
export type ErrorDescriber = (e: unknown) => { code: string; message: string };

export class JobRegistry {
  private next = 1;
  private readonly jobs = new Map<string, Job>();

  constructor(
    private readonly describe: ErrorDescriber,
    /** Finished jobs kept for polling; the oldest finished ones are forgotten first. */
    private readonly keepFinished = 256,
  ) {}

  /** Starts `run` as a job now; the returned promise settles with the job's outcome. */
  start<T>(kind: string, run: JobRunner<T>): { id: string; promise: Promise<T> } {
    const id = `job-${this.next++}`;
    const ctrl = new AbortController();
    const view: JobView = { id, kind, state: 'running', progress: null, created: Date.now() };
    const listeners = new Set<(p: JobProgress) => void>();
    const progress = (done: number, total: number, stage: string) => {
      view.progress = { done, total, stage };
      for (const l of listeners) l(view.progress);
    };
    const promise = (async () => {
      try {
        const r = await run({ signal: ctrl.signal, progress });
        if (ctrl.signal.aborted) throw abortReason(ctrl.signal);
        view.state = 'done';
        view.result = r;
        return r;
      } catch (e) {
        const err = ctrl.signal.aborted ? abortReason(ctrl.signal) : e;
        view.state = ctrl.signal.aborted ? 'cancelled' : 'failed';
        view.error = this.describe(err);
        throw err;
      } finally {
        view.finished = Date.now();
        listeners.clear();
        this.prune();
      }
    })();
    promise.catch(() => {}); // the outcome is read through the view or by awaiting callers
    this.jobs.set(id, { view, ctrl, promise, listeners });
    return { id, promise: promise as Promise<T> };
  }

  get(id: string): JobView | undefined {
    return this.jobs.get(id)?.view;
  }

  /** Follows a job's progress until it finishes; returns an unsubscribe function. */
  onProgress(id: string, fn: (p: JobProgress) => void): () => void {
    const j = this.jobs.get(id);
    if (!j) return () => {};
    j.listeners.add(fn);
    return () => j.listeners.delete(fn);
  }

  /** Aborts a queued or running job with `reason`; false when it is unknown or already finished. */
  cancel(id: string, reason: Error): boolean {
    const j = this.jobs.get(id);
    if (!j || j.view.finished !== undefined) return false;
    j.ctrl.abort(reason);
    return true;
  }

  /** Aborts every unfinished job and waits for them to settle. */
  async cancelAll(reason: Error): Promise<void> {
    const open = [...this.jobs.values()].filter((j) => j.view.finished === undefined);
    for (const j of open) j.ctrl.abort(reason);
    await Promise.allSettled(open.map((j) => j.promise));
  }

  private prune(): void {
    const done = [...this.jobs.values()].filter((j) => j.view.finished !== undefined);
    for (const j of done.slice(0, Math.max(0, done.length - this.keepFinished))) this.jobs.delete(j.view.id);
  }
}
