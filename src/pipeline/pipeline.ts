/**
 * StableDiffusionPipeline: a loaded model folder (text encoder, UNet, VAE decoder sessions)
 * that turns GenerationParams into images, the same images diffusers' StableDiffusionPipeline
 * gives for the same seed with a CPU generator.
 *
 * Seeds: image i of a job (i = iteration·batchSize + position) has seed `params.seed + i` and
 * its own TorchGenerator: its initial latents are that generator's first randn([1,4,h,w]) draw
 * × initNoiseSigma, and ancestral schedulers draw its noise from it, in diffusers' order
 * (diffusers with a list of generators). Any image can therefore be regenerated alone.
 *
 * ToMe: when `tomeApplies(params.tome, width, height)`, the UNet is the ToMe-rewritten graph
 * (getPatchedUnet). One UNet session is open at a time, the exported graph's or the patched
 * one's (each weighs what the UNet's weights weigh: 3.4 GB for SD 1.5 in float32, 5 GB with
 * Winograd weights): a run that needs the other graph releases the open one first and opens its
 * own (from the optimized-graph cache, about 2 s). The CLI runs a model's jobs without ToMe first
 * (orderJobs), so it switches at most once per model; `load` opens the graph the first run needs
 * (`PipelineLoadOptions.first`), so a ToMe run never loads the exported graph at all.
 * With random destinations (useRand) the patched graph takes `tome_rand_<k>` inputs; sdgen
 * feeds them from a second TorchGenerator seeded with the image's seed: every UNet call draws
 * `randint(sx·sy, [h//sy, w//sx, 1])` for k = 0, 1, … in order (Python:
 * `g = torch.Generator().manual_seed(seed)`; per step, per k, `torch.randint(sx*sy, shape,
 * generator=g)`). Random destinations apply only to UNet calls with an even batch (tomesd's
 * rule), i.e. with classifier-free guidance; otherwise the inputs get zeros (no-rand
 * destinations). Because one rand tensor serves a whole UNet call, a batch is run one image per
 * UNet call when random destinations are on, so that every image stays reproducible alone.
 */
import { SdgenError, UsageError } from '../errors.js';
import type { GeneratedImage, GenerationParams, ProgressEvents } from './types.js';
import type { AttentionMode } from '../optimize/attention-mode.js';
import type { ToMeOptions } from '../tome/types.js';
import { loadModelFolder, type ModelFolder } from '../models/folder.js';
import { SessionManager, checkModelFile, type ModelSession, type RuntimeOptions } from '../models/session.js';
import { errorReason, type ProviderName } from '../models/providers.js';
import { chooseAttention, getFusedModel, providerSupportsFusedAttention, type ResolvedAttention } from '../optimize/index.js';
import { unetIO, vaeDecoderIO, type UnetIO } from '../models/io.js';
import { TorchGenerator } from '../random/torch-generator.js';
import { createScheduler, resolveSchedulerName } from '../schedulers/index.js';
import { guidanceScaleEmbedding } from '../schedulers/lcm.js';
import { tomeApplies, tomeRandShape, validateToMeOptions } from '../tome/index.js';
import { getPatchedUnet } from '../models/tome-cache.js';
import { TextEncoder, clipSkipSource, type PromptEmbedding } from './text-encoding.js';
import { denoiseBatch, initialLatents, throwIfAborted, type TomeRandFeed } from './denoise.js';
import { VaeDecoder } from './decode.js';
import { findFinalLayerNorm } from '../models/final-layer-norm.js';
import { defaultCacheDir } from '../models/cache-dir.js';
import { imageSeed } from './params.js';

/** One UNet session: the exported or the ToMe-patched graph, in one attention mode. */
interface UnetModel {
  model: ModelSession;
  io: UnetIO;
  /** the UNet file before the attention rewrite (exported or ToMe-patched) */
  file: string;
  /** the attention mode this session was opened for (what the run asked for, resolved) */
  mode: ResolvedAttention;
  /** the attention the session actually runs ('standard' when the fused rewrite fell back) */
  attention: ResolvedAttention;
  /** why a 'fused' request runs standard attention */
  fallback?: string;
}

