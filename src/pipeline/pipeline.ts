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
import { stat } from 'node:fs/promises';
import { SdgenError, UsageError } from '../errors.js';
import type { GeneratedImage, GenerationParams, ProgressEvents, StepPhase } from './types.js';
import type { AttentionMode } from '../optimize/attention-mode.js';
import type { ToMeOptions } from '../tome/types.js';
import { loadModelFolder, type ModelFolder } from '../models/folder.js';
import { SessionManager, type ModelSession, type RuntimeOptions } from '../models/session.js';
import { chooseAttention, providerSupportsFusedAttention, type ResolvedAttention } from '../optimize/index.js';
import { unetIO, vaeDecoderIO, type UnetIO } from '../models/io.js';
import { TorchGenerator } from '../random/torch-generator.js';
import { createScheduler, resolveSchedulerName } from '../schedulers/index.js';
import { guidanceScaleEmbedding } from '../schedulers/lcm.js';
import { DEFAULT_TOME, tomeApplies, tomeGraphKey, tomeRandShape, validateToMeOptions } from '../tome/options.js';
import { resolveGraph, type ResolvedGraph } from '../models/variants.js';
import { TextEncoder, clipSkipSource, type PromptEmbedding } from './text-encoding.js';
import { denoiseBatch, initialLatents, throwIfAborted, type TomeRandFeed } from './denoise.js';
import type { ExtraUnetInput } from './denoise.js';
import { SdxlConditioner, type SdxlConditioning } from './sdxl-conditioning.js';
import { VaeDecoder } from './decode.js';
import { findFinalLayerNorm } from '../optimize/final-layer-norm.js';
import { defaultCacheDir, prepareCacheDir } from '../models/cache-dir.js';
import { imageSeed, validateGenerationParams } from './params.js';
import { loadInitSource, prepareBatch, type InitSource } from './img2img.js';
import { VaeEncoder, vaeEncoderIO } from './encode.js';
import { TiledVaeDecoder, decodeTileSpec, encodeTileSpec, shouldTile } from './tiling.js';
import { firstPassParams, secondPassParams, validateHires } from './hires.js';
import { getEncoderParamsModel } from '../optimize/encoder-params.js';
import { overlayInit } from '../image/mask.js';
import { interpolate } from '../image/interpolate.js';
import { resizeRgb, type RgbImage } from '../image/init-image.js';
import { validateStrength } from '../schedulers/img2img.js';

export { validateGenerationParams };
import { getLoraVariant, scaleFor, type LoraRef } from '../lora/variant.js';
import { loraSignature, resolveRunLoras } from '../lora/resolve.js';
import { loadEmbeddingsDir, placedInBoth, sdxlEmbeddings, usedEmbeddings, withEmbeddings, type Embedding, type PlacedEmbedding } from '../lora/embeddings.js';

/** The open UNet session: the graph resolveGraph chose for a run's ToMe and attention settings. */
interface UnetModel {
  model: ModelSession;
  io: UnetIO;
  /** the ToMe graph key (or null), the resolved attention and the LoRAs it was opened for */
  key: string;
  graph: ResolvedGraph;
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
  /** internal (hires pass 1): each image's final latents go here instead of being decoded and yielded */
  latentsOut?: (index: number, latents: Float32Array) => void;
  /** internal (hires pass 2): what the images start from (src/pipeline/img2img.ts) */
  init?: InitSource;
  /** internal (hires): the pass the steps belong to, passed on to ProgressEvents.onStep */
  phase?: StepPhase;
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
  first?: Pick<GenerationParams, 'tome' | 'width' | 'height' | 'loras'>;
  /**
   * Load CPU sessions through onnxruntime's optimized-graph cache in the cache directory
   * (default: on, unless the environment sets SDGEN_OPTIMIZED_CACHE=0). Costs disk: the
   * optimized graph holds its own copy of the weights (one per UNet variant used).
   */
  optimizedCache?: boolean;
  /**
   * Textual-inversion embeddings (`*.safetensors`, src/lora/embeddings.ts): each file's name used
   * as a word in a prompt stands for its vectors, added to the text encoder's token table.
   */
  embeddingsDir?: string;
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

/**
 * Optional inspection hooks for generate (tests, debugging): they see the intermediate values
 * of the run. Not part of the CLI contract.
 */
export interface GenerationInspector {
  onPrompts?(cond: PromptEmbedding, uncond: PromptEmbedding | null): void;
  /** SDXL runs: both encoders' ids, the pooled embeddings and the time ids */
  onSdxlConditioning?(c: SdxlConditioning): void;
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
  /** the UNet session in use (one at a time; null: not open right now) */
  private unet: UnetModel | null = null;
  /** the last init picture and mask loaded (initSource), by the files and settings they came from */
  private loadedInit: { key: string; source: InitSource } | null = null;
  /** the exported UNet's I/O (the rewrites keep it; a ToMe graph adds its tome_rand inputs) */
  private baseIO: UnetIO | null = null;
  private disposed = false;
  private busy = false;
  /** textual-inversion embeddings (PipelineLoadOptions.embeddingsDir) and their token ids */
  private embeddings: Embedding[] = [];
  private placed: PlacedEmbedding[] = [];
  /** the LoRAs (loraSignature) the open text encoder has, and its file */
  private textKey = '[]';
  /** SDXL folders: the second text encoder's session and the conditioning stage over both encoders */
  private sdxl: { model2: ModelSession; conditioner: SdxlConditioner; file2: string } | null = null;
  private textFile = '';
  /** the VAE encoder (img2img, inpainting, pixel-space hires), opened at its first use */
  private encoder: { model: ModelSession; stage: VaeEncoder } | null = null;

