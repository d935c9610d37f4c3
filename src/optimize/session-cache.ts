/**
 * Optimized-graph caching: onnxruntime can write the graph it built after its optimization
 * passes (`optimizedModelFilePath`); loading that file back with optimizations disabled skips
 * the passes on later runs. The file is specific to the execution provider and, at level 'all'
 * (NCHWc layout transforms), to the CPU's vector extensions, so both are part of the key, with
 * the source model's identity, the options, sdgen's and onnxruntime's versions.
 *
 * Layout: `<cacheDir>/optimized/<key>/model.onnx` (+ `model.weights` external initializers,
 * `meta.json`). An entry is written into a temporary directory during the first session
 * creation and published by an atomic rename once that session exists, so a crash or a
 * concurrent run never leaves a half-written entry under the final name. Before it is
 * published, the initializers other entries already hold are linked from their files instead of
 * kept twice (shared-weights.ts): a second ToMe ratio of a model costs megabytes, not a copy.
 *
 * Writing an entry needs about the model's size on disk; with less free space than that the
 * model is loaded without writing one, and a write that fails anyway (disk full) is retried
 * without the cache. Either way the caller gets a one-line `notice`, never onnxruntime's text.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { modelBytesOnDisk, modelFileIdentity } from '../onnx/model-io.js';
import { decodeModel, encodeModel } from '../onnx/proto.js';
import { subgraphsOf } from '../onnx/attributes.js';
import type { GraphProto, TensorProto } from '../onnx/types.js';
import { SDGEN_VERSION } from '../version.js';
import { cacheMaxBytes, pruneCacheDir, pruneDerived, touchEntry } from './cache-prune.js';
import { shareEntryWeights } from './shared-weights.js';

export type OptimizationLevel = 'basic' | 'extended' | 'all';

export interface OptimizedCacheOptions {
  /** cache root (the same as the ToMe cache's) */
  cacheDir: string;
  /** execution provider the session runs on ('cpu', 'cuda', ...) */
  provider: string;
  /** onnxruntime optimization level baked into the cached graph (default 'all') */
  level?: OptimizationLevel;
  /** anything else that changed the model or its session (ToMe options, attention mode, ...) */
  variant?: string;
  /** also store onnxruntime's prepacked weights (skips prepacking on load; ~2× the disk) */
  savePrepacked?: boolean;
  /** size cap of the cache's optimized graphs in bytes (default: `SDGEN_CACHE_MAX_GB`, see cache-prune.ts) */
  maxBytes?: number;
  /** what the model is, for notices ("the UNet"; default "the model") */
  label?: string;
  /** free bytes on the cache's filesystem (default: asked of the filesystem; tests pass a number) */
  freeBytes?: (dir: string) => Promise<number>;
}

const GB = 1024 ** 3;
/** What writing an entry may take beyond the model's own size (the graph, onnxruntime's temporaries). */
const WRITE_MARGIN_BYTES = 0.5 * GB;

async function filesystemFreeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return Number(s.bavail) * Number(s.bsize);
}

const gb = (b: number): string => `${(b / GB).toFixed(1)} GB`;

export const OPTIMIZED_MODEL_FILE = 'model.onnx';
export const OPTIMIZED_WEIGHTS_FILE = 'model.weights';
const CACHE_FORMAT = 1;

let cpuSig: string | undefined;

/** The CPU model and the instruction-set flags onnxruntime's kernels and layouts depend on. */
export function cpuSignature(): string {
  if (cpuSig !== undefined) return cpuSig;
  let flags = '';
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const line = /^flags\s*:\s*(.*)$/m.exec(info)?.[1] ?? '';
    flags = line
      .split(/\s+/)
      .filter((f) => /^(avx|fma|f16c|amx|sse4|neon|asimd|sve)/.test(f))
      .sort()
      .join(',');
  } catch {
    // not Linux: the model name stands for the feature set
  }
  cpuSig = `${os.arch()}|${os.cpus()[0]?.model ?? 'unknown'}|${flags}`;
  return cpuSig;
}

export function ortVersion(): string {
  return ort.env.versions.node ?? ort.env.versions.common;
}

