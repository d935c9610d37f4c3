/**
 * Directory creation that always ends. `mkdir(…, { recursive: true })` in Node 20 retries
 * forever when a parent cannot be created but reports ENOENT (e.g. a path under /proc), so every
 * directory a user names (output, cache, tome-patch and synth targets) is made here, one level at
 * a time, with the system's own error when a level cannot be made.
 */
import { mkdirSync, statSync } from 'node:fs';
import path from 'node:path';

/** Creates `dir` and its missing parents; throws the errno error (ENOTDIR when a level is a file). */
export function makeDirs(dir: string): void {
  const make = (d: string, depth: number): void => {
    try {
      mkdirSync(d);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') {
        if (!statSync(d).isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${d}'`), { code: 'ENOTDIR', syscall: 'mkdir', path: d });
        return;
      }
      const parent = path.dirname(d);
      if (code !== 'ENOENT' || parent === d || depth > 1000) throw e;
      make(parent, depth + 1);
    }
    try {
      mkdirSync(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && statSync(d).isDirectory()) return;
      throw e;
    }
  };
  make(path.resolve(dir), 0);
}