  private constructor(
    readonly folder: ModelFolder,
    readonly runtime: RuntimeOptions,
    private readonly sessions: SessionManager,
    private textEncoder: TextEncoder,
    private textModel: ModelSession,
    private readonly vaeModel: ModelSession,
    private readonly vae: VaeDecoder,
    private readonly loadEvents: ProgressEvents | undefined,
    /** load through onnxruntime's optimized-graph cache (CPU) */
    private readonly useOptimized: boolean,
    /** float type of the UNet until a UNet session says (the text encoder's: exports convert every model) */
    private readonly guessFp16: boolean,
  ) {}

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
    await prepareCacheDir(cacheDir);
    const useOptimized = options.optimizedCache ?? process.env['SDGEN_OPTIMIZED_CACHE'] !== '0';
    const sessions = new SessionManager(runtime, (m) => events?.onNotice?.(m), undefined, useOptimized ? { cacheDir } : null);
    const opened: ModelSession[] = [];
    try {
      const total = 3;
      events?.onLoad?.('text_encoder', 0, total);
      // with embeddings, the text encoder is its variant with their rows (the base file otherwise)
      const allEmbeddings = options.embeddingsDir !== undefined ? await loadEmbeddingsDir(options.embeddingsDir) : [];
      // SDXL takes the embeddings with vectors for both of its text encoders (clip_l and clip_g)
      const sdxlFit = folder.family === 'sdxl' ? sdxlEmbeddings(allEmbeddings) : null;
      const embeddings = sdxlFit?.usable ?? allEmbeddings;
      for (const m of sdxlFit?.skipped ?? []) events?.onNotice?.(`embedding ${m}`);
      const te = await getLoraVariant(folder.paths.textEncoder, { cacheDir, target: 'text_encoder', loras: [], embeddings });
      for (const m of te.skipped) events?.onNotice?.(`embedding ${m}`);
      const textModel = await sessions.open(te.path, 'text encoder');
      opened.push(textModel);
      const lnorm = await findFinalLayerNorm(te.path, textModel.info).catch(() => null);
      const textEncoder = new TextEncoder(textModel, withEmbeddings(folder.tokenizer, te.placed), lnorm, clipSkipSource(sessions, te.path, cacheDir));
      // The VAE decoder is opened before the UNet: the first UNet may be a ToMe graph the
      // first run needs (`options.first`), made from the exported one on the way.
      events?.onLoad?.('vae_decoder', 1, total);
      const mode = options.attention ?? 'auto';
      const guessFp16 = textEncoder.io.lastHiddenState.type === 'float16';
      const provider = textModel.provider;
      const vaeGraph = await resolveGraph({
        file: folder.paths.vaeDecoder,
        what: 'vae decoder',
        cacheDir,
        provider,
        attention: resolveAttention(mode, provider, guessFp16).attention,
        conv: runtime.conv,
        // loaded plainly: its optimization is quick, and its cached graph's first run was slower
        optimizedCache: false,
      });
      const vaeModel = await sessions.open(vaeGraph.file, 'vae decoder', { optimizedCache: vaeGraph.optimizedCache });
      opened.push(vaeModel);
      const vae = new VaeDecoder(vaeModel.session, vaeDecoderIO(vaeModel.info, 'vae decoder'), folder.vaeScalingFactor);
      const pipe = new StableDiffusionPipeline(folder, runtime, sessions, textEncoder, textModel, vaeModel, vae, events, useOptimized, guessFp16);
      pipe.embeddings = embeddings;
      pipe.placed = te.placed;
      pipe.textFile = te.path;
      if (folder.family === 'sdxl') {
        // text_encoder_2 with the embeddings' clip_g rows (the base file when there are none)
        const te2 = await getLoraVariant(folder.paths.textEncoder2!, { cacheDir, target: 'text_encoder_2', loras: [], embeddings });
        for (const m of te2.skipped) events?.onNotice?.(`embedding ${m}`);
        const model2 = await sessions.open(te2.path, 'text encoder 2');
        opened.push(model2);
        pipe.setSdxlEncoders(model2, te.path, te.placed, te2.path, te2.placed);
      }
      events?.onLoad?.('unet', 2, total);
      const first = { tome: { ...DEFAULT_TOME }, width: 0, height: 0, ...options.first, attention: mode };
      try {
        await pipe.unetFor(first, undefined);
      } catch (err) {
        // the first run's ToMe graph is a hint: if it cannot be made or opened here, load opens
        // the exported one, and the run that needs ToMe meets (and reports) the problem itself
        if (!(first.tome.ratio > 0)) throw err;
        await pipe.unetFor({ ...first, tome: { ...DEFAULT_TOME } }, undefined);
      }
      events?.onLoad?.('done', total, total);
      return pipe;
    } catch (err) {
      await Promise.all(opened.map((s) => s.release().catch(() => {})));
      throw err;
    }
  }

