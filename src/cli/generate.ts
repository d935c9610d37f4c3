/**
 * The default command: generate images from a prompt, a prompt file or an image's metadata.
 * Loads onnxruntime (through the pipeline) and sharp only when images are actually generated.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { SdgenError, UsageError } from '../errors.js';
import { resolveOptions, type PartialOptions, type SdgenOptions } from '../config/options.js';
import { loadRc } from '../config/rc.js';
import { findPreset } from '../config/presets.js';
import { parsePromptFile, formatLineError, type PromptFileEntry } from '../run/prompt-file.js';
import { buildJobs, planImages, type Job, type JobContext, type JobSpec, type ModelDefaults, type PlannedImage } from '../run/jobs.js';
import { listDir, nextIndexFrom, readResumeState, writeResumeState } from '../run/output.js';
import { finishedFiles, runJobs, type PipelineLike, type RunSummary } from '../run/runner.js';
import { makeChalk, makeReporter, type UiOptions } from './ui.js';
import { optionsFromMetadata } from './from.js';
import type { RuntimeOptions } from '../models/session.js';
import { cacheMaxBytes } from '../optimize/cache-prune.js';

export interface GenerateFlags extends UiOptions {
  preset?: string;
  config?: string;
  prompts?: string;
  strict: boolean;
  resume: boolean;
  dryRun: boolean;
  from?: string;
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

async function loadModelDefaults(models: Iterable<string>): Promise<Map<string, ModelDefaults>> {
  const out = new Map<string, ModelDefaults>();
  const { loadModelFolder } = await import('../models/folder.js');
  for (const m of models) {
    if (out.has(m)) continue;
    const f = await loadModelFolder(m);
    out.set(m, { name: f.name, width: f.defaultWidth, height: f.defaultHeight, scheduler: f.defaultScheduler });
  }
  return out;
}

function tomeLabel(job: Job): string {
  if (job.params.tome.ratio <= 0) return 'ToMe off';
  return job.tomeOn ? `ToMe ${job.params.tome.ratio}` : `ToMe skipped (${job.tomeReason ?? 'below the size thresholds'})`;
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
        JSON.stringify({
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
          files: imgs.map((i) => i.file),
        }),
      );
    } else {
      const first = imgs[0]?.file ?? '';
      const more = imgs.length > 1 ? ` (+${imgs.length - 1})` : '';
      lines.push(
        `${String(j.index + 1).padStart(5)}  ${first}${more}  seed ${p.seed}  ${p.width}x${p.height}  ${p.scheduler || 'model default'}  ` +
          `${p.steps} steps  cfg ${p.cfg}  ${tomeLabel(j)}  ${JSON.stringify(oneLine(p.prompt, 80))}`,
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
    const { readImageMetadata } = await import('../image/metadata.js');
    const f = optionsFromMetadata(await readImageMetadata(flags.from));
    fromPrompt = f.prompt;
    fromOptions = f.options;
    fromModel = f.modelName;
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

  // Every value is checked before any model is read (the model only supplies defaults), so
  // --strict reports all bad lines and stops before touching a model.
  const ctx = await makeContext(new Map());
  for (const e of buildJobs(specs, ctx).errors) lineErrors.push(formatLineError(e));
  lineErrors.sort((a, b) => lineNo(a) - lineNo(b));
  for (const l of lineErrors) process.stderr.write(err.red(l) + '\n');
  if (lineErrors.length > 0 && flags.strict) {
    throw new UsageError(`${lineErrors.length} bad line${lineErrors.length === 1 ? '' : 's'} in ${flags.prompts}; nothing generated (--strict)`);
  }

  const models = new Set(specs.map((s) => s.options.model).filter((m): m is string => m !== undefined));
  if (!flags.dryRun && specs.some((s) => s.options.model === undefined)) {
    const hint = fromModel ? ` (the image was made with model "${fromModel}")` : '';
    throw new UsageError(`no model: pass --model DIR or set "model" in .sdgenrc${hint}`);
  }
  const defaults = await loadModelDefaults(models);
  const modelCtx: JobContext = { ...ctx, modelDefaults: (m) => (m === undefined ? undefined : defaults.get(m)) };

  const outDir = path.resolve(base.out);
  const state = flags.resume ? readResumeState(outDir) : null;
  const built = buildJobs(specs, modelCtx, state?.seeds);
  if (built.jobs.length === 0) throw new UsageError(flags.prompts !== undefined ? `${flags.prompts}: no valid prompt line` : 'nothing to generate');

  // The plan is the job list and the name template (names come from it).
  const planHash = `${built.planHash}:${base.name}`;
  if (flags.resume && state && state.planHash !== planHash) {
    throw new UsageError(`--resume: the job list or --name differs from the run recorded in ${outDir}; run without --resume to start a new run`);
  }
  let images: PlannedImage[];
  const totalImages = built.jobs.reduce((n, j) => n + j.imageCount, 0);
  if (state && state.names.length === totalImages) {
    let k = 0;
    images = [];
    for (const j of built.jobs) for (let i = 0; i < j.imageCount; i++, k++) images.push({ job: j.index, image: i, ordinal: k, seed: j.params.seed + i, file: state.names[k]! });
  } else {
    const existing = new Set(listDir(outDir).map((f) => f.toLowerCase()));
    images = planImages(built.jobs, {
      template: base.name,
      startIndex: nextIndexFrom(existing),
      exists: (f) => existing.has(f.toLowerCase()),
      overwrite: base.overwrite,
    });
  }

  if (flags.dryRun) {
    process.stdout.write(formatPlan(built.jobs, images, path.relative(process.cwd(), outDir) || '.', flags.json));
    return { exitCode: lineErrors.length > 0 ? 1 : 0 };
  }

  cacheMaxBytes(); // a bad SDGEN_CACHE_MAX_GB ends the run before anything is written
  if (flags.resume && !state && !flags.quiet) process.stderr.write(`--resume: no interrupted run in ${outDir}; starting a new run\n`);
  try {
    mkdirSync(outDir, { recursive: true });
  } catch (e) {
    throw new SdgenError(`${outDir}: cannot create the output directory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (!state) {
    writeResumeState(outDir, { version: 1, planHash, seeds: built.jobs.map((j) => j.params.seed), names: images.map((i) => i.file) });
  }
  const done = flags.resume ? finishedFiles(outDir) : new Set<string>();

  const runtime: RuntimeOptions = { device: base.device, threads: base.threads, verbose: flags.verbose, cacheDir: base.cacheDir, conv: base.conv };
  const reporter = await makeReporter(flags);
  const [{ StableDiffusionPipeline }, png, sched] = await Promise.all([
    import('../pipeline/pipeline.js'),
    import('../image/png.js'),
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
      { jobs: built.jobs, images, outDir, done },
      {
        loadPipeline: async (model, events, first): Promise<PipelineLike> => {
          if (!existsSync(model!)) throw new SdgenError(`model folder not found: ${model}`);
          // the UNet graph and attention mode the first job runs are the ones opened
          return StableDiffusionPipeline.load(model!, runtime, events, { attention: first.params.attention ?? base.attention, first: first.params });
        },
        encode: (out, extras) =>
          png.encodeImagePng(out.rgb, out.width, out.height, { sdgen: SDGEN_VERSION, params: out.params, model: out.modelName, tomeApplied: out.tomeApplied }, extras),
        samplerName: (s) => safeA1111(sched.a1111Name, s),
        reporter,
        signal: controller.signal,
      },
    );
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (summary.interrupted) return { exitCode: 130, summary };
  return { exitCode: summary.failed > 0 || lineErrors.length > 0 ? 1 : 0, summary };
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
