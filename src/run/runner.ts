/**
 * Runs a planned job list: one pipeline per model, loaded once and reused; jobs grouped by model,
 * then by ToMe decision and size, so sessions are not rebuilt needlessly; each job split into its
 * batches (one generate call per batch, for the slice of the job's images that batch makes) so
 * that `--resume` and shards redo or make exactly their batches. Each image is claimed under its
 * name atomically (writeNewFile: a name taken meanwhile by another process moves on to the next
 * free one) and then recorded in the run's own manifest; it counts as written only when both are
 * on disk. An abort (SIGINT/SIGTERM) stops after the current step: the batch in progress is
 * dropped, no partial file is left. A write error in the output directory (full disk, …) stops
 * the run with that one error.
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import { SdgenError } from '../errors.js';
import { SDGEN_VERSION } from '../version.js';
import type { GeneratedImage, GenerationParams, ProgressEvents, StepPhase } from '../pipeline/types.js';
import type { Job, PlannedImage } from './jobs.js';
import {
  Manifest, OutputError, ensureDir, listDir, readManifest, removeStaleTemps, suffixedName, writeNewFile, type ManifestRecord, type WriteFn,
} from './output.js';
import type { InfotextExtras } from '../metadata/infotext.js';

/** What the runner needs of a StableDiffusionPipeline (a fake one in tests). */
export interface PipelineLike {
  /** `options.last`: no generate call follows before dispose (the pipeline may release sessions early) */
  /** `options.images`: only images first…first+count−1 of the job (seeds imageSeed(params, i)) */
  generate(
    params: GenerationParams,
    events?: ProgressEvents,
    signal?: AbortSignal,
    options?: { images?: { first: number; count: number }; last?: boolean },
  ): AsyncGenerator<GeneratedImage>;
  dispose(): Promise<void>;
}

export interface RunReporter {
  start(total: number, alreadyDone: number): void;
  loadingModel?(model: string): void;
  load?(stage: string, done: number, total: number): void;
  notice(message: string): void;
  imageStart?(img: PlannedImage, job: Job): void;
  /** `phase`: the pass of a multi-pass job (hires fix) the step belongs to */
  step?(step: number, total: number, phase?: StepPhase): void;
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
  /** plan positions of the images that failed */
  failedImages: number[];
  /** wall time of the images written, ms */
  elapsedMs: number;
  secondsPerImage: number | null;
}