  /** The execution provider the sessions run on ('cpu', 'cuda', …). */
  get provider(): string {
    return this.textModel.provider;
  }

  /** The exported UNet's I/O as its metadata reports it. */
  get unetIO(): UnetIO {
    if (!this.baseIO) throw new SdgenError('StableDiffusionPipeline: no UNet opened yet');
    return this.baseIO;
  }

  /** What the UNet session open now is (for tests and --verbose): variant and attention. */
  get openUnets(): { variant: 'original' | 'tome'; attention: ResolvedAttention }[] {
    const u = this.unet;
    return u ? [{ variant: u.graph.tome ? 'tome' : 'original', attention: u.graph.attention }] : [];
  }

  /** Per model, whether its session was loaded from onnxruntime's cached optimized graph. */
  get optimizedCacheHits(): { textEncoder: boolean; unet: boolean | null; tomeUnet: boolean | null; vaeDecoder: boolean } {
    const u = this.unet;
    return {
      textEncoder: this.textModel.fromOptimizedCache,
      unet: u && !u.graph.tome ? u.model.fromOptimizedCache : null,
      tomeUnet: u?.graph.tome ? u.model.fromOptimizedCache : null,
      vaeDecoder: this.vaeModel.fromOptimizedCache,
    };
  }

  private get cacheDir(): string {
    return this.runtime.cacheDir ?? defaultCacheDir();
  }

  /**
   * The UNet a run uses: the graph resolveGraph chooses for the run's ToMe settings (when ToMe
   * applies at its size) and attention mode. One UNet session is open at a time: a run that
   * needs another graph releases the open one before opening its own (peak memory: each
   * holds a full copy of the weights). Notices say why requested ToMe or fused attention is
   * not used (the latter silently for 'auto', unless its rewrite failed).
   */
  private async unetFor(
    params: Pick<GenerationParams, 'tome' | 'width' | 'height' | 'attention' | 'loras'>,
    events: ProgressEvents | undefined,
  ): Promise<UnetModel> {
    const isFp16 = this.baseIO ? this.baseIO.sample.type === 'float16' : this.guessFp16;
    const resolved = resolveAttention(params.attention, this.provider, isFp16);
    let tome: ToMeOptions | null = null;
    if (params.tome.ratio > 0) {
      validateToMeOptions(params.tome);
      const decision = tomeApplies(params.tome, params.width, params.height);
      if (decision.apply) tome = params.tome;
      else events?.onNotice?.(`ToMe skipped: ${decision.reason ?? 'not applicable'}`);
    }
    const loras = params.loras ?? [];
    const key = JSON.stringify([tome ? tomeGraphKey(tome) : null, resolved.attention, loraSignature(loras, (l) => scaleFor(l, 'unet'))]);
    if (this.unet?.key !== key) {
      await this.releaseUnet();
      this.unet = await this.openUnet(tome, resolved.attention, key, events, loras);
    }
    const u = this.unet;
    if (tome && !u.graph.tome) events?.onNotice?.(`ToMe skipped: ${u.graph.tomeSkipped ?? 'not applicable'}`);
    const fallback = resolved.reason ?? u.graph.attentionFallback?.reason;
    if (params.attention === 'fused' && u.graph.attention !== 'fused') {
      events?.onNotice?.(`fused attention not used: ${fallback ?? 'not applicable'}; using standard attention`);
    } else if (u.graph.attentionFallback?.failed) {
      events?.onNotice?.(`${u.graph.attentionFallback.reason}; using standard attention`);
    }
    return u;
  }