interface PatchedUnet extends UnetModel {
  key: string;
  /** tome_rand inputs with their shapes per latent size */
  randShape: (k: number, latentH: number, latentW: number) => number[];
}

/** Options of one StableDiffusionPipeline.generate call. */
export interface GenerateOptions {
  /**
   * Which images of the job to make: images `first` … `first + count − 1` (default: all
   * batchSize × nIter of them). Each keeps its own seed (imageSeed), so a slice gives exactly
   * the images a whole run gives at those indices; UNet calls take up to batchSize images of
   * the slice at a time.
   */
  images?: { first: number; count: number };
  /**
   * No generate call follows on this pipeline: the UNet session is released as soon as the last
   * batch is denoised, before it is decoded. The decoder's first decode touches about 2.6 GB of
   * fresh memory at 512² (SD 1.5); next to a resident UNet (5 GB) much of it comes from
   * reclaiming page cache (SD 1.5, 512²: 9.7–12.0 s against 12.4–13.2 s in the pipeline, and the
   * run's peak memory halves; docs/performance.md). A later call still works: it reopens the UNet.
   */
  last?: boolean;
}

/** Options of StableDiffusionPipeline.load. */
export interface PipelineLoadOptions {
  /**
   * The attention mode the first runs will ask for (default 'auto'), so that the UNet is opened
   * in that mode right away; a run that asks for another mode reopens it.
   */
  attention?: AttentionMode;
  /**
   * The size and ToMe settings of the first run. When ToMe applies to it, load opens the
   * ToMe-patched UNet instead of the exported one (which is then opened only if a later run
   * needs it). Default: the exported UNet.
   */
  first?: Pick<GenerationParams, 'tome' | 'width' | 'height'>;
  /**
   * Load CPU sessions through onnxruntime's optimized-graph cache in the cache directory
   * (default: on, unless the environment sets SDGEN_OPTIMIZED_CACHE=0). Costs disk: the
   * optimized graph holds its own copy of the weights (one per UNet variant used).
   */
  optimizedCache?: boolean;
}

/**
 * The attention a UNet runs for a requested mode: chooseAttention, except that a provider or
 * float type without a fused kernel falls back to standard attention (with the reason, which
 * the pipeline prints for an explicit 'fused') instead of failing.
 */
export function resolveAttention(mode: AttentionMode, provider: string, isFp16: boolean): { attention: ResolvedAttention; reason?: string } {
  if (mode === 'standard') return { attention: 'standard' };
  if (!providerSupportsFusedAttention(provider, isFp16)) {
    const reason =
      provider.toLowerCase() === 'cpu' && isFp16
        ? "onnxruntime's CPU MultiHeadAttention is float32 only and this UNet is float16"
        : `the ${provider} provider has no MultiHeadAttention kernel sdgen relies on`;
    return { attention: 'standard', reason };
  }
  return { attention: chooseAttention(mode, provider, isFp16) };
}

/** The ToMe options that change the rewritten graph (min sizes only gate it). */
function tomeGraphKey(o: ToMeOptions): string {
  return JSON.stringify([o.ratio, o.sx, o.sy, o.maxDownsample, o.useRand, o.mergeAttn, o.mergeCrossattn, o.mergeMlp]);
}