export interface RunPlan {
  jobs: Job[];
  /** the images this run makes (all of the plan, or a shard's) with their planned names */
  images: PlannedImage[];
  outDir: string;
  /** this run's own manifest file */
  manifest: string;
  /** plan positions that count as done (resume): recorded in this run's manifest and on disk */
  done?: ReadonlySet<number>;
  /** the k-th name to try when an image's planned name is taken at write time (default: name-2, name-3, …) */
  fallbackName?: (img: PlannedImage, job: Job, k: number) => string;
  /** --overwrite: replace files of the planned names */
  overwrite?: boolean;
  /** a resumed run: an existing file with the very bytes of an image is that image (see writeNewFile) */
  resuming?: boolean;
  /** recorded in each manifest record of a sharded run (`I/N`) */
  shard?: string;
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
  /** write(2) for images and the manifest (fault-injection tests) */
  write?: WriteFn;
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

interface Unit {
  job: Job;
  /** this run's images of one batch of the job, by image index */
  images: PlannedImage[];
}

/** A job's batches that hold images of this run (a shard may hold only some of them). */
function unitsOf(job: Job, imgs: readonly PlannedImage[]): Unit[] {
  const byIter = new Map<number, PlannedImage[]>();
  for (const img of imgs) {
    const it = Math.floor(img.image / job.params.batchSize);
    let arr = byIter.get(it);
    if (!arr) byIter.set(it, (arr = []));
    arr.push(img);
  }
  return [...byIter.keys()].sort((a, b) => a - b).map((it) => ({ job, images: byIter.get(it)!.sort((a, b) => a.image - b.image) }));
}

export async function runJobs(plan: RunPlan, deps: RunDeps): Promise<RunSummary> {
  const { reporter, signal } = deps;
  const outDir = plan.outDir;
  ensureDir(outDir);
  removeStaleTemps(outDir);
  const manifest = new Manifest(plan.manifest, deps.write);
  const byJob = new Map<number, PlannedImage[]>();
  for (const img of plan.images) {
    let arr = byJob.get(img.job);
    if (!arr) byJob.set(img.job, (arr = []));
    arr.push(img);
  }
  const done = plan.done ?? new Set<number>();
  const isDone = (i: PlannedImage) => done.has(i.ordinal);
  const summary: RunSummary = {
    planned: plan.images.length, written: 0, skipped: 0, failed: 0, failedImages: [], interrupted: false, elapsedMs: 0, secondsPerImage: null,
  };
  const fail = (imgs: readonly PlannedImage[]) => {
    summary.failed += imgs.length;
    for (const i of imgs) summary.failedImages.push(i.ordinal);
  };
  const alreadyDone = plan.images.filter(isDone).length;
  reporter.start(plan.images.length, alreadyDone);

  let pipe: PipelineLike | null = null;
  let pipeModel: string | undefined | null = null;
  const ordered = orderJobs(plan.jobs.filter((j) => byJob.has(j.index)));
  const units = new Map<number, Unit[]>(ordered.map((j) => [j.index, unitsOf(j, byJob.get(j.index)!)]));
  // per model, the last generate call with images to write: after it the pipeline is disposed
  const lastUnit = new Map<string, Unit>();
  for (const job of ordered) for (const u of units.get(job.index)!) if (u.images.some((i) => !isDone(i))) lastUnit.set(job.model ?? '', u);
  let fatal: OutputError | null = null;
  try {
    for (const job of ordered) {
      if (signal?.aborted) break;
      const imgs = byJob.get(job.index)!;
      if (imgs.every(isDone)) {
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
          const remaining = imgs.filter((i) => !isDone(i));
          reporter.jobFailed(job, e, remaining.length);
          fail(remaining);
          summary.skipped += imgs.length - remaining.length;
          pipeModel = null;
          if (!(e instanceof SdgenError)) throw e;
          continue;
        }
      }
      const jobUnits = units.get(job.index)!;
      for (const [u, unit] of jobUnits.entries()) {
        if (signal?.aborted) break;
        if (unit.images.every(isDone)) {
          for (const i of unit.images) reporter.imageSkipped?.(i, job);
          summary.skipped += unit.images.length;
          continue;
        }
        const first = unit.images[0]!.image;
        const count = unit.images.at(-1)!.image - first + 1;
        const byImage = new Map(unit.images.map((i) => [i.image, i]));
        const finished = new Set<number>();
        const started = performance.now();
        try {
          reporter.imageStart?.(unit.images[0]!, job);
          const last = lastUnit.get(job.model ?? '') === unit;
          const events: ProgressEvents = { onStep: (s, t, _b, _n, phase) => reporter.step?.(s, t, phase), onNotice: (m) => reporter.notice(m) };
          for await (const out of pipe.generate(job.params, events, signal, { images: { first, count }, last })) {
            const img = byImage.get(out.index);
            if (!img) continue;
            finished.add(img.image);
            if (out.seed !== img.seed) throw new Error(`internal: image seed ${out.seed} ≠ planned ${img.seed}`);
            if (isDone(img)) {
              reporter.imageSkipped?.(img, job);
              summary.skipped++;
              continue;
            }
            const png = await deps.encode(out, { samplerName: deps.samplerName?.(out.params.scheduler), version: `sdgen ${SDGEN_VERSION}` }, job);
            let got: { name: string; adopted: boolean };
            try {
              got = writeNewFile(outDir, img.file, png, {
                next: (_taken, k) => (plan.fallbackName ? plan.fallbackName(img, job, k) : suffixedName(img.file, k + 1)),
                overwrite: plan.overwrite,
                adoptIdentical: plan.resuming,
                write: deps.write,
              });
            } catch (e) {
              fail([img]);
              throw e;
            }
            const line: ManifestRecord = {
              file: got.name,
              index: img.ordinal,
              job: job.index,
              image: img.image,
              seed: out.seed,
              model: out.modelName,
              tomeApplied: out.tomeApplied,
              params: out.params,
              timings: out.timings,
              source: job.source ? `${job.source.file}:${job.source.line}` : undefined,
              shard: plan.shard,
              time: new Date().toISOString(),
            };
            try {
              manifest.append(line);
            } catch (e) {
              // not recorded: the image is not kept either (a resumed run makes it again)
              if (!got.adopted) rmSync(path.join(outDir, got.name), { force: true });
              fail([img]);
              throw e;
            }
            summary.written++;
            reporter.imageWritten({ ...img, file: got.name }, job, path.join(outDir, got.name), out);
          }
          summary.elapsedMs += performance.now() - started;
        } catch (e) {
          if (e instanceof OutputError) {
            fatal = e;
            break;
          }
          if (isAbortError(e) || signal?.aborted) {
            summary.interrupted = true;
            break;
          }
          const left = unit.images.filter((i) => !finished.has(i.image) && !isDone(i));
          reporter.jobFailed(job, e, left.length);
          fail(left);
          // an error of the system (a file, the disk) is the run's, not a bug in sdgen
          const system = e instanceof Error && typeof (e as NodeJS.ErrnoException).syscall === 'string';
          if (!(e instanceof SdgenError) && !system) reporter.notice(`(this is a bug) ${(e as Error).stack ?? String(e)}`);
          // the rest of this job would fail the same way
          fail(jobUnits.slice(u + 1).flatMap((x) => x.images).filter((i) => !isDone(i)));
          break;
        }
      }
      if (summary.interrupted || fatal) break;
    }
    if (signal?.aborted) summary.interrupted = true;
  } finally {
    if (pipe) await pipe.dispose().catch(() => {});
  }
  summary.secondsPerImage = summary.written > 0 ? summary.elapsedMs / 1000 / summary.written : null;
  reporter.finish(summary);
  if (fatal) throw fatal;
  return summary;
}

/**
 * Plan positions counted as finished for --resume: recorded in the run's manifest (a torn last
 * line does not count) with the file on disk.
 */
export function finishedImages(outDir: string, manifestFile: string): Set<number> {
  const onDisk = new Set(listDir(outDir));
  const out = new Set<number>();
  for (const r of readManifest(manifestFile).records) if (onDisk.has(r.file)) out.add(r.index);
  return out;
}