  /** Opens the UNet graph for these settings (resolveGraph) and checks its I/O. */
  private async openUnet(tome: ToMeOptions | null, attention: ResolvedAttention, key: string, events: ProgressEvents | undefined, loras: readonly LoraRef[] = []): Promise<UnetModel> {
    const what = tome ? 'ToMe unet' : 'unet';
    const graph = await resolveGraph({
      ...(loras.length > 0 ? { lora: { target: 'unet' as const, loras } } : {}),
      file: this.folder.paths.unet,
      what,
      cacheDir: this.cacheDir,
      provider: this.textModel.provider,
      tome,
      attention,
      conv: this.runtime.conv,
      optimizedCache: this.useOptimized,
      onProgress: (stage, d, total) => (events ?? this.loadEvents)?.onLoad?.(`tome: ${stage}`, d, total),
    });
    for (const r of graph.lora?.reports ?? []) {
      if (r.unmatched.length > 0) events?.onNotice?.(`LoRA ${r.name}: ${r.unmatched.length} of its ${r.total} UNet modules match nothing in this model (e.g. ${r.unmatched[0]})`);
    }
    if (this.runtime.verbose && graph.tome) {
      // where ToMe merges: the effective max downsample ('auto' resolved) and the merging blocks
      const t = graph.tome;
      const md = tome?.maxDownsample === 'auto' ? `auto = ${t.maxDownsample}` : String(t.maxDownsample);
      (events ?? this.loadEvents)?.onNotice?.(`ToMe: max downsample ${md}, merging in ${t.blocks.length} blocks: ${t.blocks.map((b) => `${b.name || `block ${b.index}`} (level ${b.level ?? '?'})`).join(', ')}`);
    }
    if (graph.winogradFailed !== undefined && this.runtime.conv === 'winograd') {
      events?.onNotice?.(`${what}: Winograd convolutions not used (${graph.winogradFailed})`);
    }
    const model = await this.sessions.open(graph.file, graph.attention === 'fused' ? `${what} (fused attention)` : what, { optimizedCache: graph.optimizedCache });
    try {
      const io = unetIO(model.info, what);
      if (!graph.tome && io.tomeRand.length > 0) throw new SdgenError(`unet: ${this.folder.paths.unet} is a ToMe-patched graph; use the original export`);
      this.baseIO ??= { ...io, tomeRand: [] };
      return { model, io, key, graph };
    } catch (err) {
      await model.release();
      throw err;
    }
  }

  /**
   * Makes the open text encoder the one for these LoRAs (their text-encoder modules merged, and
   * the embeddings' rows): from the LoRA variant cache; the previous session is released.
   */
  private async textEncoderFor(loras: readonly LoraRef[], events: ProgressEvents | undefined): Promise<void> {
    const key = loraSignature(loras, (l) => scaleFor(l, 'text_encoder'));
    if (key === this.textKey) return;
    const v = await getLoraVariant(this.folder.paths.textEncoder, { cacheDir: this.cacheDir, target: 'text_encoder', loras, embeddings: this.embeddings });
    for (const r of v.reports) {
      if (r.unmatched.length > 0) events?.onNotice?.(`LoRA ${r.name}: ${r.unmatched.length} of its ${r.total} text encoder modules match nothing in this model (e.g. ${r.unmatched[0]})`);
    }
    // SDXL: text_encoder_2's variant too (its LoRA modules, the embeddings' clip_g rows)
    const v2 = this.sdxl ? await getLoraVariant(this.folder.paths.textEncoder2!, { cacheDir: this.cacheDir, target: 'text_encoder_2', loras, embeddings: this.embeddings }) : null;
    for (const r of v2?.reports ?? []) {
      if (r.unmatched.length > 0) events?.onNotice?.(`LoRA ${r.name}: ${r.unmatched.length} of its ${r.total} second text encoder modules match nothing in this model (e.g. ${r.unmatched[0]})`);
    }
    const sdxlChanged = this.sdxl !== null && v2 !== null && (v.path !== this.textFile || v2.path !== this.sdxl.file2);
    if (v.path !== this.textFile) {
      const model = await this.sessions.open(v.path, v.changed > 0 ? 'text encoder (LoRA)' : 'text encoder');
      const lnorm = await findFinalLayerNorm(v.path, model.info).catch(() => null);
      const encoder = new TextEncoder(model, withEmbeddings(this.folder.tokenizer, v.placed), lnorm, clipSkipSource(this.sessions, v.path, this.cacheDir));
      const [oldModel, oldEncoder] = [this.textModel, this.textEncoder];
      this.textModel = model;
      this.textEncoder = encoder;
      this.textFile = v.path;
      await Promise.all([oldModel.release().catch(() => {}), oldEncoder.release().catch(() => {})]);
    }
    if (sdxlChanged && this.sdxl && v2) {
      const old = this.sdxl;
      const model2 = v2.path === old.file2 ? old.model2 : await this.sessions.open(v2.path, v2.changed > 0 ? 'text encoder 2 (LoRA)' : 'text encoder 2');
      this.setSdxlEncoders(model2, v.path, v.placed, v2.path, v2.placed);
      await Promise.all([...(model2 !== old.model2 ? [old.model2.release().catch(() => {})] : []), old.conditioner.release().catch(() => {})]);
    }
    this.textKey = key;
  }

