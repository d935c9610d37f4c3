/**
 * Keeping the optimized-graph cache to a size. Each entry holds its model's weights as
 * onnxruntime laid them out (4.7 GB for an SD 1.5 UNet with Winograd convolutions, 14 GB for
 * SDXL's), one entry per model × ToMe options × attention × convolution variant. Variants link
 * the weights they have in common with an earlier entry (shared-weights.ts), but different
 * models and layouts do not share, so without a bound trying a few models fills the disk. After an entry is published the least
 * recently used entries are removed until the cache is within its cap; an entry's last use is
 * its `meta.json`'s modification time, refreshed on every hit. The entry just written (and any
 * other named in `keep`) is never removed, nor is a half-written one of a run in progress;
 * half-written entries older than a day (a crashed run) are.
 *
 * The cap: `SDGEN_CACHE_MAX_GB` (0 or "off": unbounded), default {@link DEFAULT_CACHE_MAX_GB}.
 * Only `<cacheDir>/optimized` is bounded: the ToMe / fused-attention / Winograd entries beside
 * it hold graphs only and link their source's weights. What is derived from a model that no
 * longer exists goes (pruneDerived): those entries, and the Winograd weights files no entry
 * uses any more (2.6 GB for SD 1.5's UNet).
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, rm, stat, utimes } from 'node:fs/promises';
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

/** The plain files under `dir` as (inode, size). */
async function dirFiles(dir: string, out: { inode: string; size: number }[] = []): Promise<{ inode: string; size: number }[]> {
  for (const d of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, d.name);
    if (d.isDirectory()) await dirFiles(p, out);
    else if (d.isFile()) {
      const st = await stat(p);
      out.push({ inode: `${st.dev}:${st.ino}`, size: st.size });
    }
  }
  return out;
}

async function dirBytes(dir: string): Promise<number> {
  return (await dirFiles(dir)).reduce((s, f) => s + f.size, 0);
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
  // entries share weights files by hard links (shared-weights.ts): a file linked into k entries
  // counts k times in none of them but 1/k in each, so the sizes add up to the disk used
  const files = new Map<string, { inode: string; size: number }[]>();
  const used: { name: string; usedMs: number }[] = [];
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
      files.set(name, await dirFiles(dir));
      used.push({ name, usedMs: meta?.mtimeMs ?? 0 });
    } catch {
      // removed by a concurrent run meanwhile
    }
  }
  const links = new Map<string, number>();
  for (const list of files.values()) for (const f of list) links.set(f.inode, (links.get(f.inode) ?? 0) + 1);
  const entries: CacheEntryInfo[] = used.map(({ name, usedMs }) => ({
    name,
    usedMs,
    bytes: Math.round((files.get(name) ?? []).reduce((s, f) => s + f.size / links.get(f.inode)!, 0)),
  }));
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

/** Entry kinds whose `meta.json` names the model they were derived from, in dependency order. */
const DERIVED_KINDS = ['lora', 'clip-skip', 'tome', 'fused', 'winograd', 'optimized'] as const;
/** A weights file younger than this may belong to an entry being written by another run. */
const FRESH_WEIGHTS_MS = 3600 * 1000;

/**
 * Removes what the cache derived from models that no longer exist: every ToMe / fused /
 * Winograd / optimized entry whose `meta.json` names an absolute `source` path that is gone (a
 * Winograd entry of a removed fused entry goes with it), then every Winograd weights file
 * (`winograd/weights/*.bin`) that no Winograd entry or benchmark variant uses — by the path a
 * `meta.json` records or by being the same file (inode) as a linked `winograd.weights` — unless
 * it was written or reused within the last hour. Best effort.
 */
export async function pruneDerived(cacheDir: string, nowMs = Date.now()): Promise<PruneResult> {
  const result: PruneResult = { removed: [], freedBytes: 0, totalBytes: 0 };
  // the entry directories of a kind (`weights` holds the Winograd weights files, not an entry)
  const entriesOf = async (kind: string): Promise<string[]> =>
    (await readdir(path.join(cacheDir, kind)).catch(() => [] as string[])).filter((n) => n !== 'weights');
  const readMeta = async (dir: string): Promise<{ source?: unknown; files?: unknown } | undefined> => {
    try {
      return JSON.parse(await readFile(path.join(dir, 'meta.json'), 'utf8')) as { source?: unknown; files?: unknown };
    } catch {
      return undefined;
    }
  };
  for (const kind of DERIVED_KINDS) {
    for (const name of await entriesOf(kind)) {
      if (name.includes('.tmp-')) continue; // being written
      const dir = path.join(cacheDir, kind, name);
      const source = (await readMeta(dir))?.source;
      if (typeof source !== 'string' || !path.isAbsolute(source) || existsSync(source)) continue;
      try {
        const bytes = await dirBytes(dir);
        await rm(dir, { recursive: true, force: true });
        result.removed.push(`${kind}/${name}`);
        result.freedBytes += bytes;
      } catch {
        // in use or removed meanwhile: next time
      }
    }
  }
  const weightsDir = path.join(cacheDir, 'winograd', 'weights');
  let weights: string[];
  try {
    weights = (await readdir(weightsDir)).filter((n) => n.endsWith('.bin'));
  } catch {
    return result;
  }
  const usedPaths = new Set<string>();
  const usedInodes = new Set<string>();
  // entries being written (.tmp-) count too: they link their weights before they are published
  // (the benchmark's graph variants in bench-variants/ link them the same way)
  const users: string[] = [];
  for (const kind of ['winograd', 'bench-variants']) for (const n of await entriesOf(kind)) users.push(path.join(cacheDir, kind, n));
  for (const dir of users) {
    const files = (await readMeta(dir))?.files;
    if (files && typeof files === 'object') for (const f of Object.values(files as Record<string, unknown>)) if (typeof f === 'string') usedPaths.add(path.resolve(f));
    const linked = await stat(path.join(dir, 'winograd.weights')).catch(() => undefined);
    if (linked) usedInodes.add(`${linked.dev}:${linked.ino}`);
  }
  for (const name of weights) {
    const file = path.join(weightsDir, name);
    try {
      const st = await stat(file);
      if (usedPaths.has(path.resolve(file)) || usedInodes.has(`${st.dev}:${st.ino}`)) continue;
      // written, or reused (its `.used` mark, see conv-mode.ts), within the hour
      const reused = (await stat(`${file}.used`).catch(() => undefined))?.mtimeMs ?? 0;
      if (nowMs - Math.max(st.mtimeMs, reused) < FRESH_WEIGHTS_MS) continue;
      await rm(`${file}.used`, { force: true });
      await rm(file, { force: true });
      result.removed.push(`winograd/weights/${name}`);
      result.freedBytes += st.size;
    } catch {
      // removed meanwhile
    }
  }
  return result;
}
