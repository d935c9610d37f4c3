/**
 * `sdgen status DIR`: what the runs recorded in an output directory have done. Every run (a
 * single run, or each shard of a sharded one) has its own state and manifest there; runs that
 * share a plan and a shard count are the shards of one run. An image is done when its run's
 * manifest records it and the file is on disk; failed when its run's last process reported it
 * failed and it is not done; missing otherwise (a shard that has not started yet has all of its
 * images missing).
 */
import path from 'node:path';
import { SdgenError } from '../errors.js';
import { listRunStates, manifestPath, readManifest, writeFileAtomic, listDir, type ManifestRecord, type RunState } from './output.js';

export interface PartStatus {
  /** `I/N`, or null for an unsharded run */
  shard: string | null;
  /** run key (file names), null for a shard with no state yet */
  key: string | null;
  started: boolean;
  planned: number;
  done: number;
  failed: number;
  missing: number;
  /** manifest lines that are not whole records (a torn last line) */
  badLines: number;
}

export interface RunStatus {
  /** the run's key; for a sharded run the plan's (first 12 hex digits of its hash) */
  plan: string;
  shards: number | null;
  total: number;
  created: string;
  parts: PartStatus[];
  done: number;
  failed: number;
  missing: number;
}

export interface DirStatus {
  dir: string;
  runs: RunStatus[];
  total: number;
  done: number;
  failed: number;
  missing: number;
}

interface Loaded {
  state: RunState;
  records: ManifestRecord[];
  done: Set<number>;
  bad: number;
}

function load(dir: string, state: RunState, onDisk: ReadonlySet<string>): Loaded {
  const { records, bad } = readManifest(manifestPath(dir, state.key));
  const own = new Set(state.ordinals);
  const kept = records.filter((r) => own.has(r.index) && onDisk.has(r.file));
  return { state, records: kept, done: new Set(kept.map((r) => r.index)), bad };
}

function part(l: Loaded): PartStatus {
  const planned = l.state.ordinals.length;
  const done = l.done.size;
  const failed = new Set(l.state.failed.filter((o) => !l.done.has(o))).size;
  const shard = l.state.shard ? `${l.state.shard.index}/${l.state.shard.count}` : null;
  return { shard, key: l.state.key, started: true, planned, done, failed, missing: planned - done - failed, badLines: l.bad };
}

function summed(plan: string, shards: number | null, total: number, created: string, parts: PartStatus[]): RunStatus {
  const done = parts.reduce((n, p) => n + p.done, 0);
  const failed = parts.reduce((n, p) => n + p.failed, 0);
  return { plan, shards, total, created, parts, done, failed, missing: total - done - failed };
}

/** The status of every run in `dir`, and (with `withRecords`) the records of every image done. */
export function dirStatus(dir: string): { status: DirStatus; records: ManifestRecord[] } {
  const onDisk = new Set(listDir(dir));
  if (onDisk.size === 0) throw new SdgenError(`${dir}: no such directory, or empty`);
  const loaded = listRunStates(dir).map((s) => load(dir, s, onDisk));
  if (loaded.length === 0) throw new SdgenError(`${dir}: no sdgen runs recorded here (no ${path.basename(manifestPath(dir, 'KEY'))} files)`);
  const runs: RunStatus[] = [];
  const records: ManifestRecord[] = [];
  const groups = new Map<string, Loaded[]>();
  for (const l of loaded) {
    const id = l.state.shard ? `${l.state.planHash}/${l.state.shard.count}` : l.state.key;
    let g = groups.get(id);
    if (!g) groups.set(id, (g = []));
    g.push(l);
  }
  for (const g of groups.values()) {
    const first = g[0]!.state;
    const plan = first.planHash.slice(0, 12);
    if (first.shard === null) {
      runs.push(summed(first.key, null, first.ordinals.length, first.created, [part(g[0]!)]));
    } else {
      const n = first.shard.count;
      const parts: PartStatus[] = [];
      for (let i = 0; i < n; i++) {
        const l = g.find((x) => x.state.shard!.index === i);
        if (l) parts.push(part(l));
        else {
          const planned = first.shardSizes?.[i] ?? 0;
          parts.push({ shard: `${i}/${n}`, key: null, started: false, planned, done: 0, failed: 0, missing: planned, badLines: 0 });
        }
      }
      runs.push(summed(plan, n, first.total, g.map((x) => x.state.created).sort()[0]!, parts));
    }
    for (const l of g) records.push(...l.records);
  }
  const sum = (k: 'total' | 'done' | 'failed' | 'missing') => runs.reduce((n, r) => n + r[k], 0);
  return { status: { dir, runs, total: sum('total'), done: sum('done'), failed: sum('failed'), missing: sum('missing') }, records };
}

/** Writes the records of every image done, one JSON line each, run by run in plan order. */
export function writeMergedManifest(file: string, records: readonly ManifestRecord[]): void {
  writeFileAtomic(file, records.map((r) => JSON.stringify(r) + '\n').join(''));
}