/** Check the parameters that the pipeline itself depends on; UsageError on a bad value. */
export function validateGenerationParams(p: GenerationParams, folder?: ModelFolder): void {
  const scale = folder?.vaeScaleFactor ?? 8;
  for (const [k, v] of [['width', p.width], ['height', p.height]] as const) {
    if (!Number.isInteger(v) || v <= 0) throw new UsageError(`${k} must be a positive integer (got ${v})`);
    if (v % 8 !== 0) throw new UsageError(`${k} must be a multiple of 8 (got ${v})`);
    if (v % scale !== 0) throw new UsageError(`${k} must be a multiple of ${scale} for this model (got ${v})`);
  }
  if (!Number.isInteger(p.steps) || p.steps < 1) throw new UsageError(`steps must be a positive integer (got ${p.steps})`);
  if (!Number.isInteger(p.batchSize) || p.batchSize < 1) throw new UsageError(`batch size must be a positive integer (got ${p.batchSize})`);
  if (!Number.isInteger(p.nIter) || p.nIter < 1) throw new UsageError(`batch count must be a positive integer (got ${p.nIter})`);
  if (!Number.isFinite(p.cfg)) throw new UsageError(`cfg must be a number (got ${p.cfg})`);
  if (!Number.isInteger(p.seed) || p.seed < -1) throw new UsageError(`seed must be an integer ≥ 0, or -1 for random (got ${p.seed})`);
  if (!Number.isInteger(p.clipSkip) || p.clipSkip < 1) throw new UsageError(`clip skip must be an integer ≥ 1 (got ${p.clipSkip})`);
  if (!Number.isFinite(p.eta) || p.eta < 0) throw new UsageError(`eta must be ≥ 0 (got ${p.eta})`);
  if (p.longPrompt !== undefined && p.longPrompt !== 'chunk' && p.longPrompt !== 'truncate') {
    throw new UsageError(`long prompt mode must be 'chunk' or 'truncate' (got ${String(p.longPrompt)})`);
  }
}

/**
 * Optional inspection hooks for generate (tests, debugging): they see the intermediate values
 * of the run. Not part of the CLI contract.
 */
export interface GenerationInspector {
  onPrompts?(cond: PromptEmbedding, uncond: PromptEmbedding | null): void;
  onTimesteps?(timesteps: readonly number[]): void;
  /** per batch, after the initial latents are drawn (before denoising) */
  onInitialLatents?(seeds: readonly number[], latents: readonly Float32Array[]): void;
  /** per batch, after denoising (before decoding) */
  onFinalLatents?(seeds: readonly number[], latents: readonly Float32Array[]): void;
}

/** A random seed in [0, 2^32), the range A1111 uses. */
export function randomSeed(): number {
  return Math.floor(Math.random() * 0x100000000);
}

export class StableDiffusionPipeline {
  /** the exported UNet graph, opened in the attention mode in use (null: not open right now) */
  private original: UnetModel | null;
  /** the ToMe-patched UNet, in the attention mode in use (only one of the two is open) */
  private patched: PatchedUnet | null;
  /** ToMe graph keys whose rewrite is not possible for this UNet, with the reason */
  private readonly unpatchable: Map<string, string>;
  /** UNet files (exported or ToMe-patched) whose attention cannot be fused, with the reason */
  private readonly unfusable: Map<string, string>;
  /** the UNet's I/O and provider (the same for every variant: the rewrites keep the I/O) */
  private readonly baseIO: UnetIO;
  private readonly unetProvider: ProviderName;
  private disposed = false;
  private busy = false;

  private constructor(
    readonly folder: ModelFolder,
    readonly runtime: RuntimeOptions,
    private readonly sessions: SessionManager,
    private readonly textEncoder: TextEncoder,
    private readonly textModel: ModelSession,
    unet: { original: UnetModel | null; patched: PatchedUnet | null; unfusable: Map<string, string>; unpatchable: Map<string, string> },
    private readonly vaeModel: ModelSession,
    private readonly vae: VaeDecoder,
    private readonly loadEvents: ProgressEvents | undefined,
  ) {
    this.original = unet.original;
    this.patched = unet.patched;
    this.unfusable = unet.unfusable;
    this.unpatchable = unet.unpatchable;
    const open = unet.original ?? unet.patched;
    if (!open) throw new Error('StableDiffusionPipeline: no UNet session');
    // the rewrites keep the UNet's I/O; the patched graph adds its tome_rand inputs
    this.baseIO = unet.original ? unet.original.io : { ...open.io, tomeRand: [] };
    this.unetProvider = open.model.provider;
  }

