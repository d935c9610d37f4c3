/**
 * The default command: generate images from a prompt, a prompt file or an image's metadata.
 * Loads onnxruntime (through the pipeline) and sharp only when images are actually generated.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { SdgenError, UsageError } from '../errors.js';
import { resolveOptions, type PartialOptions, type SdgenOptions } from '../config/options.js';
import { loadRc } from '../config/rc.js';
import { findPreset } from '../config/presets.js';
import { parsePromptFile, formatLineError, type PromptFileEntry } from '../run/prompt-file.js';
import {
  buildJobs, ImageNamer, imagesFromNames, planImages, withModelDefaults, type Job, type JobContext, type JobSpec, type ModelDefaults, type PlannedImage,
} from '../run/jobs.js';
import {
  createRunState, ensureDir, listDir, listRunStates, manifestPath, nextIndexFrom, parseNameTemplate, updateRunState, type RunState,
} from '../run/output.js';
import { finishedImages, runJobs, type PipelineLike, type RunSummary } from '../run/runner.js';
import { assignShards, imagesOfShard, parseShard, shardLabel, shardSizes, type Shard } from '../run/shard.js';
import { tomeApplies } from '../tome/options.js';
import { errorLine, escapeControls, makeChalk, makeReporter, safeJson, type UiOptions } from './ui.js';
import { inputFileNotes, optionsFromMetadata } from './from.js';
import type { RuntimeOptions } from '../models/session.js';
import type { ModelFolder } from '../models/folder.js';
import { cacheMaxBytes } from '../optimize/cache-prune.js';

export interface GenerateFlags extends UiOptions {
  preset?: string;
  config?: string;
  prompts?: string;
  strict: boolean;
  resume: boolean;
  dryRun: boolean;
  from?: string;
  /** `I/N` or `auto` */
  shard?: string;
  /** N for `--shard auto` where the environment does not give it */
  shardCount?: string;
}

