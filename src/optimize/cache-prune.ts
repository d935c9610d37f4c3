/**
 * Keeping the optimized-graph cache to a size. Each entry holds a whole copy of its model's
 * weights as onnxruntime laid them out (4.7 GB for an SD 1.5 UNet variant with Winograd
 * convolutions), one per model × ToMe options × attention × convolution variant, so without a
 * bound a user trying a few ratios fills the disk. After an entry is published the least
 * recently used entries are removed until the cache is within its cap; an entry's last use is
 * its `meta.json`'s modification time, refreshed on every hit. The entry just written (and any
 * other named in `keep`) is never removed, nor is a half-written one of a run in progress;
 * half-written entries older than a day (a crashed run) are.
 *
 * The cap: `SDGEN_CACHE_MAX_GB` (0 or "off": unbounded), default {@link DEFAULT_CACHE_MAX_GB}.
 * Only `<cacheDir>/optimized` is bounded: the ToMe / fused-attention / Winograd entries beside
 * it hold graphs only and link their source's weights.
 */
import { readdir, rm, stat, utimes } from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../errors.js';

/** Default cap in GB: five SD 1.5 UNet variants with their VAE decoders and text encoders. */
export const DEFAULT_CACHE_MAX_GB = 30;

const GB = 1024 ** 3;
const STALE_TMP_MS = 24 * 3600 * 1000;

/** The cap in bytes from the environment (Infinity when unbounded). Throws on a bad value. */
export function cacheMaxBytes(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env['SDGEN_CACHE_MAX_GB']?.trim();
  if (raw === undefined || raw === '') return DEFAULT_CACHE_MAX_GB * GB;
  if (raw === '0' || raw.toLowerCase() === 'off') return Infinity;
  const gb = Number(raw);
  if (!Number.isFinite(gb) || gb < 0) throw new UsageError(`SDGEN_CACHE_MAX_GB must be a number of GB (0 or off: no limit), got "${raw}"`);
  return gb * GB;
}

export interface CacheEntryInfo {
  name: string;
  bytes: number;
  /** last use (ms since the epoch) */
  usedMs: number;
}

/**
 * Which entries to remove so that the total fits `maxBytes`: least recently used first, never
 * one named in `keep`. Pure.
 */
export function entriesToEvict(entries: readonly CacheEntryInfo[], maxBytes: number, keep: ReadonlySet<string> = new Set()): CacheEntryInfo[] {
  let total = entries.reduce((s, e) => s + e.bytes, 0);
  const out: CacheEntryInfo[] = [];
  for (const e of [...entries].sort((a, b) => a.usedMs - b.usedMs)) {
    if (total <= maxBytes) break;
    if (keep.has(e.name)) continue;
    out.push(e);
    total -= e.bytes;
  }
  return out;
}

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const d of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, d.name);
    if (d.isDirectory()) total += await dirBytes(p);
    else if (d.isFile()) total += (await stat(p)).size;
  }
  return total;
}

/** Marks an entry as just used (best effort). */
export async function touchEntry(entryDir: string): Promise<void> {
  const now = new Date();
  await utimes(path.join(entryDir, 'meta.json'), now, now).catch(() => {});
}

export interface PruneResult {
  removed: string[];
  freedBytes: number;
  totalBytes: number;
}

/**
 * Removes least recently used entries of `<root>` (a directory of entries, each with a
 * `meta.json`) until they fit `maxBytes`, and half-written entries older than a day.
 */
export async function pruneCacheDir(root: string, maxBytes: number, keep: ReadonlySet<string> = new Set(), nowMs = Date.now()): Promise<PruneResult> {
  const result: PruneResult = { removed: [], freedBytes: 0, totalBytes: 0 };
  let names: string[];
  try {
    names = await readdir(root);
  } catch {
    return result;
  }
  const entries: CacheEntryInfo[] = [];
  for (const name of names) {
    const dir = path.join(root, name);
    try {
      if (name.includes('.tmp-')) {
        if (nowMs - (await stat(dir)).mtimeMs > STALE_TMP_MS) {
          await rm(dir, { recursive: true, force: true });
          result.removed.push(name);
        }
        continue;
      }
      const meta = await stat(path.join(dir, 'meta.json')).catch(() => undefined);
      entries.push({ name, bytes: await dirBytes(dir), usedMs: meta?.mtimeMs ?? 0 });
    } catch {
      // removed by a concurrent run meanwhile
    }
  }
  const evict = entriesToEvict(entries, maxBytes, keep);
  for (const e of evict) {
    try {
      await rm(path.join(root, e.name), { recursive: true, force: true });
    } catch {
      continue; // in use where open files cannot be removed (Windows): next time
    }
    result.removed.push(e.name);
    result.freedBytes += e.bytes;
  }
  result.totalBytes = entries.reduce((s, e) => s + e.bytes, 0) - result.freedBytes;
  return result;
}