  /**
   * SDXL: the conditioning stage over the open text encoder (file `file1`) and `model2`, each
   * tokenizer mapping the embeddings placed in both encoders (placedInBoth) to their rows.
   */
  private setSdxlEncoders(model2: ModelSession, file1: string, placed1: readonly PlacedEmbedding[], file2: string, placed2: readonly PlacedEmbedding[]): void {
    const both = placedInBoth(placed1, placed2);
    const conditioner = new SdxlConditioner(
      { model: this.textModel, tokenizer: withEmbeddings(this.folder.tokenizer, both.first), hiddenStatesSource: clipSkipSource(this.sessions, file1, this.cacheDir) },
      { model: model2, tokenizer: withEmbeddings(this.folder.tokenizer2!, both.second), hiddenStatesSource: clipSkipSource(this.sessions, file2, this.cacheDir) },
      this.folder.forceZerosForEmptyPrompt,
    );
    this.sdxl = { model2, conditioner, file2 };
    this.placed = both.first;
  }

  /** Shape of the k-th tome_rand input of a ToMe graph at latent lh × lw. */
  private randShape(unet: UnetModel, k: number, lh: number, lw: number, tome: ToMeOptions): number[] {
    const name = unet.io.tomeRand[k]!.name;
    const block = unet.graph.tome?.blocks.find((b) => b.randInput === name);
    const shape = block ? tomeRandShape(block, lh, lw, tome) : null;
    if (!shape) throw new SdgenError(`ToMe unet: cannot size input ${name} (block level unknown)`);
    return shape;
  }

