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
 * (getPatchedUnet; its session is cached next to the original one across generate calls).
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
import type { GeneratedImage, GenerationParams, ProgressEvents, RuntimeOptions } from './types.js';
import type { ToMeOptions } from '../tome/types.js';
import { loadModelFolder, type ModelFolder } from '../models/folder.js';
import { SessionManager, type ModelSession } from '../models/session.js';
import { unetIO, vaeDecoderIO, type UnetIO } from '../models/io.js';
import { TorchGenerator } from '../random/torch-generator.js';
import { createScheduler, resolveSchedulerName } from '../schedulers/index.js';
import { guidanceScaleEmbedding } from '../schedulers/lcm.js';
import { tomeApplies, tomeRandShape, validateToMeOptions } from '../tome/index.js';
import { getPatchedUnet } from '../models/tome-cache.js';
import { TextEncoder, type PromptEmbedding } from './text-encoding.js';
import { denoiseBatch, initialLatents, throwIfAborted, type TomeRandFeed } from './denoise.js';
import { VaeDecoder } from './decode.js';
import { findFinalLayerNorm } from '../models/final-layer-norm.js';
import { defaultCacheDir } from '../models/cache-dir.js';

interface UnetModel {
  model: ModelSession;
  io: UnetIO;
}

interface PatchedUnet extends UnetModel {
  key: string;
  /** tome_rand inputs with their shapes per latent size */
  randShape: (k: number, latentH: number, latentW: number) => number[];
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
  private patched: PatchedUnet | null = null;
  /** ToMe graph keys whose rewrite is not possible for this UNet, with the reason */
  private readonly unpatchable = new Map<string, string>();
  private disposed = false;
  private busy = false;

  private constructor(
    readonly folder: ModelFolder,
    readonly runtime: RuntimeOptions,
    private readonly sessions: SessionManager,
    private readonly textEncoder: TextEncoder,
    private readonly textModel: ModelSession,
    private readonly unet: UnetModel,
    private readonly vaeModel: ModelSession,
    private readonly vae: VaeDecoder,
    private readonly loadEvents: ProgressEvents | undefined,
  ) {}

  /** Open a model folder: reads its layout and creates the three sessions. */
  static async load(modelDir: string, runtime: RuntimeOptions, events?: ProgressEvents): Promise<StableDiffusionPipeline> {
    const folder = await loadModelFolder(modelDir);
    const sessions = new SessionManager(runtime, (m) => events?.onNotice?.(m));
    const opened: ModelSession[] = [];
    try {
      const total = 3;
      events?.onLoad?.('text_encoder', 0, total);
      const textModel = await sessions.open(folder.paths.textEncoder, 'text encoder');
      opened.push(textModel);
      const lnorm = await findFinalLayerNorm(folder.paths.textEncoder, textModel.info).catch(() => null);
      const textEncoder = new TextEncoder(textModel, folder.tokenizer, lnorm);
      events?.onLoad?.('unet', 1, total);
      const unetModel = await sessions.open(folder.paths.unet, 'unet');
      opened.push(unetModel);
      const unet = { model: unetModel, io: unetIO(unetModel.info, 'unet') };
      if (unet.io.tomeRand.length > 0) throw new SdgenError(`unet: ${folder.paths.unet} is a ToMe-patched graph; use the original export`);
      events?.onLoad?.('vae_decoder', 2, total);
      const vaeModel = await sessions.open(folder.paths.vaeDecoder, 'vae decoder');
      opened.push(vaeModel);
      const vae = new VaeDecoder(vaeModel.session, vaeDecoderIO(vaeModel.info, 'vae decoder'), folder.vaeScalingFactor);
      events?.onLoad?.('done', total, total);
      return new StableDiffusionPipeline(folder, runtime, sessions, textEncoder, textModel, unet, vaeModel, vae, events);
    } catch (err) {
      await Promise.all(opened.map((s) => s.release().catch(() => {})));
      throw err;
    }
  }

  /** The execution provider the sessions run on ('cpu', 'cuda', …). */
  get provider(): string {
    return this.unet.model.provider;
  }

  /** The UNet's I/O as its metadata reports it. */
  get unetIO(): UnetIO {
    return this.unet.io;
  }

