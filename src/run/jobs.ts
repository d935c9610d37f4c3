/**
 * The job list of a run: one job per prompt (command line or prompt-file line) with its
 * complete GenerationParams and resolved seed, and the images it will write with their file
 * names. Pure: model defaults, scheduler names, ToMe checks and random seeds come in through
 * JobContext, so the same code serves `--dry-run` (no model loaded) and real runs.
 *
 * The list is built once per run: values are checked and random seeds drawn before any model
 * folder is read; a model folder's defaults then fill in only what they can (width, height,
 * scheduler — and the ToMe decision that follows from the size), see withModelDefaults.
 *
 * Seeds: a job with `--seed -1` draws one random seed for the job when the plan is built; image i
 * of the job (i = iteration·batchSize + position) gets imageSeed(params, i) = seed + i. `--resume`
 * reuses the seeds the interrupted run recorded in its run state, so it plans the same images.
 */
import { createHash } from 'node:crypto';
import { UsageError } from '../errors.js';
import { parseCropOption, parseSizeOption, type SdgenOptions } from '../config/options.js';
import type { GenerationParams } from '../pipeline/types.js';
import { imageSeed } from '../pipeline/params.js';
import { modeParams, type ModeOptions } from './modes.js';
import { loraParams } from '../lora/options.js';
import { validateGenerationParams } from '../pipeline/params.js';
import { tomeApplies, tomeFromFlat, validateToMeOptions } from '../tome/options.js';
import type { PromptFileError } from './prompt-file.js';
import { parseNameTemplate, renderName, suffixedName, uniqueName, type NameValues } from './output.js';

export interface ModelDefaults {
  /** folder name (A1111 "Model") */
  name: string;
  width: number;
  height: number;
  /** canonical scheduler name of the folder's scheduler_config.json */
  scheduler: string;
}

export interface JobContext {
  /** defaults of a model folder (preloaded); undefined when unknown (dry run without model) */
  modelDefaults(model: string | undefined): ModelDefaults | undefined;
  /** canonical name of an sdgen or A1111 sampler name; throws a UsageError when unknown */
  resolveScheduler(name: string): string;
  randomSeed(): number;
}

export interface JobSpec {
  prompt: string;
  options: SdgenOptions;
  source?: { file: string; line: number };
}

export interface Job {
  /** 0-based position in the plan */
  index: number;
  source?: { file: string; line: number };
  model?: string;
  modelName?: string;
  /** seed resolved (never -1) */
  params: GenerationParams;
  /** seed as requested (-1 = random) */
  requestedSeed: number;
  tomeOn: boolean;
  tomeReason?: string;
  /** batchSize × nIter */
  imageCount: number;
  /** what the job asked for itself; a model folder's defaults fill in the rest */
  requested: { width?: number; height?: number; scheduler?: string };
  /** the job's img2img / inpainting / hires options (modeParams turns them into params once its size is known) */
  modeOptions: ModeOptions;
}

export interface PlannedImage {
  job: number;
  /** index of the image within its job */
  image: number;
  /** 0-based position among all planned images */
  ordinal: number;
  seed: number;
  file: string;
}

/** One job from resolved options; throws a UsageError (without location) on a bad value. */
export function buildJob(spec: JobSpec, index: number, ctx: JobContext, seed?: number): Job {
  const o = spec.options;
  const scheduler = o.scheduler !== undefined && o.scheduler !== '' ? ctx.resolveScheduler(o.scheduler) : undefined;
  const tome = tomeFromFlat(o);
  validateToMeOptions(tome);
  const resolvedSeed = o.seed === -1 ? (seed ?? ctx.randomSeed()) : o.seed;
  const params: GenerationParams = {
    prompt: spec.prompt,
    negativePrompt: o.negativePrompt,
    width: 0,
    height: 0,
    steps: o.steps,
    cfg: o.cfg,
    seed: resolvedSeed,
    scheduler: '',
    batchSize: o.batchSize,
    nIter: o.nIter,
    eta: o.eta,
    clipSkip: o.clipSkip,
    emphasis: o.emphasis,
    tome,
    attention: o.attention,
    // long prompts (every family) and SDXL's conditioning, when asked for
    ...(o.longPrompt !== undefined ? { longPrompt: o.longPrompt } : {}),
    ...(o.originalSize !== undefined ? { originalSize: parseSizeOption(o.originalSize) } : {}),
    ...(o.cropTopLeft !== undefined ? { cropTopLeft: parseCropOption(o.cropTopLeft) } : {}),
    ...(o.targetSize !== undefined ? { targetSize: parseSizeOption(o.targetSize) } : {}),
    ...(o.encodeEmptyNegative ? { encodeEmptyNegative: true } : {}),
    // LoRAs of --lora and the directory <lora:NAME:SCALE> tags resolve in
    ...loraParams(o),
  };
  const job: Job = {
    index,
    source: spec.source,
    model: o.model,
    params,
    requestedSeed: o.seed,
    tomeOn: false,
    imageCount: o.batchSize * o.nIter,
    requested: { width: o.width, height: o.height, scheduler },
    modeOptions: o,
  };
  const built = withModelDefaults(job, ctx.modelDefaults(o.model));
  // the engine's own checks that need no model (prompt length, counts, sizes)
  validateGenerationParams(built.params);
  return built;
}

/**
 * The job with a model folder's defaults (or, without them, 512×512 and the scheduler left to
 * the pipeline) where the job did not ask for a value itself. Seeds and every other value stay.
 */