/** The cache key of an optimized model (hex sha256). */
export async function optimizedModelKey(modelPath: string, opts: OptimizedCacheOptions): Promise<string> {
  const identity = await modelFileIdentity(modelPath);
  const material = {
    format: CACHE_FORMAT,
    identity,
    provider: opts.provider.toLowerCase(),
    level: opts.level ?? 'all',
    variant: opts.variant ?? '',
    prepacked: !!opts.savePrepacked,
    sdgen: SDGEN_VERSION,
    ort: ortVersion(),
    // layouts chosen at 'all' depend on the CPU even for GPU sessions (CPU fallback nodes)
    cpu: cpuSignature(),
  };
  return createHash('sha256').update(JSON.stringify(material)).digest('hex').slice(0, 32);
}

export function optimizedEntryDir(cacheDir: string, key: string): string {
  return path.join(cacheDir, 'optimized', key);
}

/** How to open one model with the cache: which file, which session options, what to do after. */
export interface OptimizedModelPlan {
  key: string;
  /** the file onnxruntime should load */
  modelPath: string;
  /** true: `modelPath` is a cached optimized graph (loaded with optimizations disabled) */
  cached: boolean;
  /** merge these over the caller's session options */
  sessionOptions: ort.InferenceSession.SessionOptions;
  /** after the session was created: publishes the entry written during creation (no-op if cached); says why when it could not */
  commit(): Promise<string | undefined>;
  /** after a failed creation: removes what was written (and a cached entry that failed to load) */
  abort(): Promise<void>;
  /** set when this load will not write an entry, and why (one line) */
  notice?: string;
}

