/**
 * Where sdgen keeps derived models (ToMe-patched and optimized graphs) when the caller names no
 * cache directory: $SDGEN_CACHE_DIR, else $XDG_CACHE_HOME/sdgen, else ~/.cache/sdgen
 * (%LOCALAPPDATA%\sdgen\cache on Windows).
 */
import { stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SdgenError } from '../errors.js';
import { makeDirs } from '../files.js';

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env, platform: string = process.platform): string {
  if (env['SDGEN_CACHE_DIR']) return path.resolve(env['SDGEN_CACHE_DIR']);
  if (platform === 'win32' && env['LOCALAPPDATA']) return path.join(env['LOCALAPPDATA'], 'sdgen', 'cache');
  if (env['XDG_CACHE_HOME']) return path.join(env['XDG_CACHE_HOME'], 'sdgen');
  return path.join(os.homedir(), '.cache', 'sdgen');
}

/**
 * Makes sure `dir` can hold the cache: created when missing; a path that is a file, or that
 * cannot be created, is an SdgenError naming the settings that choose it (one line), raised
 * before any model is read rather than as a failed rewrite later.
 */
export async function prepareCacheDir(dir: string): Promise<void> {
  const where = '(set by --cache-dir, cacheDir in .sdgenrc, or SDGEN_CACHE_DIR)';
  try {
    makeDirs(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    const what = code === 'EEXIST' || code === 'ENOTDIR' ? 'is not a directory' : `cannot be created (${code})`;
    throw new SdgenError(`cache directory ${dir} ${what} ${where}`, { cause: err });
  }
  const st = await stat(dir);
  if (!st.isDirectory()) throw new SdgenError(`cache directory ${dir} is not a directory ${where}`);
}
