import { readFileSync } from 'node:fs';

/** sdgen's version, read once from package.json (part of every cache key). */
export const SDGEN_VERSION: string = (() => {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
})();