/** Plans a session load through the cache (no I/O besides reading the model's identity). */
export async function planOptimizedModel(modelPath: string, opts: OptimizedCacheOptions): Promise<OptimizedModelPlan> {
  const key = await optimizedModelKey(modelPath, opts);
  const finalDir = optimizedEntryDir(opts.cacheDir, key);
  const cachedFile = path.join(finalDir, OPTIMIZED_MODEL_FILE);
  if (existsSync(cachedFile) && existsSync(path.join(finalDir, 'meta.json'))) {
    return {
      key,
      modelPath: cachedFile,
      cached: true,
      sessionOptions: { graphOptimizationLevel: 'disabled' },
      commit: async () => undefined,
      abort: async () => {
        await rm(finalDir, { recursive: true, force: true });
      },
    };
  }
  // an entry needs about the model's size: with less free space, load without writing one
  const root = path.dirname(finalDir);
  await mkdir(root, { recursive: true });
  const need = (await modelBytesOnDisk(modelPath)) + WRITE_MARGIN_BYTES;
  const free = await (opts.freeBytes ?? filesystemFreeBytes)(root).catch(() => Infinity);
  if (free < need) {
    return {
      key,
      modelPath,
      cached: false,
      sessionOptions: {},
      commit: async () => undefined,
      abort: async () => {},
      notice: `optimized-graph cache: ${gb(free)} free in ${root}, ${opts.label ?? 'the model'} needs about ${gb(need)}; loading it without saving its optimized graph`,
    };
  }
  const tmpDir = `${finalDir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  let prepared = false;
  const plan: OptimizedModelPlan = {
    key,
    modelPath,
    cached: false,
    sessionOptions: {
      graphOptimizationLevel: opts.level ?? 'all',
      optimizedModelFilePath: path.join(tmpDir, OPTIMIZED_MODEL_FILE),
      extra: {
        session: {
          // weights go to one external file beside the optimized graph (models > 2 GB need it)
          optimized_model_external_initializers_file_name: OPTIMIZED_WEIGHTS_FILE,
          optimized_model_external_initializers_min_size_in_bytes: '1024',
          // prepacked MatMul weights stored too: no prepacking on load, but twice the disk
          ...(opts.savePrepacked ? { save_external_prepacked_constant_initializers: '1' } : {}),
        },
      },
    },
    commit: async () => {
      if (!prepared) return undefined;
      const written = path.join(tmpDir, OPTIMIZED_MODEL_FILE);
      try {
        await stat(written);
      } catch {
        await rm(tmpDir, { recursive: true, force: true });
        return undefined; // this provider wrote nothing: nothing to cache
      }
      const unsaved = (why: unknown) => `optimized-graph cache: the optimized graph of ${opts.label ?? 'the model'} was not saved (${why instanceof Error ? why.message.split('\n')[0] : String(why)})`;
      try {
        await repairOptimizedModel(written);
      } catch (err) {
        await rm(tmpDir, { recursive: true, force: true });
        return unsaved(err); // a graph onnxruntime could not load back: nothing to cache
      }
      let shared;
      try {
        shared = await shareEntryWeights(tmpDir, root, OPTIMIZED_MODEL_FILE, OPTIMIZED_WEIGHTS_FILE);
      } catch (err) {
        await rm(tmpDir, { recursive: true, force: true });
        return unsaved(err); // unreadable weights, or the disk filled while rewriting them: nothing to cache
      }
      const meta = {
        source: path.resolve(modelPath),
        provider: opts.provider,
        level: opts.level ?? 'all',
        variant: opts.variant ?? '',
        sdgen: SDGEN_VERSION,
        ort: ortVersion(),
        cpu: cpuSignature(),
        created: new Date().toISOString(),
        weights: { ownBytes: shared.ownBytes, sharedBytes: shared.sharedBytes },
      };
      await writeFile(path.join(tmpDir, 'meta.json'), JSON.stringify(meta, null, 2));
      try {
        await rename(tmpDir, finalDir);
      } catch {
        // another run published the same entry first: keep theirs
        await rm(tmpDir, { recursive: true, force: true });
      }
      // the least recently used entries go until the cache fits its cap (this one stays)
      await pruneCacheDir(path.dirname(finalDir), opts.maxBytes ?? cacheMaxBytes(), new Set([key])).catch(() => {});
      // and what was derived from models that are gone (their Winograd weights included)
      await pruneDerived(path.dirname(path.dirname(finalDir))).catch(() => {});
      return undefined;
    },
    abort: async () => {
      await rm(tmpDir, { recursive: true, force: true });
    },
  };
  await mkdir(tmpDir, { recursive: true });
  prepared = true;
  return plan;
}

const sameTensor = (a: TensorProto, b: TensorProto): boolean =>
  a.dataType === b.dataType &&
  a.dims.length === b.dims.length &&
  a.dims.every((d, i) => Number(d) === Number(b.dims[i])) &&
  JSON.stringify(a.externalData ?? []) === JSON.stringify(b.externalData ?? []) &&
  Buffer.compare(Buffer.from(a.rawData ?? new Uint8Array(0)), Buffer.from(b.rawData ?? new Uint8Array(0))) === 0 &&
  JSON.stringify([a.floatData, a.int64Data?.map(String), a.int32Data, a.doubleData]) === JSON.stringify([b.floatData, b.int64Data?.map(String), b.int32Data, b.doubleData]);

/** Drops repeated identical initializers of one graph and its subgraphs; throws on conflicting ones. */
function dedupeInitializers(g: GraphProto): number {
  let dropped = 0;
  const byName = new Map<string, TensorProto>();
  g.initializer = g.initializer.filter((t) => {
    const name = t.name ?? '';
    const first = byName.get(name);
    if (!first) {
      byName.set(name, t);
      return true;
    }
    if (!sameTensor(first, t)) throw new Error(`two different initializers named ${name}`);
    dropped++;
    return false;
  });
  for (const n of g.node) for (const sg of subgraphsOf(n)) dropped += dedupeInitializers(sg);
  return dropped;
}

/**
 * onnxruntime (1.2x) writes some constants it folded inside a control-flow subgraph twice
 * into that subgraph (ToMe's `If` plan branches do this, e.g. `…/Plan_else/Empty_output_0`),
 * and then refuses to load its own file ("initializer name is not unique"). The copies are
 * identical, so the entry is repaired by keeping one of each before it is published.
 */
export async function repairOptimizedModel(file: string): Promise<number> {
  const model = decodeModel(await readFile(file));
  if (!model.graph) return 0;
  const dropped = dedupeInitializers(model.graph);
  if (dropped > 0) await writeFile(file, encodeModel(model));
  return dropped;
}

export interface CachedSession {
  session: ort.InferenceSession;
  /** the session was loaded from a cached optimized graph */
  cached: boolean;
  key: string;
  loadMs: number;
  /** one line for the user when the cache was skipped (too little disk, a failed write) */
  notice?: string;
}

/**
 * Creates a session through the cache. `baseOptions` are the caller's options (threads,
 * providers, arena settings); the cache's override the optimization level and dump path. A
 * cached entry that fails to load is deleted and the source model is loaded instead; where the
 * entry cannot be written (too little disk, a write that fails) the model is loaded with the
 * caller's options alone and `notice` says so.
 */
export async function createCachedSession(
  modelPath: string,
  baseOptions: ort.InferenceSession.SessionOptions,
  opts: OptimizedCacheOptions,
  create: (p: string, o: ort.InferenceSession.SessionOptions) => Promise<ort.InferenceSession> = (p, o) =>
    ort.InferenceSession.create(p, o),
): Promise<CachedSession> {
  const t0 = performance.now();
  // a bad SDGEN_CACHE_MAX_GB is reported before any work
  opts = { ...opts, maxBytes: opts.maxBytes ?? cacheMaxBytes() };
  let plan = await planOptimizedModel(modelPath, opts);
  const merge = (p: OptimizedModelPlan): ort.InferenceSession.SessionOptions => {
    const o: ort.InferenceSession.SessionOptions = { ...baseOptions, ...p.sessionOptions };
    const extra = mergeExtra(baseOptions.extra, p.sessionOptions.extra);
    // onnxruntime-node rejects `extra: undefined`
    if (extra === undefined) delete o.extra;
    else o.extra = extra;
    return o;
  };
  let session: ort.InferenceSession;
  let notice = plan.notice;
  // writing the entry failed (disk full, cache not writable) or the model itself cannot load:
  // the model is loaded without the cache; only a model that fails that way too is an error
  const plainly = async (): Promise<ort.InferenceSession> => {
    const s = await create(modelPath, baseOptions);
    notice ??= `optimized-graph cache: could not save the optimized graph of ${opts.label ?? 'the model'} in ${path.join(opts.cacheDir, 'optimized')} (disk full or not writable); loaded it without the cache`;
    return s;
  };
  const attempt = async (): Promise<ort.InferenceSession | undefined> => {
    try {
      return await create(plan.modelPath, merge(plan));
    } catch (err) {
      await plan.abort();
      if (plan.notice) throw err; // nothing was being written: the model's own error
      return undefined;
    }
  };
  let s = await attempt();
  if (!s && plan.cached) {
    // a cached entry that does not load: it was deleted, write it anew
    plan = await planOptimizedModel(modelPath, opts);
    notice = plan.notice;
    s = await attempt();
  }
  if (!s) {
    session = await plainly();
    return { session, cached: false, key: plan.key, loadMs: performance.now() - t0, ...(notice ? { notice } : {}) };
  }
  session = s;
  notice ??= await plan.commit();
  if (plan.cached) await touchEntry(path.dirname(plan.modelPath));
  return { session, cached: plan.cached, key: plan.key, loadMs: performance.now() - t0, ...(notice ? { notice } : {}) };
}

function mergeExtra(a: unknown, b: unknown): Record<string, unknown> | undefined {
  if (a === undefined && b === undefined) return undefined;
  const out: Record<string, unknown> = { ...((a as Record<string, unknown>) ?? {}) };
  for (const [k, v] of Object.entries((b as Record<string, unknown>) ?? {})) {
    const prev = out[k];
    out[k] = prev && typeof prev === 'object' && v && typeof v === 'object' ? { ...prev, ...v } : v;
  }
  return out;
}

/**
 * Default memory settings for CPU sessions (docs/performance.md, "Memory settings" has the
 * numbers): the arena on, since without it every call allocates from the system; the memory
 * pattern off. The pattern pre-plans one block per run from the first run's allocations, so the
 * second run allocates that block afresh and touches fresh memory again: with it the VAE
 * decoder's early decodes are slower and the UNet holds more memory for no faster steady call.
 */
export const DEFAULT_MEMORY_OPTIONS: Readonly<Pick<ort.InferenceSession.SessionOptions, 'enableCpuMemArena' | 'enableMemPattern'>> =
  Object.freeze({ enableCpuMemArena: true, enableMemPattern: false });
