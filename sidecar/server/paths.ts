// Client-supplied paths must name files inside the configured model folders. Both the folders and the
// candidate are resolved with realpath, so `..`, absolute paths elsewhere and symlinks pointing out of
// a folder are all refused; a file that does not exist yet (an output) is checked through its parent.
import { realpathSync, existsSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { ApiError } from './errors.ts';

export class PathSandbox {
  readonly roots: string[];

  constructor(dirs: string[]) {
    this.roots = dirs.map((d) => {
      if (!existsSync(d) || !statSync(d).isDirectory()) throw new Error(`--models ${d}: not a directory`);
      return realpathSync(d);
    });
  }

  private inside(real: string): boolean {
    return this.roots.some((r) => real === r || real.startsWith(r.endsWith(sep) ? r : r + sep));
  }

  /**
   * The real path of `p` (absolute, or relative to the first folder), which must lie in a model folder.
   * `mustExist`: the file must exist (else not_found); otherwise its parent folder must.
   */
  resolve(p: unknown, arg: string, mustExist = true): string {
    if (typeof p !== 'string' || p.length === 0) throw new ApiError('bad_args', `${arg}: expected a non-empty path string`, arg);
    if (p.includes('\0')) throw new ApiError('forbidden_path', `${arg}: path contains a NUL byte`, arg);
    if (this.roots.length === 0) {
      throw new ApiError('forbidden_path', `${arg}: the server has no model folders (start it with --models DIR)`, arg);
    }
    const abs = isAbsolute(p) ? resolve(p) : resolve(this.roots[0], p);
    const denied = () => new ApiError('forbidden_path', `${arg}: ${p} is outside the model folders (${this.roots.join(', ')})`, arg);
    let real: string;
    if (existsSync(abs)) {
      real = realpathSync(abs);
    } else {
      if (mustExist) {
        // Do not say whether a path outside the folders exists.
        const parent = existsSync(dirname(abs)) ? realpathSync(dirname(abs)) : undefined;
        if (parent === undefined || !this.inside(join(parent, basename(abs)))) throw denied();
        throw new ApiError('not_found', `${arg}: ${p} does not exist`, arg);
      }
      const parent = dirname(abs);
      if (!existsSync(parent)) throw new ApiError('not_found', `${arg}: folder ${dirname(p)} does not exist`, arg);
      real = join(realpathSync(parent), basename(abs));
    }
    if (!this.inside(real)) throw denied();
    if (mustExist && !statSync(real).isFile()) throw new ApiError('bad_args', `${arg}: ${p} is not a file`, arg);
    return real;
  }
}