  /**
   * Open a model folder: reads its layout and creates the three sessions. The UNet is opened in
   * the attention mode `options.attention` resolves to (default 'auto').
   */
  static async load(
    modelDir: string,
    runtime: RuntimeOptions,
    events?: ProgressEvents,
    options: PipelineLoadOptions = {},
  ): Promise<StableDiffusionPipeline> {
    const folder = await loadModelFolder(modelDir);
    const cacheDir = runtime.cacheDir ?? defaultCacheDir();
    const useOptimized = options.optimizedCache ?? process.env['SDGEN_OPTIMIZED_CACHE'] !== '0';
    const sessions = new SessionManager(runtime, (m) => events?.onNotice?.(m), undefined, useOptimized ? { cacheDir } : null);
    const opened: ModelSession[] = [];
    try {
      const total = 3;
      events?.onLoad?.('text_encoder', 0, total);
      const textModel = await sessions.open(folder.paths.textEncoder, 'text encoder');
      opened.push(textModel);
      const lnorm = await findFinalLayerNorm(folder.paths.textEncoder, textModel.info).catch(() => null);
      const textEncoder = new TextEncoder(textModel, folder.tokenizer, lnorm, clipSkipSource(sessions, folder.paths.textEncoder, cacheDir));
      events?.onLoad?.('unet', 1, total);
      // The UNet's float type is known once a UNet session exists; until then the text
      // encoder's stands for it (exports convert every model). A wrong guess only costs a
      // reopen at the first run (fp32 UNet) or a rewrite that fuses nothing (fp16 UNet on CPU).
      const mode = options.attention ?? 'auto';
      const guessFp16 = textEncoder.io.lastHiddenState.type === 'float16';
      const { attention } = resolveAttention(mode, textModel.provider, guessFp16);
      const unfusable = new Map<string, string>();
      const unpatchable = new Map<string, string>();
      const variantOpts: OpenUnetOptions = { cacheDir, isFp16: guessFp16, unfusable, notice: (m) => events?.onNotice?.(m), explicit: mode === 'fused' };
      let patched: PatchedUnet | null = null;
      const first = options.first;
      if (first && first.tome.ratio > 0 && tomeApplies(first.tome, first.width, first.height).apply) {
        // a hint only: if the patched graph cannot be made or opened here, load opens the exported
        // one, and the run that needs ToMe meets (and reports) the problem itself
        try {
          validateToMeOptions(first.tome);
          const res = await patchUnet(folder.paths.unet, first.tome, cacheDir, events);
          if ('reason' in res) unpatchable.set(tomeGraphKey(first.tome), res.reason);
          else {
            patched = patchedUnet(await openUnetVariant(sessions, res.path, 'ToMe unet', attention, variantOpts), first.tome, res.blocks);
            opened.push(patched.model);
          }
        } catch {
          // opened below: the exported graph
        }
      }
      let original: UnetModel | null = null;
      if (!patched) {
        original = await openUnetVariant(sessions, folder.paths.unet, 'unet', attention, variantOpts);
        opened.push(original.model);
        if (original.io.tomeRand.length > 0) throw new SdgenError(`unet: ${folder.paths.unet} is a ToMe-patched graph; use the original export`);
      }
      events?.onLoad?.('vae_decoder', 2, total);
      // loaded plainly: its optimization is quick, and its cached graph's first run was slower
      const vaeModel = await sessions.open(await vaeDecoderFile(folder.paths.vaeDecoder, attention, cacheDir, textModel.provider), 'vae decoder', { optimizedCache: false });
      opened.push(vaeModel);
      const vae = new VaeDecoder(vaeModel.session, vaeDecoderIO(vaeModel.info, 'vae decoder'), folder.vaeScalingFactor);
      events?.onLoad?.('done', total, total);
      const pipe = new StableDiffusionPipeline(folder, runtime, sessions, textEncoder, textModel, { original, patched, unfusable, unpatchable }, vaeModel, vae, events);
      return pipe;
    } catch (err) {
      await Promise.all(opened.map((s) => s.release().catch(() => {})));
      throw err;
    }
  }