  /** Releases the UNet session, if open (the next run that needs it reopens it). */
  private async releaseUnet(): Promise<void> {
    const u = this.unet;
    if (!u) return;
    this.unet = null;
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
      if (params.hires) yield* this.hires(params, events, signal, options);
      else yield* this.run(params, events, signal, options);
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
    const seed0 = params.seed === -1 ? randomSeed() : params.seed;
    const schedulerName = resolveSchedulerName(params.scheduler || folder.defaultScheduler);
    const scale = folder.vaeScaleFactor;
    const lh = params.height / scale;
    const lw = params.width / scale;
    // img2img / inpainting (params.init, params.mask), or hires pass 2 (options.init)
    const init = options.init ?? (await this.initSource(params));

    // LoRAs: the options', then the prompt's <lora:…> tags (removed from the text it encodes)
    const lora = await resolveRunLoras(params.prompt, params.loras, params.loraDir);
    await this.textEncoderFor(lora.loras, ev);
    const unet = await this.unetFor({ ...params, loras: lora.loras }, ev);
    const tome = unet.graph.tome !== null;
    // the ToMe options as applied: max downsample 'auto' resolved from the graph's blocks
    const tomeUsed = unet.graph.tome ? { ...params.tome, maxDownsample: unet.graph.tome.maxDownsample } : params.tome;
    const io = unet.io;
    const lcm = io.timestepCond !== null;
    const guided = !lcm && params.cfg > 1;

    // Text embeddings, once per distinct prompt in this call.
    const t0 = performance.now();
    const cache = new Map<string, PromptEmbedding>();
    const { cond, uncond, extra } = this.sdxl
      ? await this.sdxlConditioning(this.sdxl.conditioner, lora.prompt, params, guided, io, events, ev)
      : {
          ...(await this.textEncoder.encodePair(
            lora.prompt,
            params.negativePrompt,
            guided,
            { emphasis: params.emphasis, clipSkip: params.clipSkip, longPrompt: params.longPrompt ?? 'chunk' },
            cache,
          )),
          extra: [] as ExtraUnetInput[],
        };
    const textMs = performance.now() - t0;
    events?.onPrompts?.(cond, uncond);
    const usedTi = this.placed.length > 0 ? usedEmbeddings(this.folder.tokenizer, this.placed, this.embeddings, [lora.prompt, ...(guided ? [params.negativePrompt] : [])]) : [];

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
      const prepared = init
        ? await prepareBatch(init, init.image || init.images ? await this.encoderStage(ev, params) : null, schedulers, generators, params.steps, seeds.map((_, j) => first + j), unetChannels(io))
        : null;
      if (bi === 0) events?.onTimesteps?.(Array.from((prepared ? prepared.schedulers : schedulers)[0]!.timesteps, Number));
      const latents = prepared ? prepared.latents : generators.map((g, j) => initialLatents(g, schedulers[j]!, lh, lw));
      events?.onInitialLatents?.(seeds, latents.map((x) => x.slice()));
      let tomeRand: TomeRandFeed | null = null;
      if (randOn) {
        tomeRand = {
          inputs: io.tomeRand.map((r, k) => ({ name: r.name, type: r.type, shape: this.randShape(unet, k, lh, lw, tomeUsed) })),
          high: params.tome.sx * params.tome.sy,
          generators: seeds.map((s) => new TorchGenerator(s)),
        };
      }
      const { unetMs } = await denoiseBatch({
        session: unet.model.session,
        io,
        schedulers: prepared ? prepared.schedulers : schedulers,
        extraChannels: prepared?.extraChannels ?? null,
        generators,
        latents,
        latentHeight: lh,
        latentWidth: lw,
        cond,
        uncond,
        cfg: params.cfg,
        timestepCond,
        tomeRand,
        extraInputs: extra,
        signal,
        onStep: (step, total) => ev?.onStep?.(step, total, bi + 1, batches, options.phase),
      });
      throwIfAborted(signal);
      if (options.last && bi === batches - 1) {
        await this.releaseUnet();
      }
      events?.onFinalLatents?.(seeds, latents.map((x) => x.slice()));
      if (options.latentsOut) {
        for (let j = 0; j < count; j++) options.latentsOut(first + j, latents[j]!);
        continue;
      }
      const decoded: { rgb: Uint8Array; width: number; height: number; ms: number }[] = [];
      for (let j = 0; j < count; j++) {
        const v0 = performance.now();
        const img = await this.decode(latents[j]!, lh, lw, params);
        // A1111's overlay with a blurred mask: the init picture outside the mask, faded at its edge
        if (init?.mask && init.mask.blur > 0 && init.image) img.rgb = overlayInit(img.rgb, init.image.rgb, init.mask.gray);
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
          // the option LoRAs as resolved (with their hashes); prompt tags stay in the prompt
          params: {
            ...params, tome: { ...tomeUsed }, seed: seeds[j]!, scheduler: schedulerName, ...(params.loras ? { loras: lora.loras.filter((l) => l.from === 'option') } : {}),
            ...(params.init && init?.sha256 ? { init: { ...params.init, sha256: init.sha256 } } : {}),
            ...(params.mask && init?.maskSha256 ? { mask: { ...params.mask, sha256: init.maskSha256 } } : {}),
          },
          tomeApplied: tome,
          modelName: folder.name,
          ...(lora.loras.length > 0 ? { loras: lora.loras } : {}),
          ...(usedTi.length > 0 ? { embeddings: usedTi } : {}),
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

  /**
   * The init picture and mask of an img2img / inpainting job (null for txt2img), checked: a mask
   * needs an init picture, a strength in (0, 1], a 9-channel (inpainting) UNet a mask.
   */
  private async initSource(params: GenerationParams): Promise<InitSource | null> {
    if (params.mask && !params.init) throw new UsageError('--mask needs --init-image (the picture to inpaint)');
    if (!params.init) return null;
    validateStrength(params.init.strength);
    if (params.mask && (!Number.isFinite(params.mask.blur) || params.mask.blur < 0)) throw new UsageError(`mask blur must be ≥ 0 (got ${params.mask.blur})`);
    if (!this.folder.paths.vaeEncoder) throw new SdgenError(`${this.folder.name} has no vae_encoder/: img2img and inpainting need the VAE encoder`);
    // The batch runner asks for a job one batch at a time: its picture and mask are read, decoded
    // and hashed once, and again only when a file changes (size, mtime).
    const files = await Promise.all([params.init.path, ...(params.mask ? [params.mask.path] : [])].map((p) => stat(p).then((s) => `${s.size}:${s.mtimeMs}`, () => 'missing')));
    const key = JSON.stringify([params.init.path, params.mask ?? null, params.width, params.height, files]);
    if (this.loadedInit?.key !== key) {
      this.loadedInit = { key, source: await loadInitSource(params.init, params.mask ?? null, params.width, params.height, this.folder.vaeScaleFactor) };
    }
    return { ...this.loadedInit.source, strength: params.init.strength };
  }

  /**
   * The VAE encoder stage, opened at its first use: the folder's encoder as it is when it outputs
   * latent_parameters, else rewritten to (src/optimize/encoder-params.ts); an export that
   * samples inside its graph in another form is used as it is, with one notice.
   */
  private async encoderStage(ev: ProgressEvents | undefined, params: GenerationParams): Promise<VaeEncoder> {
    const stage = this.encoder?.stage ?? (await this.openEncoder(ev));
    // tiles for a picture whose untiled pass would not fit (src/pipeline/tiling.ts)
    const scale = this.folder.vaeScaleFactor;
    stage.tiling = shouldTile(params.vaeTiling ?? 'auto', params.width * params.height) ? encodeTileSpec(this.vaeSampleSize, scale) : null;
    return stage;
  }

  private async openEncoder(ev: ProgressEvents | undefined): Promise<VaeEncoder> {
    const file = this.folder.paths.vaeEncoder;
    if (!file) throw new SdgenError(`${this.folder.name} has no vae_encoder/: img2img, inpainting and pixel-space hires need the VAE encoder`);
    const r = await getEncoderParamsModel(file, this.cacheDir);
    if (!r.params) ev?.onNotice?.(`vae encoder: ${r.reason}; its samples are drawn inside the graph, so images are not reproducible by seed`);
    const model = await this.sessions.open(r.path, 'vae encoder', { optimizedCache: false });
    try {
      const stage = new VaeEncoder(model.session, vaeEncoderIO(model.info), this.folder.vaeScalingFactor, this.folder.vaeScaleFactor);
      this.encoder = { model, stage };
      return stage;
    } catch (err) {
      await model.release();
      throw err;
    }
  }

  /** The VAE's sample_size (its tiles' size in pixels; diffusers' default 512). */
  private get vaeSampleSize(): number {
    const s = this.folder.configs.vaeDecoder?.['sample_size'];
    const v = Array.isArray(s) ? Number(s[0]) : Number(s);
    return Number.isFinite(v) && v > 0 ? v : 512;
  }

  /** Decode one image, tile by tile when params.vaeTiling (default 'auto') says so (src/pipeline/tiling.ts). */
  private async decode(latents: Float32Array, lh: number, lw: number, params: GenerationParams): Promise<{ rgb: Uint8Array; width: number; height: number }> {
    const scale = this.folder.vaeScaleFactor;
    if (shouldTile(params.vaeTiling ?? 'auto', lh * lw * scale * scale)) {
      return new TiledVaeDecoder(this.vaeModel.session, this.vae.io, this.folder.vaeScalingFactor, decodeTileSpec(this.vaeSampleSize, scale)).decode(latents, lh, lw);
    }
    return this.vae.decode(latents, lh, lw);
  }

  /**
   * Hires fix (src/pipeline/hires.ts): pass 1 (txt2img at the job's size) for every image of
   * the call, its latents kept; then pass 2 (img2img at the hires size, fresh generators
   * seeded seed + i) from the upscaled latents, or, with a pixel-space upscaler, from pass 1's
   * decoded pictures resized. Each pass chooses its UNet (ToMe by its own size and settings),
   * so the UNet session switches at most once per call.
   */
  private async *hires(
    params: GenerationParams,
    events: (ProgressEvents & GenerationInspector) | undefined,
    signal: AbortSignal | undefined,
    options: GenerateOptions,
  ): AsyncGenerator<GeneratedImage> {
    const upscaler = validateHires(params.hires!);
    if (params.init || params.mask) throw new UsageError('hires fix is a txt2img mode; it does not take --init-image or --mask');
    const seed0 = params.seed === -1 ? randomSeed() : params.seed;
    const pass1 = new Map<number, Float32Array>();
    const p1 = firstPassParams(params, seed0);
    for await (const _ of this.run(p1, events, signal, { ...options, last: false, phase: { pass: 1, passes: 2, width: p1.width, height: p1.height }, latentsOut: (i, l) => pass1.set(i, l.slice()) })) {
      // pass 1 yields nothing (its latents go to latentsOut)
    }
    const p2 = secondPassParams(params, seed0);
    const scale = this.folder.vaeScaleFactor;
    const [lh1, lw1, lh2, lw2] = [params.height / scale, params.width / scale, p2.height / scale, p2.width / scale];
    const strength = params.hires!.strength;
    let init: InitSource;
    if (upscaler.kind === 'latent') {
      const mode = upscaler.mode;
      init = { image: null, latents: (i) => interpolate(pass1.get(i)!, [1, 4, lh1, lw1], lh2, lw2, mode), strength, mask: null };
    } else {
      const pictures = new Map<number, RgbImage>();
      for (const [i, l] of pass1) pictures.set(i, resizeRgb(await this.decode(l, lh1, lw1, p1), p2.width, p2.height, upscaler.name));
      init = { image: null, images: (i) => pictures.get(i)!, latents: null, strength, mask: null };
    }
    for await (const img of this.run(p2, events, signal, { ...options, init, phase: { pass: 2, passes: 2, width: p2.width, height: p2.height } })) {
      yield { ...img, params: { ...params, seed: img.seed, scheduler: firstPassScheduler(params, this.folder.defaultScheduler), tome: { ...params.tome }, hires: { ...params.hires!, tome: img.params.tome } } };
    }
  }

  /**
   * SDXL's conditioning stage (src/pipeline/sdxl-conditioning.ts): the prompt embeddings of both
   * encoders, and the UNet's `text_embeds` (pooled) and `time_ids` inputs per row.
   */
  private async sdxlConditioning(
    conditioner: SdxlConditioner,
    prompt: string,
    params: GenerationParams,
    guided: boolean,
    io: UnetIO,
    inspector: GenerationInspector | undefined,
    ev: ProgressEvents | undefined,
  ): Promise<{ cond: PromptEmbedding; uncond: PromptEmbedding | null; extra: ExtraUnetInput[] }> {
    const te = io.textEmbeds;
    const ti = io.timeIds;
    if (!te || !ti) throw new SdgenError(`unet: ${this.folder.paths.unet} has no "text_embeds" and "time_ids" inputs; an SDXL folder needs an SDXL UNet`);
    if (params.clipSkip > 1) ev?.onNotice?.(`clip skip ${params.clipSkip} not applied: SDXL reads the penultimate layer of both text encoders (as A1111 does)`);
    const c = await conditioner.encode(prompt, params.negativePrompt, guided, params.width, params.height, {
      emphasis: params.emphasis,
      longPrompt: params.longPrompt ?? 'chunk',
      encodeEmptyNegative: params.encodeEmptyNegative ?? false,
    }, {
      ...(params.originalSize ? { originalSize: params.originalSize } : {}),
      ...(params.cropTopLeft ? { cropTopLeft: params.cropTopLeft } : {}),
      ...(params.targetSize ? { targetSize: params.targetSize } : {}),
    });
    inspector?.onSdxlConditioning?.(c);
    if (te.dim !== null && te.dim !== c.cond.pooled.length) {
      throw new SdgenError(`unet: input "${te.name}" takes width ${te.dim}, text encoder 2 gives ${c.cond.pooled.length}`);
    }
    if (ti.dim !== null && ti.dim !== c.timeIds.length) throw new SdgenError(`unet: input "${ti.name}" takes width ${ti.dim}; SDXL time ids have ${c.timeIds.length}`);
    return {
      cond: c.cond.embedding,
      uncond: c.uncond?.embedding ?? null,
      extra: [
        { name: te.name, type: te.type, cond: c.cond.pooled, uncond: c.uncond?.pooled ?? null },
        { name: ti.name, type: ti.type, cond: c.timeIds, uncond: c.uncond ? c.timeIds : null },
      ],
    };
  }

  /** Release every session. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const all = [this.textModel, this.vaeModel, ...(this.unet ? [this.unet.model] : []), ...(this.sdxl ? [this.sdxl.model2] : []), ...(this.encoder ? [this.encoder.model] : [])];
    this.unet = null;
    await Promise.all([
      ...all.map((m) => m.release().catch(() => {})),
      this.textEncoder.release().catch(() => {}),
      ...(this.sdxl ? [this.sdxl.conditioner.release().catch(() => {})] : []),
    ]);
  }
}

/** The UNet's sample channels: 4, or 9 for an inpainting UNet (latents, mask, masked-picture latents). */
function unetChannels(io: UnetIO): 4 | 9 {
  const c = io.sample.dims?.[1];
  if (c === 9) return 9;
  if (c === undefined || c === null || c === 4) return 4;
  throw new SdgenError(`unet: input "${io.sample.name}" has ${c} channels; expected 4, or 9 for an inpainting UNet`);
}

/** The sampler name pass 1 of a hires job ran (canonical). */
function firstPassScheduler(params: GenerationParams, folderDefault: string): string {
  return resolveSchedulerName(params.scheduler || folderDefault);
}
