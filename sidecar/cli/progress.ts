// A command-line progress bar for long work (loading, quantizing, sampling), quiet when not a TTY.
import cliProgress from 'cli-progress';
import type { ProgressCallback } from '../engine/types.ts';

export interface Progress {
  update: ProgressCallback;
  stop(): void;
}

export function progressBar(label: string): Progress {
  if (!process.stderr.isTTY) {
    // Logs and CI: one line per stage change and at the end, not a redraw per unit.
    let last = '';
    return {
      update: (done, total, stage) => {
        if (stage !== last || done === total) {
          last = stage;
          if (done === total || done === 0) console.error(`${label}: ${stage} ${done}/${total}`);
        }
      },
      stop: () => {},
    };
  }
  const bar = new cliProgress.SingleBar(
    { format: `${label} [{bar}] {percentage}% {value}/{total} {stage} | {duration_formatted}`, stream: process.stderr },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update: (done, total, stage) => {
      if (!started) {
        bar.start(total, done, { stage });
        started = true;
      }
      bar.setTotal(total);
      bar.update(done, { stage });
    },
    stop: () => started && bar.stop(),
  };
}