  /** The execution provider the sessions run on ('cpu', 'cuda', …). */
  get provider(): string {
    return this.unetProvider;
  }

  /** The UNet's I/O as its metadata reports it. */
  get unetIO(): UnetIO {
    return this.baseIO;
  }

  /** What the UNet sessions currently open are (for tests and --verbose): variant and attention. */
  get openUnets(): { variant: 'original' | 'tome'; attention: ResolvedAttention }[] {
    const out: { variant: 'original' | 'tome'; attention: ResolvedAttention }[] = [];
    if (this.original) out.push({ variant: 'original', attention: this.original.attention });
    if (this.patched) out.push({ variant: 'tome', attention: this.patched.attention });
    return out;
  }

  /** Per model, whether its session was loaded from onnxruntime's cached optimized graph. */
  get optimizedCacheHits(): { textEncoder: boolean; unet: boolean | null; tomeUnet: boolean | null; vaeDecoder: boolean } {
    return {
      textEncoder: this.textModel.fromOptimizedCache,
      unet: this.original ? this.original.model.fromOptimizedCache : null,
      tomeUnet: this.patched ? this.patched.model.fromOptimizedCache : null,
      vaeDecoder: this.vaeModel.fromOptimizedCache,
    };
  }

  private get cacheDir(): string {
    return this.runtime.cacheDir ?? defaultCacheDir();
  }

  /**
   * The UNet a run uses: the exported or the ToMe-patched graph (params.tome), with the
   * attention params.attention resolves to for this provider and float type. Fused attention
   * rewrites the graph the run would otherwise use (ToMe first, then fused: getFusedModel on
   * the patched file). A rewrite that fuses nothing, or a provider / float type without a
   * kernel, runs standard attention: one notice for an explicit 'fused', silently for 'auto'.
   * Only the session in use is kept: one attention mode, and the exported or the patched graph
   * (a run that needs the other graph releases the open one before opening its own).
   */
  private async unetFor(
    params: GenerationParams,
    events: ProgressEvents | undefined,
  ): Promise<{ unet: UnetModel | PatchedUnet; tome: boolean; attention: ResolvedAttention }> {
    const isFp16 = this.baseIO.sample.type === 'float16';
    const resolved = resolveAttention(params.attention, this.provider, isFp16);
    const mode = resolved.attention;
    // Sessions of the other mode are not needed by this run (nor, usually, the next). A session
    // that fell back to standard attention serves both modes.
    const serves = (u: UnetModel): boolean =>
      u.mode === mode || u.attention === mode || (mode === 'fused' && this.unfusable.has(u.file));
    if (this.original && !serves(this.original)) await this.releaseUnet('original');
    if (this.patched && !serves(this.patched)) await this.releaseUnet('patched');
    const done = (unet: UnetModel | PatchedUnet, tome: boolean) => {
      if (params.attention === 'fused' && unet.attention !== 'fused') {
        const why = resolved.reason ?? unet.fallback ?? this.unfusable.get(unet.file) ?? 'not applicable';
        events?.onNotice?.(`fused attention not used: ${why}; using standard attention`);
      }
      return { unet, tome, attention: unet.attention };
    };
    const variantOpts = {
      cacheDir: this.cacheDir,
      isFp16,
      unfusable: this.unfusable,
      notice: (m: string) => events?.onNotice?.(m),
      explicit: params.attention === 'fused',
    };
    const original = async (): Promise<UnetModel> => {
      await this.releaseUnet('patched');
      if (!this.original) this.original = await openUnetVariant(this.sessions, this.folder.paths.unet, 'unet', mode, variantOpts);
      return this.original;
    };

    if (!(params.tome.ratio > 0)) return done(await original(), false);
    const decision = tomeApplies(params.tome, params.width, params.height);
    if (!decision.apply) {
      events?.onNotice?.(`ToMe skipped: ${decision.reason ?? 'not applicable'}`);
      return done(await original(), false);
    }
    const key = tomeGraphKey(params.tome);
    const unpatchable = this.unpatchable.get(key);
    if (unpatchable !== undefined) {
      events?.onNotice?.(`ToMe skipped: ${unpatchable}`);
      return done(await original(), false);
    }
    if (this.patched?.key !== key) {
      await this.releaseUnet('patched');
      const res = await patchUnet(this.folder.paths.unet, params.tome, this.cacheDir, events);
      if ('reason' in res) {
        this.unpatchable.set(key, res.reason);
        events?.onNotice?.(`ToMe skipped: ${res.reason}`);
        return done(await original(), false);
      }
      // the exported graph's session goes before the patched one is opened (peak memory)
      await this.releaseUnet('original');
      this.patched = patchedUnet(await openUnetVariant(this.sessions, res.path, 'ToMe unet', mode, variantOpts), params.tome, res.blocks);
    }
    return done(this.patched, true);
  }

