/**
 * Loaded before every test file (package.json's `test` script): the suite's derived models
 * (ToMe-patched, fused, Winograd, optimized graphs) go to a temporary cache of their own, removed
 * at exit, instead of the user's ~/.cache/sdgen. A cache named in the environment is used as is.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

if (!process.env['SDGEN_CACHE_DIR']) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-test-cache-'));
  process.env['SDGEN_CACHE_DIR'] = dir;
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
}