export function withModelDefaults(job: Job, defaults: ModelDefaults | undefined): Job {
  const width = job.requested.width ?? defaults?.width ?? 512;
  const height = job.requested.height ?? defaults?.height ?? 512;
  const scheduler = job.requested.scheduler ?? defaults?.scheduler ?? '';
  const tome = job.params.tome;
  const decision = tome.ratio > 0 ? tomeApplies(tome, width, height) : { apply: false, reason: 'ratio 0' };
  return {
    ...job,
    modelName: defaults?.name,
    params: { ...job.params, width, height, scheduler, ...modeParams(job.modeOptions, { width, height }, tome) },
    tomeOn: decision.apply,
    tomeReason: decision.reason,
  };
}

export interface BuiltJobs {
  jobs: Job[];
  errors: PromptFileError[];
  /** identifies the job list independently of random seeds (for --resume) */
  planHash: string;
}

/**
 * Builds every job; a spec that fails becomes an error with its file and line (or, without
 * a source, is thrown). `seeds[i]`, when given, is used for the i-th valid job with seed -1.
 */
export function buildJobs(specs: readonly JobSpec[], ctx: JobContext, seeds?: readonly number[]): BuiltJobs {
  const jobs: Job[] = [];
  const errors: PromptFileError[] = [];
  const hash = createHash('sha256');
  for (const spec of specs) {
    let job: Job;
    try {
      job = buildJob(spec, jobs.length, ctx, seeds?.[jobs.length]);
    } catch (e) {
      if (e instanceof UsageError && spec.source) {
        errors.push({ file: spec.source.file, line: spec.source.line, message: e.message });
        continue;
      }
      throw e;
    }
    jobs.push(job);
    // as requested: random seeds and a model folder's defaults do not change the plan's identity
    const r = job.requested;
    const asked = { ...job.params, seed: job.requestedSeed, width: r.width ?? null, height: r.height ?? null, scheduler: r.scheduler ?? null };
    hash.update(JSON.stringify([job.model ?? null, asked]) + '\n');
  }
  return { jobs, errors, planHash: hash.digest('hex').slice(0, 32) };
}

export interface NamePlanOptions {
  template: string;
  /** `{index}` of the first image */
  startIndex: number;
  /** whether a name is already taken on disk (ignored with overwrite) */
  exists: (file: string) => boolean;
  overwrite: boolean;
  /** run date for `{date}` / `{time}` */
  now?: Date;
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

/** Renders the file names of a plan from its template; also the names to fall back on at write time. */
export class ImageNamer {
  private readonly parts: ReturnType<typeof parseNameTemplate>;
  private readonly date: string;
  private readonly time: string;
  readonly usesIndex: boolean;
  constructor(template: string, readonly startIndex: number, now: Date = new Date()) {
    this.parts = parseNameTemplate(template);
    this.date = `${now.getFullYear()}-${pad2(now.getMonth() + 1)}-${pad2(now.getDate())}`;
    this.time = `${pad2(now.getHours())}${pad2(now.getMinutes())}${pad2(now.getSeconds())}`;
    this.usesIndex = this.parts.some((p) => 'field' in p && p.field === 'index');
  }
  /** The name of image `image` of `job` at plan position `ordinal`, its `{index}` moved on by `shift`. */
  render(job: Job, image: number, ordinal: number, shift = 0): string {
    const p = job.params;
    const values: NameValues = {
      index: this.startIndex + ordinal + shift,
      seed: imageSeed(p, image),
      prompt: p.prompt,
      negative: p.negativePrompt,
      steps: p.steps,
      cfg: p.cfg,
      sampler: p.scheduler || 'default',
      width: p.width,
      height: p.height,
      job: job.index + 1,
      model: job.modelName ?? '',
      date: this.date,
      time: this.time,
    };
    return renderName(this.parts, values);
  }
  /**
   * The k-th name to try (k = 1, 2, …) when the planned name of `img` is found taken at write
   * time: the next `{index}` for templates that have one, else the planned name with -2, -3, ….
   */
  fallback(job: Job, img: PlannedImage, k: number): string {
    return this.usesIndex ? this.render(job, img.image, img.ordinal, k) : suffixedName(img.file, k + 1);
  }
}

/** Every image of the plan with a unique, safe file name. */
export function planImages(jobs: readonly Job[], opts: NamePlanOptions): PlannedImage[] {
  const namer = new ImageNamer(opts.template, opts.startIndex, opts.now);
  const used = new Set<string>();
  const lower = (s: string) => s.toLowerCase(); // case-insensitive file systems
  const out: PlannedImage[] = [];
  for (const job of jobs) {
    for (let i = 0; i < job.imageCount; i++) {
      const ordinal = out.length;
      const file = uniqueName(namer.render(job, i, ordinal), (n) => used.has(lower(n)) || (!opts.overwrite && opts.exists(n)));
      used.add(lower(file));
      out.push({ job: job.index, image: i, ordinal, seed: imageSeed(job.params, i), file });
    }
  }
  return out;
}

/** The images of the plan with the names a run state recorded (in plan order). */
export function imagesFromNames(jobs: readonly Job[], names: ReadonlyMap<number, string>): PlannedImage[] {
  const out: PlannedImage[] = [];
  let ordinal = 0;
  for (const job of jobs) {
    for (let i = 0; i < job.imageCount; i++, ordinal++) {
      const file = names.get(ordinal);
      if (file !== undefined) out.push({ job: job.index, image: i, ordinal, seed: imageSeed(job.params, i), file });
    }
  }
  return out;
}
