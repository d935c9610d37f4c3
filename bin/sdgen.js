#!/usr/bin/env node
// sdgen launcher: runs the compiled CLI (dist/, built by `npm ci` through the prepare script).
// In a clone that was not built it falls back to the TypeScript sources through tsx when present.
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = new URL('../', import.meta.url);
const built = new URL('dist/cli/main.js', root);

async function load() {
  if (existsSync(fileURLToPath(built))) return import(built.href);
  const source = new URL('src/cli/main.ts', root);
  if (existsSync(fileURLToPath(source))) {
    try {
      const { register } = await import('tsx/esm/api');
      register();
      return import(pathToFileURL(fileURLToPath(source)).href);
    } catch {
      // tsx not installed: fall through
    }
  }
  process.stderr.write('sdgen: not built; run `npm ci` (or `npm run build`) in the sdgen folder\n');
  process.exit(1);
}

const { main } = await load();
process.exitCode = await main(process.argv);
