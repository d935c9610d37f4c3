/**
 * The job list of a run: one job per prompt (command line or prompt-file line) with its
 * complete GenerationParams and resolved seed, and the images it will write with their file
 * names. Pure: model defaults, scheduler names, ToMe checks and random seeds come in through
 * JobContext, so the same code serves `--dry-run` (no model loaded) and real runs.
 *
 * Seeds: a job with `--seed -1` draws one random seed for the job when the plan is built; image i
 * of the job (i = iteration·batchSize + position) gets seed + i. `--resume` reuses the seeds the
 * interrupted run recorded in the output folder (.sdgen-resume.json), so it plans the same images.
 */
import { createHash } from 'node:crypto';
import { UsageError } from '../errors.js';
import type { SdgenOptions } from '../config/options.js';
import type { GenerationParams } from '../pipeline/types.js';
import { tomeApplies, tomeFromFlat, validateToMeOptions } from '../tome/options.js';
import type { PromptFileError } from './prompt-file.js';
import { parseNameTemplate, renderName, uniqueName, type NameValues } from './output.js';

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

export function whereOf(source: JobSpec['source']): string {
  return source ? `${source.file}:${source.line}: ` : '';
}

/** One job from resolved options; throws a UsageError (without location) on a bad value. */
export function buildJob(spec: JobSpec, index: number, ctx: JobContext, seed?: number): Job {
  const o = spec.options;
  const defaults = ctx.modelDefaults(o.model);
  const width = o.width ?? defaults?.width ?? 512;
  const height = o.height ?? defaults?.height ?? 512;
  const scheduler = o.scheduler !== undefined && o.scheduler !== '' ? ctx.resolveScheduler(o.scheduler) : (defaults?.scheduler ?? '');
  const tome = tomeFromFlat(o);
  validateToMeOptions(tome);
  const resolvedSeed = o.seed === -1 ? (seed ?? ctx.randomSeed()) : o.seed;
  const params: GenerationParams = {
    prompt: spec.prompt,
    negativePrompt: o.negativePrompt,
    width,
    height,
    steps: o.steps,
    cfg: o.cfg,
    seed: resolvedSeed,
    scheduler,
    batchSize: o.batchSize,
    nIter: o.nIter,
    eta: o.eta,
    clipSkip: o.clipSkip,
    emphasis: o.emphasis,
    tome,
    attention: o.attention,
  };
  const decision = tome.ratio > 0 ? tomeApplies(tome, width, height) : { apply: false, reason: 'ratio 0' };
  return {
    index,
    source: spec.source,
    model: o.model,
    modelName: defaults?.name,
    params,
    requestedSeed: o.seed,
    tomeOn: decision.apply,
    tomeReason: decision.reason,
    imageCount: o.batchSize * o.nIter,
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
    hash.update(JSON.stringify([job.model ?? null, { ...job.params, seed: job.requestedSeed }]) + '\n');
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

/** Every image of the plan with a unique, safe file name. */
export function planImages(jobs: readonly Job[], opts: NamePlanOptions): PlannedImage[] {
  const parts = parseNameTemplate(opts.template);
  const now = opts.now ?? new Date();
  const date = `${now.getFullYear()}-${pad2(now.getMonth() + 1)}-${pad2(now.getDate())}`;
  const time = `${pad2(now.getHours())}${pad2(now.getMinutes())}${pad2(now.getSeconds())}`;
  const used = new Set<string>();
  const lower = (s: string) => s.toLowerCase(); // case-insensitive file systems
  const out: PlannedImage[] = [];
  for (const job of jobs) {
    for (let i = 0; i < job.imageCount; i++) {
      const ordinal = out.length;
      const seed = job.params.seed + i;
      const values: NameValues = {
        index: opts.startIndex + ordinal,
        seed,
        prompt: job.params.prompt,
        negative: job.params.negativePrompt,
        steps: job.params.steps,
        cfg: job.params.cfg,
        sampler: job.params.scheduler || 'default',
        width: job.params.width,
        height: job.params.height,
        job: job.index + 1,
        model: job.modelName ?? '',
        date,
        time,
      };
      const file = uniqueName(renderName(parts, values), (n) => used.has(lower(n)) || (!opts.overwrite && opts.exists(n)));
      used.add(lower(file));
      out.push({ job: job.index, image: i, ordinal, seed, file });
    }
  }
  return out;
}
