/**
 * onnxruntime-node sessions: file checks, session options (threads, providers), and the
 * model's I/O metadata as onnxruntime reports it (never guessed).
 */
import { open, stat } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import ort from 'onnxruntime-node';
import { SdgenError, UsageError } from '../errors.js';
import type { DeviceName } from './providers.js';
import type { ConvMode } from '../optimize/conv-mode.js';
import { errorReason, ProviderSelector, type ProviderName, type SessionFactory } from './providers.js';
import { createCachedSession, DEFAULT_MEMORY_OPTIONS } from '../optimize/index.js';
import { foldOrtError, ortLogLevel, ortLogOptions } from './ort-log.js';

/** How sessions are created: provider, threads, caches. */
export interface RuntimeOptions {
  device: DeviceName;
  threads?: number;
  verbose?: boolean;
  /** directory for cached patched/optimized models */
  cacheDir?: string;
  /** convolution algorithm (default 'auto': Winograd on the CPU provider) */
  conv?: ConvMode;
}

/** Element types sdgen deals with (onnxruntime-common's names). */
export type ElementType = ort.Tensor.Type;

/** One input or output as the session reports it. */
export interface ValueInfo {
  name: string;
  type: ElementType;
  /** dims: number = fixed, string = symbolic; [] = rank 0 (or unknown rank) */
  shape: ReadonlyArray<number | string>;
}

export interface SessionInfo {
  inputs: ValueInfo[];
  outputs: ValueInfo[];
}

/** Read a session's I/O metadata (onnxruntime-node ≥ 1.20 `inputMetadata` / `outputMetadata`). */
export function sessionInfo(session: ort.InferenceSession, what = 'model'): SessionInfo {
  const conv = (list: readonly ort.InferenceSession.ValueMetadata[] | undefined, names: readonly string[]): ValueInfo[] => {
    if (!list) {
      throw new SdgenError(`${what}: this onnxruntime-node does not report input/output metadata (need ≥ 1.20)`);
    }
    return list.map((m, i) => {
      if (!m.isTensor) throw new SdgenError(`${what}: "${m.name ?? names[i]}" is not a tensor, which sdgen cannot feed`);
      return { name: m.name, type: m.type, shape: [...m.shape] };
    });
  };
  return {
    inputs: conv(session.inputMetadata, session.inputNames),
    outputs: conv(session.outputMetadata, session.outputNames),
  };
}

/**
 * Default intra-op thread count: the number of physical cores (hyper-threads share one core's
 * MatMul units, so more threads than cores only adds contention), bounded by what this process
 * may use (os.availableParallelism honours affinity), at least 1.
 */
export function defaultThreadCount(): number {
  const logical = Math.max(1, typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length);
  const physical = physicalCoreCount();
  return Math.max(1, Math.min(logical, physical ?? logical));
}

/** Physical cores from /proc/cpuinfo on Linux (unique physical id × core id); null elsewhere. */
export function physicalCoreCount(cpuinfo?: string): number | null {
  let text = cpuinfo;
  if (text === undefined) {
    if (process.platform !== 'linux') return null;
    try {
      text = readFileSync('/proc/cpuinfo', 'utf8');
    } catch {
      return null;
    }
  }
  const cores = new Set<string>();
  for (const block of text.split(/\n\s*\n/)) {
    const phys = /^physical id\s*:\s*(\d+)/m.exec(block)?.[1];
    const core = /^core id\s*:\s*(\d+)/m.exec(block)?.[1];
    if (phys !== undefined && core !== undefined) cores.add(`${phys}:${core}`);
  }
  return cores.size > 0 ? cores.size : null;
}

/**
 * Check that `path` is a plausible ONNX model before handing it to onnxruntime, to turn the
 * common mistakes into one clear line: missing file, directory, empty file, Git LFS pointer,
 * text file.
 */
export async function checkModelFile(path: string, what: string): Promise<void> {
  let size: number;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new SdgenError(`${what}: ${path} is not a file`);
    size = st.size;
  } catch (err) {
    if (err instanceof SdgenError) throw err;
    throw new SdgenError(`${what}: missing model file ${path}`, { cause: err });
  }
  if (size === 0) throw new SdgenError(`${what}: ${path} is empty, not an ONNX model`);
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(Math.min(64, size));
    await fh.read(head, 0, head.length, 0);
    const text = head.toString('latin1');
    if (text.startsWith('version https://git-lfs')) {
      throw new SdgenError(`${what}: ${path} is a Git LFS pointer, not the model (run "git lfs pull" in the model repository)`);
    }
    const first = head[0]!;
    if (first === 0x7b /* { */ || first === 0x3c /* < */ || first === 0x5b /* [ */) {
      throw new SdgenError(`${what}: ${path} is not an ONNX model (it looks like a text file)`);
    }
  } finally {
    await fh.close();
  }
}