export interface GenerateResult {
  exitCode: number;
  summary?: RunSummary;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function readPromptFile(file: string): Promise<{ text: string; name: string }> {
  if (file === '-') return { text: await readStdin(), name: '<stdin>' };
  try {
    return { text: readFileSync(file, 'utf8'), name: file };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(`--prompts: cannot read ${file} (${code === 'ENOENT' ? 'no such file' : (code ?? (e as Error).message)})`);
  }
}

/** Builds the JobContext with the real scheduler registry and ToMe checks (pure modules). */
async function makeContext(models: Map<string, ModelDefaults>): Promise<JobContext> {
  const sched = await import('../schedulers/index.js');
  const { randomInt } = await import('node:crypto');
  return {
    modelDefaults: (m) => (m === undefined ? undefined : models.get(m)),
    resolveScheduler: (name) => {
      try {
        return sched.resolveSchedulerName(name);
      } catch {
        throw new UsageError(`unknown sampler "${name}" (see: sdgen samplers)`);
      }
    },
    randomSeed: () => randomInt(0, 2 ** 32),
  };
}

/**
 * The defaults of each model folder the jobs use. A folder that cannot be read fails the jobs
 * that use it: a prompt-file line gets its own `FILE:LINE:` error (returned), a job from the
 * command line ends the run.
 */
async function loadModelDefaults(
  jobs: readonly Job[],
): Promise<{ defaults: Map<string, ModelDefaults>; folders: Map<string, ModelFolder>; failed: Map<string, string> }> {
  const defaults = new Map<string, ModelDefaults>();
  const folders = new Map<string, ModelFolder>();
  const failed = new Map<string, string>();
  const { loadModelFolder } = await import('../models/folder.js');
  for (const job of jobs) {
    const m = job.model;
    if (m === undefined || defaults.has(m) || failed.has(m)) continue;
    try {
      const f = await loadModelFolder(m);
      defaults.set(m, { name: f.name, width: f.defaultWidth, height: f.defaultHeight, scheduler: f.defaultScheduler });
      folders.set(m, f);
    } catch (e) {
      if (!(e instanceof SdgenError) || !job.source) throw e;
      failed.set(m, e.message);
    }
  }
  return { defaults, folders, failed };
}

/**
 * What a job's values mean for its files and its model, checked before any model loads: its init
 * picture and mask (readable PNG, JPEG or WebP), the engine's checks with the folder (size
 * multiples, CLIP token count, steps against the scheduler's training range) and a scheduler the
 * folder names but sdgen does not implement (unless the job names one).
 */
async function checkJob(job: Job, folder: ModelFolder | undefined): Promise<void> {
  // the pictures img2img and inpainting read: there and readable, before any model loads
  const pictures = [...(job.params.init ? [['init image', job.params.init.path]] : []), ...(job.params.mask ? [['mask', job.params.mask.path]] : [])];
  if (pictures.length > 0) {
    const { checkImageFile } = await import('../image/init-image.js');
    for (const [what, file] of pictures) await checkImageFile(file!, what!);
  }
  if (!folder) return;
  const [{ validateGenerationParams }, { resolveSchedulerName }] = await Promise.all([import('../pipeline/params.js'), import('../schedulers/index.js')]);
  validateGenerationParams(job.params, folder);
  if (job.params.scheduler) resolveSchedulerName(job.params.scheduler);
}

/** What identifies a plan across processes: the job list as requested and the name template. */
function planIdentity(jobsHash: string, template: string): string {
  return createHash('sha256').update(`${jobsHash}\n${template}`).digest('hex').slice(0, 32);
}

function runKey(planHash: string, shard: Shard | null): string {
  const base = planHash.slice(0, 12);
  return shard ? `${base}.shard-${shard.index}-of-${shard.count}` : base;
}

/**
 * The run `--resume` continues: among the runs recorded in the directory for this plan (and
 * this shard), the newest that is not finished, else the newest.
 */
function findOwnRun(outDir: string, states: readonly RunState[], planHash: string, shard: Shard | null): RunState | null {
  const mine = states.filter((s) =>
    s.planHash === planHash && (shard ? s.shard?.index === shard.index && s.shard.count === shard.count : s.shard === null));
  if (mine.length === 0) return null;
  for (const s of [...mine].reverse()) {
    const done = finishedImages(outDir, manifestPath(outDir, s.key));
    if (s.ordinals.some((o) => !done.has(o))) return s;
  }
  return mine.at(-1)!;
}

function tomeLabel(job: Job): string {
  if (job.params.tome.ratio <= 0) return 'ToMe off';
  return job.tomeOn ? `ToMe ${job.params.tome.ratio}` : `ToMe skipped (${job.tomeReason ?? 'below the size thresholds'})`;
}

/** The job's mode for the plan: img2img, inpaint or hires with its second pass ('' for txt2img). */
function modeLabel(j: Job): string {
  const p = j.params;
  if (p.mask && p.init) return `inpaint ${escapeControls(path.basename(p.init.path))} mask ${escapeControls(path.basename(p.mask.path))} strength ${p.init.strength}`;
  if (p.init) return `img2img ${escapeControls(path.basename(p.init.path))} strength ${p.init.strength}`;
  if (p.hires) {
    const h = p.hires;
    // the second pass decides ToMe by its own size (its own ratio with --hires-tome)
    const t2 = h.tome ?? p.tome;
    const tome = t2.ratio > 0 && tomeApplies(t2, h.width, h.height).apply ? ` ToMe ${t2.ratio}` : ' ToMe off';
    return `hires → ${h.width}x${h.height} ${h.upscaler} strength ${h.strength} ${h.steps || p.steps} steps${tome}`;
  }
  return '';
}

function oneLine(s: string, max: number): string {
  const flat = s.replace(/\s+/g, ' ');
  return flat.length > max ? flat.slice(0, max - 1) + '…' : flat;
}

/** The `--dry-run` plan. */
export function formatPlan(jobs: readonly Job[], images: readonly PlannedImage[], outDir: string, json: boolean): string {
  const byJob = new Map<number, PlannedImage[]>();
  for (const i of images) {
    let a = byJob.get(i.job);
    if (!a) byJob.set(i.job, (a = []));
    a.push(i);
  }
  const lines: string[] = [];
  if (!json) lines.push(`dry run: ${jobs.length} job${jobs.length === 1 ? '' : 's'}, ${images.length} image${images.length === 1 ? '' : 's'} → ${outDir}`);
  for (const j of jobs) {
    const imgs = byJob.get(j.index) ?? [];
    const p = j.params;
    if (json) {
      lines.push(
        safeJson({
          job: j.index + 1,
          source: j.source ? `${j.source.file}:${j.source.line}` : undefined,
          model: j.model,
          prompt: p.prompt,
          negativePrompt: p.negativePrompt,
          seed: p.seed,
          width: p.width,
          height: p.height,
          steps: p.steps,
          cfg: p.cfg,
          sampler: p.scheduler || 'model default',
          batchSize: p.batchSize,
          nIter: p.nIter,
          tome: j.tomeOn,
          tomeRatio: p.tome.ratio,
          mode: p.mask ? 'inpaint' : p.init ? 'img2img' : p.hires ? 'hires' : 'txt2img',
          ...(p.init ? { init: p.init } : {}),
          ...(p.mask ? { mask: p.mask } : {}),
          ...(p.hires ? { hires: p.hires } : {}),
          files: imgs.map((i) => i.file),
        }),
      );
    } else {
      const first = imgs[0]?.file ?? '';
      const more = imgs.length > 1 ? ` (+${imgs.length - 1})` : '';
      lines.push(
        `${String(j.index + 1).padStart(5)}  ${escapeControls(first)}${more}  seed ${p.seed}  ${p.width}x${p.height}  ${p.scheduler || 'model default'}  ` +
          `${p.steps} steps  cfg ${p.cfg}  ${tomeLabel(j)}  ${modeLabel(j) ? `${modeLabel(j)}  ` : ''}${safeJson(oneLine(p.prompt, 80))}`,
      );
    }
  }
  return lines.join('\n') + '\n';
}

export async function runGenerate(positional: string | undefined, explicit: PartialOptions, flags: GenerateFlags): Promise<GenerateResult> {
  const err = makeChalk(process.stderr, flags.color);
  const rc = await loadRc({ configFile: flags.config });
  const preset = flags.preset !== undefined ? findPreset(flags.preset, { rc }) : undefined;

  let fromPrompt: string | undefined;
  let fromOptions: PartialOptions | undefined;
  let fromModel: string | undefined;
  if (flags.from) {
    const { readImageMetadata } = await import('../metadata/metadata.js');
    const meta = await readImageMetadata(flags.from);
    const f = optionsFromMetadata(meta);
    fromPrompt = f.prompt;
    fromOptions = f.options;
    fromModel = f.modelName;
    if (meta.sdgen?.params && typeof meta.sdgen.params === 'object') {
      if (!flags.quiet) for (const n of await inputFileNotes(flags.from, meta.sdgen.params)) process.stderr.write(errorLine(`warning: ${n}`) + '\n');
      // the LoRAs the image was made with, where their files are still found (by path and hash)
      const { lorasFromRecord } = await import('../lora/from.js');
      const l = await lorasFromRecord(meta.sdgen.params);
      fromOptions = { ...fromOptions, ...l.options };
      if (!flags.quiet) for (const m of l.missing) process.stderr.write(errorLine(`--from: ${m}`) + '\n');
    }
  }

  // Precedence: defaults < rc < preset < --from < flags < prompt-file line.
  const layers = [rc.options, preset?.options, fromOptions, explicit];
  const base = resolveOptions(...layers);
  const basePrompt = positional ?? fromPrompt;

  let entries: PromptFileEntry[] = [];
  const specs: JobSpec[] = [];
  let lineErrors: string[] = [];
  if (flags.prompts !== undefined) {
    if (positional !== undefined) throw new UsageError('give either a prompt or --prompts FILE, not both');
    const { text, name } = await readPromptFile(flags.prompts);
    const parsed = parsePromptFile(text, name);
    entries = parsed.entries;
    lineErrors = parsed.errors.map(formatLineError);
    for (const e of entries) {
      const prompt = e.prompt ?? basePrompt;
      if (prompt === undefined) {
        lineErrors.push(formatLineError({ file: e.file, line: e.line, message: 'no prompt (add --prompt "…")' }));
        continue;
      }
      specs.push({ prompt, options: resolveOptions(...layers, e.options), source: { file: e.file, line: e.line } });
    }
  } else {
    if (basePrompt === undefined) throw new UsageError('no prompt: give one, or --prompts FILE, or --from IMAGE.png (see sdgen --help)');
    specs.push({ prompt: basePrompt, options: base });
  }

  let shard: Shard | null = null;
  if (flags.shard !== undefined) {
    let count: number | undefined;
    if (flags.shardCount !== undefined) {
      if (!/^\d+$/.test(flags.shardCount.trim())) throw new UsageError(`--shard-count: expected a positive integer, got ${JSON.stringify(flags.shardCount)}`);
      count = Number(flags.shardCount.trim());
    }
    shard = parseShard(flags.shard, process.env, count);
  } else if (flags.shardCount !== undefined) {
    throw new UsageError('--shard-count goes with --shard auto');
  }

  // The job list is built once. Every value is checked (and random seeds drawn) before any model
  // folder is read, so --strict can stop before touching a model; the folders' defaults then
  // fill in size and scheduler (withModelDefaults).
  const ctx = await makeContext(new Map());
  const built = buildJobs(specs, ctx);
  for (const e of built.errors) lineErrors.push(formatLineError(e));
  const report = () => {
    lineErrors.sort((a, b) => lineNo(a) - lineNo(b));
    for (const l of lineErrors) process.stderr.write(err.red(errorLine(l)) + '\n');
  };
  const strictStop = () => {
    report();
    throw new UsageError(`${lineErrors.length} bad line${lineErrors.length === 1 ? '' : 's'} in ${flags.prompts}; nothing generated (--strict)`);
  };
  if (lineErrors.length > 0 && flags.strict) strictStop();

  if (!flags.dryRun && specs.some((s) => s.options.model === undefined)) {
    report();
    const hint = fromModel ? ` (the image was made with model "${fromModel}")` : '';
    throw new UsageError(`no model: pass --model DIR or set "model" in .sdgenrc${hint}`);
  }
  const { defaults, folders, failed: badModels } = await loadModelDefaults(built.jobs);
  // Jobs whose model folder cannot be read, or whose values do not fit their model, stay in the
  // plan's numbering (so every other job's names and shard do not depend on them) but are not run.
  const skippedJobs = new Set<number>();
  const jobs: Job[] = [];
  for (const j of built.jobs) {
    const bad = j.model !== undefined ? badModels.get(j.model) : undefined;
    if (bad !== undefined && j.source) {
      skippedJobs.add(j.index);
      lineErrors.push(formatLineError({ file: j.source.file, line: j.source.line, message: bad }));
    }
    const job = withModelDefaults(j, j.model === undefined ? undefined : defaults.get(j.model));
    const folder = j.model === undefined ? undefined : folders.get(j.model);
    if (!skippedJobs.has(j.index)) {
      try {
        await checkJob(job, folder);
      } catch (e) {
        if (!(e instanceof SdgenError) || !j.source) throw e;
        skippedJobs.add(j.index);
        lineErrors.push(formatLineError({ file: j.source.file, line: j.source.line, message: e.message }));
      }
    }
    jobs.push(job);
  }
  if (lineErrors.length > 0 && flags.strict) strictStop();
  report();
  if (jobs.length === skippedJobs.size) throw new UsageError(flags.prompts !== undefined ? `${flags.prompts}: no valid prompt line` : 'nothing to generate');

  if (shard) {
    // every worker must plan exactly the same images with the same names
    const random = jobs.find((j) => j.requestedSeed === -1);
    if (random) {
      throw new UsageError(`--shard needs fixed seeds (workers would draw different random ones): give --seed N${random.source ? ` (first job without one: ${random.source.file}:${random.source.line})` : ''}`);
    }
    const clock = parseNameTemplate(base.name).find((p) => 'field' in p && (p.field === 'date' || p.field === 'time'));
    if (clock) throw new UsageError('--shard: the name template uses {date} or {time}, which differ between workers; put the date in --out instead');
  }

  const outDir = path.resolve(base.out);
  const planHash = planIdentity(built.planHash, base.name);
  let state: RunState | null = null;
  if (flags.resume) {
    const states = listRunStates(outDir);
    state = findOwnRun(outDir, states, planHash, shard);
    if (!state && !shard && states.some((s) => s.shard === null)) {
      throw new UsageError(`--resume: the job list or --name differs from the run recorded in ${outDir}; run without --resume to start a new run`);
    }
  }

  let runJobsList = jobs;
  let images: PlannedImage[];
  let namer: ImageNamer;
  let sizes: number[] | undefined;
  let total: number;
  if (state) {
    // the seeds the run drew, and the names it planned, recorded in its state
    const seeds = state.seeds;
    if (seeds.length === jobs.length) runJobsList = jobs.map((j, i) => (j.requestedSeed === -1 ? { ...j, params: { ...j.params, seed: seeds[i]! } } : j));
    images = imagesFromNames(runJobsList, new Map(state.ordinals.map((o, i) => [o, state!.names[i]!])));
    namer = new ImageNamer(base.name, state.startIndex, new Date(state.created));
    total = state.total;
    sizes = state.shardSizes;
  } else {
    const now = new Date();
    if (shard) {
      // names from the plan alone: not from the directory, which other workers are filling
      namer = new ImageNamer(base.name, 1, now);
      const all = planImages(jobs, { template: base.name, startIndex: 1, exists: () => false, overwrite: base.overwrite, now });
      const assignment = assignShards(jobs, shard.count);
      sizes = shardSizes(assignment, shard.count);
      images = imagesOfShard(all, assignment, shard);
      total = all.length;
    } else {
      const existing = new Set(listDir(outDir).map((f) => f.toLowerCase()));
      const startIndex = nextIndexFrom(existing);
      namer = new ImageNamer(base.name, startIndex, now);
      images = planImages(jobs, { template: base.name, startIndex, exists: (f) => existing.has(f.toLowerCase()), overwrite: base.overwrite, now });
      total = images.length;
    }
  }
  const runImages = images.filter((i) => !skippedJobs.has(i.job));
  const withImages = new Set(runImages.map((i) => i.job));
  const shownJobs = runJobsList.filter((j) => withImages.has(j.index));

  if (flags.dryRun) {
    process.stdout.write(formatPlan(shownJobs, runImages, path.relative(process.cwd(), outDir) || '.', flags.json));
    return { exitCode: lineErrors.length > 0 ? 1 : 0 };
  }

  cacheMaxBytes(); // a bad SDGEN_CACHE_MAX_GB ends the run before anything is written
  if (flags.resume && !state && !flags.quiet) process.stderr.write(`--resume: no interrupted run in ${outDir}; starting a new run\n`);
  ensureDir(outDir);
  const resuming = state !== null;
  if (!state) {
    state = createRunState(
      outDir,
      runKey(planHash, shard),
      {
        version: 2,
        planHash,
        shard,
        total,
        shardSizes: sizes,
        seeds: jobs.map((j) => j.params.seed),
        ordinals: images.map((i) => i.ordinal),
        names: images.map((i) => i.file),
        failed: [],
        startIndex: namer.startIndex,
        created: new Date().toISOString(),
      },
      shard !== null,
    );
  }
  const manifest = manifestPath(outDir, state.key);
  const done = resuming ? finishedImages(outDir, manifest) : new Set<number>();

  const runtime: RuntimeOptions = { device: base.device, threads: base.threads, verbose: flags.verbose, cacheDir: base.cacheDir, conv: base.conv };
  const reporter = await makeReporter(flags);
  const [{ StableDiffusionPipeline }, png, sched] = await Promise.all([
    import('../pipeline/pipeline.js'),
    import('../metadata/png.js'),
    import('../schedulers/index.js'),
  ]);
  const { SDGEN_VERSION } = await import('../version.js');

  const controller = new AbortController();
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      reporter.notice(`${sig}: stopping after the current step (press Ctrl-C again to quit at once)`);
      controller.abort();
    } else {
      process.stderr.write('\n');
      process.exit(130);
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let summary: RunSummary;
  try {
    summary = await runJobs(
      {
        jobs: runJobsList,
        images: runImages,
        outDir,
        manifest,
        done,
        fallbackName: (img, job, k) => namer.fallback(job, img, k),
        overwrite: base.overwrite,
        resuming,
        shard: shard ? shardLabel(shard) : undefined,
      },
      {
        loadPipeline: async (model, events, first): Promise<PipelineLike> => {
          if (!existsSync(model!)) throw new SdgenError(`model folder not found: ${model}`);
          // the UNet graph and attention mode the first job runs are the ones opened
          return StableDiffusionPipeline.load(model!, runtime, events, {
            attention: first.params.attention ?? base.attention,
            first: first.params,
            ...(base.embeddingsDir ? { embeddingsDir: base.embeddingsDir } : {}),
          });
        },
        encode: (out, extras) =>
          png.encodeImagePng(
            out.rgb,
            out.width,
            out.height,
            {
              sdgen: SDGEN_VERSION,
              params: out.params,
              model: out.modelName,
              tomeApplied: out.tomeApplied,
              ...(out.loras ? { loras: out.loras } : {}),
              ...(out.embeddings ? { embeddings: out.embeddings } : {}),
            },
            extras,
          ),
        samplerName: (s) => safeA1111(sched.a1111Name, s),
        reporter,
        signal: controller.signal,
      },
    );
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  recordFailures(outDir, state, summary);
  if (summary.interrupted) return { exitCode: 130, summary };
  return { exitCode: summary.failed > 0 || lineErrors.length > 0 ? 1 : 0, summary };
}

/** The run's failed images go into its state, for `sdgen status`; a state that cannot be written is left as it was. */
function recordFailures(outDir: string, state: RunState, summary: RunSummary): void {
  const failed = summary.failedImages;
  if (failed.length === 0 && state.failed.length === 0) return;
  try {
    updateRunState(outDir, { ...state, failed: [...new Set(failed)].sort((a, b) => a - b) });
  } catch {
    // the images themselves are what counts; status then shows them as missing
  }
}

function safeA1111(fn: (n: string) => string, name: string): string {
  try {
    return fn(name);
  } catch {
    return name;
  }
}

function lineNo(msg: string): number {
  const m = /:(\d+): /.exec(msg);
  return m ? Number(m[1]) : 0;
}

export type { SdgenOptions };