  /** Releases one UNet session, if open (the next run that needs it reopens it). */
  private async releaseUnet(which: 'original' | 'patched'): Promise<void> {
    const u = this[which];
    if (!u) return;
    this[which] = null;
    await u.model.release();
  }

  /**
   * Generate the images of one job (nIter batches of batchSize images, or the slice
   * `options.images`), yielded as each batch is decoded. Throws GenerationAbortedError (name 'AbortError') when `signal` fires; the
   * batch in progress is not yielded.
   */
  async *generate(
    params: GenerationParams,
    events?: ProgressEvents & GenerationInspector,
    signal?: AbortSignal,
    options: GenerateOptions = {},
  ): AsyncGenerator<GeneratedImage> {
    if (this.disposed) throw new SdgenError('pipeline already disposed');
    // Sessions (and the cached ToMe session) are shared: one generate at a time per pipeline.
    if (this.busy) throw new SdgenError('this pipeline is already generating; run generate calls one after another');
    this.busy = true;
    try {
      yield* this.run(params, events, signal, options);
    } finally {
      this.busy = false;
    }
  }

  private async *run(
    params: GenerationParams,
    events: (ProgressEvents & GenerationInspector) | undefined,
    signal: AbortSignal | undefined,
    options: GenerateOptions,
  ): AsyncGenerator<GeneratedImage> {
    const ev = events ?? this.loadEvents;
    const folder = this.folder;
    validateGenerationParams(params, folder);
    if (params.tome.ratio > 0) validateToMeOptions(params.tome);
    const seed0 = params.seed === -1 ? randomSeed() : params.seed;
    const schedulerName = resolveSchedulerName(params.scheduler || folder.defaultScheduler);
    const scale = folder.vaeScaleFactor;
    const lh = params.height / scale;
    const lw = params.width / scale;

    const { unet, tome } = await this.unetFor(params, ev);
    const io = unet.io;
    const lcm = io.timestepCond !== null;
    const guided = !lcm && params.cfg > 1;

    // Text embeddings, once per distinct prompt in this call.
    const t0 = performance.now();
    const cache = new Map<string, PromptEmbedding>();
    const { cond, uncond } = await this.textEncoder.encodePair(
      params.prompt,
      params.negativePrompt,
      guided,
      { emphasis: params.emphasis, clipSkip: params.clipSkip, longPrompt: params.longPrompt ?? 'chunk' },
      cache,
    );
    const textMs = performance.now() - t0;
    events?.onPrompts?.(cond, uncond);

    let timestepCond: Float32Array | null = null;
    if (io.timestepCond) {
      const dim = io.timestepCond.dim ?? folder.timeCondProjDim;
      if (dim === null) throw new SdgenError(`unet: input "${io.timestepCond.name}" has no fixed width and the unet config has no time_cond_proj_dim`);
      timestepCond = Float32Array.from(guidanceScaleEmbedding(params.cfg - 1, dim));
    }

    // With ToMe random destinations each image gets its own UNet calls (see the header).
    const randOn = io.tomeRand.length > 0;
    const perCall = randOn ? 1 : params.batchSize;
    const jobImages = params.batchSize * params.nIter;
    const slice = options.images ?? { first: 0, count: jobImages };
    if (!Number.isInteger(slice.first) || !Number.isInteger(slice.count) || slice.first < 0 || slice.count < 1 || slice.first + slice.count > jobImages) {
      throw new UsageError(`images ${slice.first}…${slice.first + slice.count - 1} are not within the job's ${jobImages} images`);
    }
    const batches = Math.ceil(slice.count / perCall);

    for (let bi = 0; bi < batches; bi++) {
      throwIfAborted(signal);
      const batchStart = performance.now();
      const first = slice.first + bi * perCall;
      const count = Math.min(perCall, slice.first + slice.count - first);
      const seeds = Array.from({ length: count }, (_, j) => imageSeed({ seed: seed0 }, first + j));
      const generators = seeds.map((s) => new TorchGenerator(s));
      const schedulers = seeds.map(() => {
        const s = createScheduler(schedulerName, folder.configs.scheduler, { eta: params.eta });
        s.setTimesteps(params.steps);
        return s;
      });
      if (bi === 0) events?.onTimesteps?.(Array.from(schedulers[0]!.timesteps, Number));
      const latents = generators.map((g, j) => initialLatents(g, schedulers[j]!, lh, lw));
      events?.onInitialLatents?.(seeds, latents.map((x) => x.slice()));
      let tomeRand: TomeRandFeed | null = null;
      if (randOn) {
        const p = unet as PatchedUnet;
        tomeRand = {
          inputs: io.tomeRand.map((r, k) => ({ name: r.name, type: r.type, shape: p.randShape(k, lh, lw) })),
          high: params.tome.sx * params.tome.sy,
          generators: seeds.map((s) => new TorchGenerator(s)),
        };
      }
      const { unetMs } = await denoiseBatch({
        session: unet.model.session,
        io,
        schedulers,
        generators,
        latents,
        latentHeight: lh,
        latentWidth: lw,
        cond,
        uncond,
        cfg: params.cfg,
        timestepCond,
        tomeRand,
        signal,
        onStep: (step, total) => ev?.onStep?.(step, total, bi + 1, batches),
      });
      throwIfAborted(signal);
      if (options.last && bi === batches - 1) {
        await this.releaseUnet('original');
        await this.releaseUnet('patched');
      }
      events?.onFinalLatents?.(seeds, latents.map((x) => x.slice()));
      const decoded: { rgb: Uint8Array; width: number; height: number; ms: number }[] = [];
      for (let j = 0; j < count; j++) {
        const v0 = performance.now();
        const img = await this.vae.decode(latents[j]!, lh, lw);
        decoded.push({ ...img, ms: performance.now() - v0 });
      }
      const batchMs = performance.now() - batchStart;
      for (let j = 0; j < count; j++) {
        const d = decoded[j]!;
        const index = first + j;
        yield {
          index,
          seed: seeds[j]!,
          width: d.width,
          height: d.height,
          rgb: d.rgb,
          params: { ...params, tome: { ...params.tome }, seed: seeds[j]!, scheduler: schedulerName },
          tomeApplied: tome,
          modelName: folder.name,
          timings: {
            textEncoderMs: bi === 0 ? textMs / count : 0,
            unetMs: unetMs / count,
            vaeMs: d.ms,
            totalMs: batchMs / count + (bi === 0 ? textMs / count : 0),
          },
        };
      }
    }
  }