  /**
   * The UNet a run uses. Hook for the attention rewrite (params.attention): 'auto' and
   * 'standard' use the exported graph for now; 'fused' will map to the perf work's
   * fuseAttention graph here (composing with the ToMe rewrite).
   */
  private async unetFor(params: GenerationParams, events: ProgressEvents | undefined): Promise<{ unet: UnetModel | PatchedUnet; tome: boolean }> {
    if (params.attention === 'fused') {
      events?.onNotice?.('fused attention is not available yet; using standard attention');
    }
    if (!(params.tome.ratio > 0)) return { unet: this.unet, tome: false };
    const decision = tomeApplies(params.tome, params.width, params.height);
    if (!decision.apply) {
      events?.onNotice?.(`ToMe skipped: ${decision.reason ?? 'not applicable'}`);
      return { unet: this.unet, tome: false };
    }
    const key = tomeGraphKey(params.tome);
    const unpatchable = this.unpatchable.get(key);
    if (unpatchable !== undefined) {
      events?.onNotice?.(`ToMe skipped: ${unpatchable}`);
      return { unet: this.unet, tome: false };
    }
    if (this.patched?.key !== key) {
      if (this.patched) {
        await this.patched.model.release();
        this.patched = null;
      }
      const res = await getPatchedUnet(this.folder.paths.unet, params.tome, {
        cacheDir: this.runtime.cacheDir ?? defaultCacheDir(),
        onProgress: (stage: string, done: number, total: number) => events?.onLoad?.(`tome: ${stage}`, done, total),
      });
      if (!res.patched) {
        const why = res.reason ?? 'the UNet graph could not be patched';
        this.unpatchable.set(key, why);
        events?.onNotice?.(`ToMe skipped: ${why}`);
        return { unet: this.unet, tome: false };
      }
      const model = await this.sessions.open(res.path, 'ToMe unet');
      let io: UnetIO;
      try {
        io = unetIO(model.info, 'ToMe unet');
      } catch (err) {
        await model.release();
        throw err;
      }
      const opts = { ...params.tome };
      const blocks: readonly { randInput?: string; level: number | null }[] = res.blocks;
      this.patched = {
        key,
        model,
        io,
        randShape: (k, lh, lw) => {
          const name = io.tomeRand[k]!.name;
          const block = blocks.find((b) => b.randInput === name);
          const shape = block ? tomeRandShape(block, lh, lw, opts) : null;
          if (!shape) throw new SdgenError(`ToMe unet: cannot size input ${name} (block level unknown)`);
          return shape;
        },
      };
    }
    return { unet: this.patched!, tome: true };
  }

  /**
   * Generate the images of one job: nIter batches of batchSize images, yielded as each batch
   * is decoded. Throws GenerationAbortedError (name 'AbortError') when `signal` fires; the
   * batch in progress is not yielded.
   */
  async *generate(
    params: GenerationParams,
    events?: ProgressEvents & GenerationInspector,
    signal?: AbortSignal,
  ): AsyncGenerator<GeneratedImage> {
    if (this.disposed) throw new SdgenError('pipeline already disposed');
    // Sessions (and the cached ToMe session) are shared: one generate at a time per pipeline.
    if (this.busy) throw new SdgenError('this pipeline is already generating; run generate calls one after another');
    this.busy = true;
    try {
      yield* this.run(params, events, signal);
    } finally {
      this.busy = false;
    }
  }

  private async *run(
    params: GenerationParams,
    events: (ProgressEvents & GenerationInspector) | undefined,
    signal: AbortSignal | undefined,
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
    const totalImages = params.batchSize * params.nIter;
    const batches = Math.ceil(totalImages / perCall);

    for (let bi = 0; bi < batches; bi++) {
      throwIfAborted(signal);
      const batchStart = performance.now();
      const first = bi * perCall;
      const count = Math.min(perCall, totalImages - first);
      const seeds = Array.from({ length: count }, (_, j) => seed0 + first + j);
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
    const all = [this.textModel, this.unet.model, this.vaeModel, ...(this.patched ? [this.patched.model] : [])];
    this.patched = null;
    await Promise.all(all.map((m) => m.release().catch(() => {})));
  }
}
