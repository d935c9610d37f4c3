/**
 * Runs a planned job list: one pipeline per model, loaded once and reused; jobs grouped by model,
 * then by ToMe decision and size, so sessions are not rebuilt needlessly; each job split into its
 * batches (one generate call per batch: seed + iteration·batchSize) so that `--resume` can redo
 * exactly the unfinished batches. Images are written through a temporary file and a rename, and
 * the manifest gets one flushed line per image. An abort (SIGINT/SIGTERM) stops after the
 * current step: the batch in progress is dropped, no partial file is left.
 */
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { SdgenError } from '../errors.js';
import { SDGEN_VERSION } from '../version.js';
import type { GeneratedImage, GenerationParams, ProgressEvents } from '../pipeline/types.js';
import type { Job, PlannedImage } from './jobs.js';
import { Manifest, listDir, removeStaleTemps, writeFileAtomic, type ManifestRecord } from './output.js';
import type { InfotextExtras } from '../image/infotext.js';

/** What the runner needs of a StableDiffusionPipeline (a fake one in tests). */
export interface PipelineLike {
  /** `options.last`: no generate call follows before dispose (the pipeline may release sessions early) */
  generate(params: GenerationParams, events?: ProgressEvents, signal?: AbortSignal, options?: { last?: boolean }): AsyncGenerator<GeneratedImage>;
  dispose(): Promise<void>;
}

export interface RunReporter {
  start(total: number, alreadyDone: number): void;
  loadingModel?(model: string): void;
  load?(stage: string, done: number, total: number): void;
  notice(message: string): void;
  imageStart?(img: PlannedImage, job: Job): void;
  step?(step: number, total: number): void;
  imageWritten(img: PlannedImage, job: Job, file: string, out: GeneratedImage): void;
  imageSkipped?(img: PlannedImage, job: Job): void;
  jobFailed(job: Job, error: unknown, images: number): void;
  finish(summary: RunSummary): void;
}

export interface RunSummary {
  planned: number;
  written: number;
  skipped: number;
  failed: number;
  interrupted: boolean;
  /** wall time of the images written, ms */
  elapsedMs: number;
  secondsPerImage: number | null;
}

export interface RunPlan {
  jobs: Job[];
  images: PlannedImage[];
  outDir: string;
  /** files that count as done (resume): in the manifest and on disk */
  done?: ReadonlySet<string>;
}

export interface RunDeps {
  /** `first`: the job the pipeline is loaded for (the first of its model in run order) */
  loadPipeline(model: string | undefined, events: ProgressEvents, first: Job): Promise<PipelineLike>;
  /** PNG bytes with metadata */
  encode(out: GeneratedImage, extras: InfotextExtras, job: Job): Promise<Buffer>;
  /** A1111 sampler name of a canonical scheduler name */
  samplerName?(scheduler: string): string;
  reporter: RunReporter;
  signal?: AbortSignal;
}

export function isAbortError(e: unknown): boolean {
  return e instanceof Error && (e.name === 'AbortError' || e.name === 'GenerationAbortedError');
}

/** Job order: by model (first appearance), then ToMe decision, then size; stable otherwise. */
export function orderJobs(jobs: readonly Job[]): Job[] {
  const modelRank = new Map<string, number>();
  for (const j of jobs) if (!modelRank.has(j.model ?? '')) modelRank.set(j.model ?? '', modelRank.size);
  return [...jobs].sort(
    (a, b) =>
      modelRank.get(a.model ?? '')! - modelRank.get(b.model ?? '')! ||
      Number(a.tomeOn) - Number(b.tomeOn) ||
      a.params.width - b.params.width ||
      a.params.height - b.params.height ||
      a.index - b.index,
  );
}

