/**
 * Where sdgen keeps derived models (ToMe-patched and optimized graphs) when the caller names no
 * cache directory: $SDGEN_CACHE_DIR, else $XDG_CACHE_HOME/sdgen, else ~/.cache/sdgen
 * (%LOCALAPPDATA%\sdgen\cache on Windows).
 */
import os from 'node:os';
import path from 'node:path';

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env, platform: string = process.platform): string {
  if (env['SDGEN_CACHE_DIR']) return path.resolve(env['SDGEN_CACHE_DIR']);
  if (platform === 'win32' && env['LOCALAPPDATA']) return path.join(env['LOCALAPPDATA'], 'sdgen', 'cache');
  if (env['XDG_CACHE_HOME']) return path.join(env['XDG_CACHE_HOME'], 'sdgen');
  return path.join(os.homedir(), '.cache', 'sdgen');
}