  /** Release every session. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const all = [this.textModel, this.vaeModel, ...[this.original, this.patched].flatMap((u) => (u ? [u.model] : []))];
    this.original = null;
    this.patched = null;
    await Promise.all([...all.map((m) => m.release().catch(() => {})), this.textEncoder.release().catch(() => {})]);
  }
}

/**
 * The VAE decoder file to load: its fused-attention copy (the mid-block's single-head attention
 * over every latent pixel: 4096 tokens at 512², 16384 at 1024², whose score matrix the exported
 * graph materializes) when the run's attention resolves to fused, else the export. A rewrite
 * that fuses nothing or fails loads the export.
 */
async function vaeDecoderFile(file: string, attention: ResolvedAttention, cacheDir: string, provider: string): Promise<string> {
  if (attention !== 'fused') return file;
  try {
    const r = await getFusedModel(file, { cacheDir, allowFloat16: provider.toLowerCase() !== 'cpu' });
    return r.fused ? r.path : file;
  } catch {
    return file;
  }
}

/** The ToMe graph of `unetFile` for `tome` (getPatchedUnet), or why it cannot be made. */
async function patchUnet(
  unetFile: string,
  tome: ToMeOptions,
  cacheDir: string,
  events: ProgressEvents | undefined,
): Promise<{ path: string; blocks: readonly { randInput?: string; level: number | null }[] } | { reason: string }> {
  const res = await getPatchedUnet(unetFile, tome, {
    cacheDir,
    onProgress: (stage: string, d: number, total: number) => events?.onLoad?.(`tome: ${stage}`, d, total),
  });
  if (!res.patched) return { reason: res.reason ?? 'the UNet graph could not be patched' };
  return { path: res.path, blocks: res.blocks };
}

/** A session of a ToMe-patched UNet, with the shapes of its tome_rand inputs. */
function patchedUnet(v: UnetModel, tome: ToMeOptions, blocks: readonly { randInput?: string; level: number | null }[]): PatchedUnet {
  const opts = { ...tome };
  return {
    ...v,
    key: tomeGraphKey(tome),
    randShape: (k, lh, lw) => {
      const name = v.io.tomeRand[k]!.name;
      const block = blocks.find((b) => b.randInput === name);
      const shape = block ? tomeRandShape(block, lh, lw, opts) : null;
      if (!shape) throw new SdgenError(`ToMe unet: cannot size input ${name} (block level unknown)`);
      return shape;
    },
  };
}

interface OpenUnetOptions {
  cacheDir: string;
  isFp16: boolean;
  /** files whose fused rewrite is known not to work (read and updated) */
  unfusable: Map<string, string>;
  notice: (message: string) => void;
  /** the user asked for 'fused' (the caller prints the fallback notice) */
  explicit: boolean;
}

/**
 * Opens one UNet file in an attention mode. 'fused': the file's fused copy (getFusedModel,
 * cached on disk), or the file itself with standard attention when the rewrite fuses nothing
 * (remembered in `unfusable`, silently) or fails (a notice unless the caller prints one).
 */
async function openUnetVariant(
  sessions: SessionManager,
  file: string,
  what: string,
  mode: ResolvedAttention,
  o: OpenUnetOptions,
): Promise<UnetModel> {
  const open = async (p: string, w: string, attention: ResolvedAttention, fallback?: string): Promise<UnetModel> => {
    const model = await sessions.open(p, w);
    try {
      return { model, io: unetIO(model.info, w), file, mode, attention, ...(fallback !== undefined ? { fallback } : {}) };
    } catch (err) {
      await model.release();
      throw err;
    }
  };
  if (mode === 'standard') return open(file, what, 'standard');
  let reason = o.unfusable.get(file);
  if (reason === undefined) {
    await checkModelFile(file, what);
    let failed = false;
    try {
      const r = await getFusedModel(file, { cacheDir: o.cacheDir, allowFloat16: o.isFp16 });
      if (r.fused) return await open(r.path, `${what} (fused attention)`, 'fused');
      reason = r.reason;
    } catch (err) {
      failed = true;
      reason = `the fused ${what} failed (${errorReason(err)})`;
    }
    o.unfusable.set(file, reason);
    if (failed && !o.explicit) o.notice(`${reason}; using standard attention`);
  }
  return open(file, what, 'standard', reason);
}