/** Session options sdgen uses everywhere (the perf work may extend them). */
export function sessionOptions(runtime: RuntimeOptions, providers: ProviderName[], quiet: boolean): ort.InferenceSession.SessionOptions {
  const threads = runtime.threads && runtime.threads > 0 ? Math.floor(runtime.threads) : defaultThreadCount();
  return {
    executionProviders: providers,
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    ...DEFAULT_MEMORY_OPTIONS,
    // nothing raw from onnxruntime's logger: its errors reach the user as sdgen's own line
    // (src/models/ort-log.ts); `quiet` (probing a provider) is thereby quiet too
    ...ortLogOptions(),
  };
}

/** An onnxruntime session with its I/O metadata. */
export interface ModelSession {
  readonly path: string;
  readonly what: string;
  readonly session: ort.InferenceSession;
  readonly info: SessionInfo;
  readonly provider: ProviderName;
  /** the session was loaded from onnxruntime's optimized graph cached by an earlier run */
  readonly fromOptimizedCache: boolean;
  release(): Promise<void>;
}

/** Where SessionManager keeps onnxruntime's optimized graphs (see src/optimize/session-cache.ts). */
export interface OptimizedGraphCache {
  cacheDir: string;
}

/**
 * Opens sessions for one run: one ProviderSelector (so `auto` probes the accelerator once),
 * the run's threads, and an injectable factory for tests.
 *
 * With `optimizedCache`, CPU sessions go through onnxruntime's optimized-graph cache: the
 * first load saves the graph onnxruntime built (optimization level 'all'), later loads read it
 * back with optimizations off (SD 1.5 UNet: 8.4 s → 2.1 s, docs/performance.md). Other providers
 * load the model as it is. A cache that cannot be written (read-only, disk full) or an entry
 * that onnxruntime cannot save costs nothing but the attempt: the model is then loaded plainly.
 */
export class SessionManager {
  readonly selector: ProviderSelector;

  constructor(
    private readonly runtime: RuntimeOptions,
    private readonly onNotice: (message: string) => void = () => {},
    private readonly createSession: (path: string, options: ort.InferenceSession.SessionOptions) => Promise<ort.InferenceSession> =
      (path, options) => ort.InferenceSession.create(path, options),
    private readonly optimizedCache: OptimizedGraphCache | null = null,
  ) {
    this.selector = new ProviderSelector(runtime.device, onNotice);
    // onnxruntime's process-wide logger prints provider-load failures (and warnings) itself, at
    // its first session; sdgen reports them as one-line notices instead (SDGEN_ORT_LOG lets them through).
    ort.env.logLevel = ortLogLevel();
  }

  /**
   * `opts.optimizedCache: false` loads this model plainly even when the manager has a cache: the
   * VAE decoder, whose level-'all' optimization takes ~0.1 s while its cached graph's first run
   * (its only run per image) was 1.3–2 s slower (docs/performance.md, section 2).
   */
  async open(path: string, what: string, opts: { optimizedCache?: boolean } = {}): Promise<ModelSession> {
    await checkModelFile(path, what);
    let used: ProviderName = 'cpu';
    let fromCache = false;
    // onnxruntime's exception condensed to its own sentence; the full text stays as the cause
    const create = (p: string, o: ort.InferenceSession.SessionOptions) => this.createSession(p, o).catch((e: unknown) => Promise.reject(foldOrtError(e)));
    const factory: SessionFactory<ort.InferenceSession> = async (providers) => {
      // While probing `auto`, keep ort's own error log quiet; the selector emits the notice.
      const quiet = this.runtime.device === 'auto' && providers[0] !== 'cpu';
      const options = sessionOptions(this.runtime, providers, quiet);
      let s: ort.InferenceSession | null = null;
      let cacheError: unknown;
      if (this.optimizedCache && opts.optimizedCache !== false && providers[0] === 'cpu') {
        try {
          const r = await createCachedSession(path, options, { cacheDir: this.optimizedCache.cacheDir, provider: 'cpu', label: `the ${what}` }, create);
          s = r.session;
          fromCache = r.cached;
          if (r.notice) this.onNotice(r.notice);
        } catch (err) {
          // a bad setting (SDGEN_CACHE_MAX_GB) is the user's to fix
          if (err instanceof UsageError) throw err;
          // an unreadable cache directory, a model that cannot load at all: load the model as it
          // is (a model that cannot load fails again below, with its own error)
          cacheError = err;
        }
      }
      if (!s) {
        s = await create(path, options);
        // said only once the model loaded: a model that cannot load reports its own error
        if (cacheError !== undefined) this.onNotice(`optimized-graph cache: not used for the ${what} (${errorReason(cacheError)})`);
      }
      used = providers[0]!;
      return s;
    };
    const session = await this.selector.create(factory, `${what} (${path})`);
    let info: SessionInfo;
    try {
      info = sessionInfo(session, what);
    } catch (err) {
      await session.release();
      throw err;
    }
    let released = false;
    return {
      path,
      what,
      session,
      info,
      provider: used,
      fromOptimizedCache: fromCache,
      async release() {
        if (released) return;
        released = true;
        await session.release();
      },
    };
  }
}