export async function runJobs(plan: RunPlan, deps: RunDeps): Promise<RunSummary> {
  const { reporter, signal } = deps;
  const outDir = plan.outDir;
  try {
    mkdirSync(outDir, { recursive: true });
  } catch (e) {
    throw new SdgenError(`${outDir}: cannot create the output directory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  removeStaleTemps(outDir);
  const manifest = new Manifest(outDir);
  const byJob = new Map<number, PlannedImage[]>();
  for (const img of plan.images) {
    let arr = byJob.get(img.job);
    if (!arr) byJob.set(img.job, (arr = []));
    arr.push(img);
  }
  const done = plan.done ?? new Set<string>();
  const summary: RunSummary = { planned: plan.images.length, written: 0, skipped: 0, failed: 0, interrupted: false, elapsedMs: 0, secondsPerImage: null };
  const alreadyDone = plan.images.filter((i) => done.has(i.file)).length;
  reporter.start(plan.images.length, alreadyDone);

  let pipe: PipelineLike | null = null;
  let pipeModel: string | undefined | null = null;
  const ordered = orderJobs(plan.jobs);
  // per model, the last generate call with images to write: after it the pipeline is disposed
  // (one generate call per iteration: its batch of planned images)
  const unitImages = (job: Job, it: number) => (byJob.get(job.index) ?? []).slice(it * job.params.batchSize, (it + 1) * job.params.batchSize);
  const unitOf = (job: Job, it: number) => `${job.index}/${it}`;
  const lastUnit = new Map<string, string>();
  for (const job of ordered) {
    for (let it = 0; it < job.params.nIter; it++) {
      if (unitImages(job, it).some((i) => !done.has(i.file))) lastUnit.set(job.model ?? '', unitOf(job, it));
    }
  }
  try {
    for (const job of ordered) {
      if (signal?.aborted) break;
      const imgs = byJob.get(job.index) ?? [];
      if (imgs.every((i) => done.has(i.file))) {
        for (const i of imgs) reporter.imageSkipped?.(i, job);
        summary.skipped += imgs.length;
        continue;
      }
      if (pipe === null || pipeModel !== (job.model ?? undefined)) {
        if (pipe) await pipe.dispose();
        pipe = null;
        reporter.loadingModel?.(job.model ?? '');
        try {
          pipe = await deps.loadPipeline(
            job.model,
            {
              onLoad: (stage, d, t) => reporter.load?.(stage, d, t),
              onNotice: (m) => reporter.notice(m),
            },
            job,
          );
          pipeModel = job.model ?? undefined;
        } catch (e) {
          // A model that cannot be loaded fails every job that uses it; other models go on.
          const remaining = imgs.filter((i) => !done.has(i.file)).length;
          reporter.jobFailed(job, e, remaining);
          summary.failed += remaining;
          summary.skipped += imgs.length - remaining;
          pipeModel = null;
          if (!(e instanceof SdgenError)) throw e;
          continue;
        }
      }
      const bs = job.params.batchSize;
      for (let it = 0; it < job.params.nIter; it++) {
        if (signal?.aborted) break;
        const unit = unitImages(job, it);
        if (unit.every((i) => done.has(i.file))) {
          for (const i of unit) reporter.imageSkipped?.(i, job);
          summary.skipped += unit.length;
          continue;
        }
        const params: GenerationParams = { ...job.params, tome: { ...job.params.tome }, seed: job.params.seed + it * bs, nIter: 1 };
        let produced = 0;
        const started = performance.now();
        try {
          reporter.imageStart?.(unit[0]!, job);
          const last = lastUnit.get(job.model ?? '') === unitOf(job, it);
          for await (const out of pipe.generate(params, { onStep: (s, t) => reporter.step?.(s, t), onNotice: (m) => reporter.notice(m) }, signal, { last })) {
            const img = unit[out.index];
            produced++;
            if (!img) continue;
            if (out.seed !== img.seed) throw new Error(`internal: image seed ${out.seed} ≠ planned ${img.seed}`);
            if (done.has(img.file)) {
              reporter.imageSkipped?.(img, job);
              summary.skipped++;
            } else {
              // Record the job's own batch settings with this image's seed.
              const rec: GeneratedImage = { ...out, params: { ...out.params, batchSize: job.params.batchSize, nIter: job.params.nIter } };
              const file = path.join(outDir, img.file);
              const png = await deps.encode(rec, { samplerName: deps.samplerName?.(rec.params.scheduler), version: `sdgen ${SDGEN_VERSION}` }, job);
              writeFileAtomic(file, png);
              const line: ManifestRecord = {
                file: img.file,
                index: img.ordinal,
                job: job.index,
                image: img.image,
                seed: out.seed,
                model: out.modelName,
                tomeApplied: out.tomeApplied,
                params: rec.params,
                timings: out.timings,
                source: job.source ? `${job.source.file}:${job.source.line}` : undefined,
                time: new Date().toISOString(),
              };
              manifest.append(line);
              summary.written++;
              reporter.imageWritten(img, job, file, rec);
            }
          }
          summary.elapsedMs += performance.now() - started;
        } catch (e) {
          if (isAbortError(e) || signal?.aborted) {
            summary.interrupted = true;
            break;
          }
          const left = unit.length - produced;
          reporter.jobFailed(job, e, left);
          summary.failed += left;
          if (!(e instanceof SdgenError)) reporter.notice(`(this is a bug) ${(e as Error).stack ?? String(e)}`);
          // the rest of this job would fail the same way
          const rest = imgs.slice((it + 1) * bs).filter((i) => !done.has(i.file)).length;
          summary.failed += rest;
          break;
        }
      }
      if (summary.interrupted) break;
    }
    if (signal?.aborted) summary.interrupted = true;
  } finally {
    if (pipe) await pipe.dispose().catch(() => {});
  }
  summary.secondsPerImage = summary.written > 0 ? summary.elapsedMs / 1000 / summary.written : null;
  reporter.finish(summary);
  return summary;
}

/** Files counted as finished for --resume: recorded in the manifest and present on disk. */
export function finishedFiles(outDir: string): Set<string> {
  const onDisk = new Set(existsSync(outDir) ? listDir(outDir) : []);
  const recorded = new Manifest(outDir).recordedFiles();
  return new Set([...recorded].filter((f) => onDisk.has(f)));
}
