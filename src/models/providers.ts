/**
 * Execution-provider choice and fallback.
 *
 * onnxruntime-node does not fall back when an execution provider fails to load (a missing CUDA
 * library makes `InferenceSession.create` throw), so sdgen does it here:
 * - `auto` tries the best provider for the platform (linux: cuda, win32: dml, darwin: coreml);
 *   if that fails, one notice "<provider> unavailable (<reason>); using CPU" is emitted and every
 *   later session of the run goes straight to CPU;
 * - an explicitly requested provider that fails is an SdgenError;
 * - `cpu` is always CPU.
 * The session factory is injected so the logic can be tested without a GPU.
 */
import { SdgenError } from '../errors.js';

/** `--device`: a provider, or 'auto' (the platform's accelerator, else the CPU). */
export type DeviceName = 'auto' | 'cpu' | 'cuda' | 'dml' | 'coreml' | 'webgpu';

/** onnxruntime-node execution provider names. */
export type ProviderName = 'cpu' | 'cuda' | 'dml' | 'coreml' | 'webgpu';

/** Creates a session on the given providers (in preference order); throws if a provider fails to load. */
export type SessionFactory<S> = (providers: ProviderName[]) => Promise<S>;

const VALID_DEVICES: readonly DeviceName[] = ['auto', 'cpu', 'cuda', 'dml', 'coreml', 'webgpu'];

export function isDeviceName(v: string): v is DeviceName {
  return (VALID_DEVICES as readonly string[]).includes(v);
}

/** The accelerator `auto` tries first on a platform (null: CPU only). */
export function autoProviderFor(platform: NodeJS.Platform | string): ProviderName | null {
  switch (platform) {
    case 'linux':
      return 'cuda';
    case 'win32':
      return 'dml';
    case 'darwin':
      return 'coreml';
    default:
      return null;
  }
}

/** First line of an error message, trimmed of onnxruntime's noise (for one-line notices). */
export function errorReason(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  const line = msg.split('\n').find((l) => l.trim() !== '') ?? msg;
  return line.trim().replace(/\s+/g, ' ').slice(0, 300);
}

/**
 * The reason a provider failed, in the user's terms: a provider library that is not there at all
 * (onnxruntime-node installs without the CUDA libraries by default) says how to get it.
 */
export function providerFailure(provider: string, err: unknown): string {
  const reason = errorReason(err);
  if (provider === 'cuda' && /failed to load shared library|cannot open shared object/i.test(reason)) {
    return `CUDA provider libraries not installed: ${reason}; see README "GPU"`;
  }
  return reason;
}

/** True when an onnxruntime error is about the model file rather than the provider. */
export function isModelLoadError(err: unknown): boolean {
  const msg = err instanceof Error ? err.message : String(err);
  return /Protobuf parsing failed|File doesn't exist|No such file|Load model from .* failed/i.test(msg) &&
    !/provider|shared library|\.so\b|\.dll\b|dylib/i.test(msg);
}

/**
 * Chooses providers for sessions and remembers the outcome, so `auto` probes the accelerator
 * once per run and notices its absence once.
 */
export class ProviderSelector {
  /** Provider that worked (or CPU after a failed auto probe); null until the first session. */
  private resolved: ProviderName | null = null;

  constructor(
    readonly device: DeviceName,
    private readonly onNotice: (message: string) => void = () => {},
    private readonly platform: NodeJS.Platform | string = process.platform,
  ) {
    if (!isDeviceName(device)) {
      throw new SdgenError(`unknown device "${String(device)}" (expected one of ${VALID_DEVICES.join(', ')})`);
    }
  }

  /** The provider sessions run on (after the first create), e.g. for metadata or benchmarks. */
  get provider(): ProviderName | null {
    return this.resolved;
  }

  /** Provider list for a given primary: accelerators keep CPU as the fallback for unsupported ops. */
  static providerList(primary: ProviderName): ProviderName[] {
    return primary === 'cpu' ? ['cpu'] : [primary, 'cpu'];
  }

  /** Create one session through `factory`, applying the device policy. */
  async create<S>(factory: SessionFactory<S>, what = 'model'): Promise<S> {
    if (this.resolved !== null) {
      return this.createOn(factory, this.resolved, what);
    }
    if (this.device === 'cpu') {
      const s = await this.createOn(factory, 'cpu', what);
      this.resolved = 'cpu';
      return s;
    }
    if (this.device !== 'auto') {
      const s = await this.createOn(factory, this.device, what);
      this.resolved = this.device;
      return s;
    }
    const best = autoProviderFor(this.platform);
    if (best !== null) {
      try {
        const s = await factory(ProviderSelector.providerList(best));
        this.resolved = best;
        return s;
      } catch (err) {
        // A broken model file fails on every provider: report it as such, not as a provider problem.
        if (isModelLoadError(err)) throw wrapLoadError(err, what);
        this.onNotice(`${best} unavailable (${providerFailure(best, err)}); using CPU`);
      }
    }
    const s = await this.createOn(factory, 'cpu', what);
    this.resolved = 'cpu';
    return s;
  }

  private async createOn<S>(factory: SessionFactory<S>, provider: ProviderName, what: string): Promise<S> {
    try {
      return await factory(ProviderSelector.providerList(provider));
    } catch (err) {
      if (err instanceof SdgenError) throw err;
      if (provider !== 'cpu' && !isModelLoadError(err)) {
        throw new SdgenError(`execution provider "${provider}" failed to load: ${providerFailure(provider, err)}`, { cause: err });
      }
      throw wrapLoadError(err, what);
    }
  }
}

function wrapLoadError(err: unknown, what: string): SdgenError {
  if (err instanceof SdgenError) return err;
  return new SdgenError(`cannot load ${what}: ${errorReason(err)}`, { cause: err });
}
