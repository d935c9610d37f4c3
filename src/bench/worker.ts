/**
 * Benchmark child process: runs one job (UNet timing, MatMul rate, whole image, session load)
 * in a process of its own, so that its peak memory (`process.resourceUsage().maxRSS`) is its
 * own, and reports the result to the parent over IPC. Started by ./child.ts.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { measureConvRate, measureMatMulRate } from './matmul-rate.js';
import { unetFeeds } from './inputs.js';
import { maxRssBytes } from './memory.js';
import { summarizeProfile, type ProfileEvent, type ProfileSummary } from './profile.js';
import type { WorkerJob, WorkerReply, UnetJobResult, ImageJobResult, LoadJobResult, HiresJobResult } from './jobs.js';
import { sessionRole, summarizeHiresRuns, unetLatent, type RunRecord } from './hires.js';
import { DEFAULT_MEMORY_OPTIONS } from '../optimize/session-cache.js';

async function readProfile(prefix: string): Promise<ProfileEvent[]> {
  const dir = path.dirname(prefix);
  const base = path.basename(prefix);
  const files = (await readdir(dir)).filter((f) => f.startsWith(base) && f.endsWith('.json')).sort();
  const last = files[files.length - 1];
  if (!last) throw new Error(`onnxruntime wrote no profile with prefix ${prefix}`);
  const file = path.join(dir, last);
  const events = JSON.parse(await readFile(file, 'utf8')) as ProfileEvent[];
  await Promise.all(files.map((f) => rm(path.join(dir, f), { force: true })));
  return events;
}

function baseOptions(job: { threads: number; memArena?: boolean; memPattern?: boolean }): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: ['cpu'],
    intraOpNumThreads: job.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    enableCpuMemArena: job.memArena ?? DEFAULT_MEMORY_OPTIONS.enableCpuMemArena,
    enableMemPattern: job.memPattern ?? DEFAULT_MEMORY_OPTIONS.enableMemPattern,
    logSeverityLevel: 3,
  };
}

/** A CPU session of `modelPath`, through the optimized-graph cache when `cache` is given. */
async function openSession(
  modelPath: string,
  options: ort.InferenceSession.SessionOptions,
  cache?: { cacheDir: string; variant?: string; savePrepacked?: boolean },
): Promise<{ session: ort.InferenceSession; cached: boolean; notice?: string }> {
  if (!cache) return { session: await ort.InferenceSession.create(modelPath, options), cached: false };
  const { createCachedSession } = await import('../optimize/session-cache.js');
  const r = await createCachedSession(modelPath, options, { provider: 'cpu', ...cache });
  return { session: r.session, cached: r.cached, ...(r.notice ? { notice: r.notice } : {}) };
}

async function runUnet(job: Extract<WorkerJob, { kind: 'unet' }>): Promise<UnetJobResult> {
  const opts = baseOptions(job);
  const profiling = job.profilePrefix !== undefined;
  if (profiling) {
    opts.enableProfiling = true;
    opts.profileFilePrefix = job.profilePrefix;
  }
  const t0 = performance.now();
  const { session } = await openSession(job.modelPath, opts, job.cacheDir ? { cacheDir: job.cacheDir } : undefined);
  const loadMs = performance.now() - t0;
  const lat = Math.round(job.size / 8);
  const feeds = unetFeeds(session, job.batch, lat, lat, job.seqLen);
  const tw = performance.now();
  await session.run(feeds);
  const warmupMs = performance.now() - tw;
  let flopsProfile: ProfileSummary | undefined;
  let steadyProfile: ProfileSummary | undefined;
  if (profiling) {
    if (job.profileSteady) await session.run(feeds);
    session.endProfiling();
    const events = await readProfile(job.profilePrefix!);
    flopsProfile = summarizeProfile(events, 0);
    if (job.profileSteady) steadyProfile = summarizeProfile(events, -1);
  }
  const samplesMs: number[] = [];
  for (let i = 0; i < job.calls; i++) {
    const t = performance.now();
    await session.run(feeds);
    samplesMs.push(performance.now() - t);
  }
  await session.release();
  return { kind: 'unet', loadMs, warmupMs, samplesMs, flops: flopsProfile?.flops, profile: steadyProfile, warmupProfile: flopsProfile, maxRss: maxRssBytes() };
}

async function runLoad(job: Extract<WorkerJob, { kind: 'load' }>): Promise<LoadJobResult> {
  const base = baseOptions(job);
  const t0 = performance.now();
  const { session, cached, notice } = await openSession(
    job.modelPath,
    base,
    job.cacheDir ? { cacheDir: job.cacheDir, variant: job.variant ?? '', savePrepacked: !!job.savePrepacked } : undefined,
  );
  const loadMs = performance.now() - t0;
  let firstRunMs: number | undefined;
  if (job.runSize) {
    const lat = Math.round(job.runSize / 8);
    const feeds = unetFeeds(session, 1, lat, lat, 77);
    const t = performance.now();
    await session.run(feeds);
    firstRunMs = performance.now() - t;
  }
  await session.release();
  return { kind: 'load', loadMs, cached, firstRunMs, maxRss: maxRssBytes(), ...(notice ? { notice } : {}) };
}

async function runImage(job: Extract<WorkerJob, { kind: 'image' }>): Promise<ImageJobResult> {
  const { StableDiffusionPipeline } = await import('../pipeline/pipeline.js');
  const { DEFAULT_TOME } = await import('../tome/options.js');
  const { generationParams } = await import('../pipeline/params.js');
  const { encodeRgbPng } = await import('../metadata/png.js');
  const params = generationParams({
    prompt: 'a photograph of an astronaut riding a horse',
    width: job.size,
    height: job.size,
    steps: job.steps,
    cfg: 7.5,
    seed: 1234,
    tome: { ...DEFAULT_TOME, ratio: job.ratio },
    attention: job.attention,
  });
  const t0 = performance.now();
  const pipe = await StableDiffusionPipeline.load(job.modelDir, { device: 'cpu', threads: job.threads, cacheDir: job.cacheDir, conv: job.conv }, undefined, {
    attention: job.attention,
    first: params,
  });
  const loadMs = performance.now() - t0;
  if (job.warmOnly) {
    await pipe.dispose?.();
    return { kind: 'image', loadMs, textEncoderMs: 0, unetMs: 0, vaeMs: 0, pngMs: 0, totalMs: 0, maxRss: maxRssBytes() };
  }
  let img: { rgb: Uint8Array; width: number; height: number; timings: { textEncoderMs: number; unetMs: number; vaeMs: number; totalMs: number } } | undefined;
  // as the CLI runs a single image: its last generate call (the UNet goes before the decode)
  for await (const image of pipe.generate(params, undefined, undefined, { last: true })) img ??= image;
  await pipe.dispose?.();
  if (!img) throw new Error('the pipeline returned no image');
  const tp = performance.now();
  await encodeRgbPng(img.rgb, img.width, img.height);
  const pngMs = performance.now() - tp;
  const t = img.timings;
  return {
    kind: 'image',
    loadMs,
    textEncoderMs: t.textEncoderMs,
    unetMs: t.unetMs,
    vaeMs: t.vaeMs,
    pngMs,
    totalMs: t.totalMs + pngMs,
    maxRss: maxRssBytes(),
  };
}

/**
 * Records every onnxruntime session run of this process from now on (the worker runs one job,
 * so nothing else is recorded): which model ran (sessionRole), when, for how long, and a UNet's
 * latent size. The hook wraps InferenceSession.prototype.run, which every session the pipeline
 * opens goes through.
 */
function recordSessionRuns(): RunRecord[] {
  const records: RunRecord[] = [];
  const proto = (ort.InferenceSession as unknown as { prototype: unknown }).prototype as { run: (this: ort.InferenceSession, feeds: Record<string, ort.Tensor>, ...rest: unknown[]) => Promise<unknown> };
  const run = proto.run;
  proto.run = async function (this: ort.InferenceSession, feeds: Record<string, ort.Tensor>, ...rest: unknown[]) {
    const dims: Record<string, readonly number[]> = {};
    for (const [k, t] of Object.entries(feeds)) dims[k] = t.dims;
    const role = sessionRole(this.inputNames, dims);
    const latent = role === 'unet' ? unetLatent(dims) : undefined;
    const start = performance.now();
    try {
      return await run.call(this, feeds, ...rest);
    } finally {
      records.push({ role, start, ms: performance.now() - start, ...(latent ? { latent } : {}) });
    }
  };
  return records;
}

async function runHires(job: Extract<WorkerJob, { kind: 'hires' }>): Promise<HiresJobResult> {
  const { StableDiffusionPipeline } = await import('../pipeline/pipeline.js');
  const { generationParams } = await import('../pipeline/params.js');
  const { tomeApplies } = await import('../tome/options.js');
  const { encodeRgbPng } = await import('../metadata/png.js');
  const runtime = { device: 'cpu', threads: job.threads, cacheDir: job.cacheDir, conv: job.conv } as const;
  const image = (base: number, target: number, steps: [number, number]) =>
    generationParams({
      prompt: 'a photograph of an astronaut riding a horse',
      width: base,
      height: base,
      steps: steps[0],
      cfg: 7.5,
      seed: 1234,
      tome: { ...job.tome },
      attention: job.attention,
      hires: { width: target, height: target, scale: target / base, upscaler: job.upscaler, strength: job.strength, steps: steps[1] },
    });
  const params = image(job.base, job.target, job.steps);
  if (job.warmOnly) {
    const t0 = performance.now();
    // pass 2's UNet graph (ToMe or not by its size) into the ToMe and optimized-graph caches
    const p2 = await StableDiffusionPipeline.load(job.modelDir, runtime, undefined, { attention: job.attention, first: { tome: params.tome, width: job.target, height: job.target } });
    await p2.dispose();
    // then pass 1's, the decoder's and (pixel-space upscalers) the encoder's, on a tiny image
    const pipe = await StableDiffusionPipeline.load(job.modelDir, runtime, undefined, { attention: job.attention, first: { tome: params.tome, width: job.base, height: job.base } });
    for await (const _ of pipe.generate(image(64, 128, [1, 1]), undefined, undefined, { last: true })) {
      // one image, untimed
    }
    await pipe.dispose();
    return { kind: 'hires', loadMs: performance.now() - t0, calls: summarizeHiresRuns([], { size: 64, latent: 8 }, { size: 128, latent: 16 }), pass1Tome: false, pass2Tome: false, passSteps: [0, 0], vaeDecodeMs: 0, pngMs: 0, totalMs: 0, maxRss: maxRssBytes() };
  }
  const t0 = performance.now();
  // as the CLI opens a pipeline for its first job: the UNet pass 1 needs
  const pipe = await StableDiffusionPipeline.load(job.modelDir, runtime, undefined, { attention: job.attention, first: { tome: params.tome, width: job.base, height: job.base } });
  const loadMs = performance.now() - t0;
  const scale = pipe.folder.vaeScaleFactor;
  const records = recordSessionRuns();
  const tg = performance.now();
  let img: { rgb: Uint8Array; width: number; height: number; tomeApplied: boolean; timings: { vaeMs: number } } | undefined;
  // the steps the pipeline reports per pass (its StepPhase), a check on the split by latent size
  const passSteps: [number, number] = [0, 0];
  const events = { onStep: (_s: number, _t: number, _b: number, _bs: number, phase?: { pass: number }) => void (phase && phase.pass >= 1 && phase.pass <= 2 && passSteps[phase.pass - 1]!++) };
  for await (const out of pipe.generate(params, events, undefined, { last: true })) img ??= out;
  const genMs = performance.now() - tg;
  await pipe.dispose();
  if (!img) throw new Error('the pipeline returned no image');
  const tp = performance.now();
  await encodeRgbPng(img.rgb, img.width, img.height);
  const pngMs = performance.now() - tp;
  const calls = summarizeHiresRuns(records, { size: job.base, latent: job.base / scale }, { size: job.target, latent: job.target / scale });
  return {
    kind: 'hires',
    loadMs,
    calls,
    pass1Tome: tomeApplies(params.tome, job.base, job.base).apply,
    pass2Tome: img.tomeApplied,
    passSteps,
    vaeDecodeMs: img.timings.vaeMs,
    pngMs,
    totalMs: genMs + pngMs,
    maxRss: maxRssBytes(),
  };
}

async function handle(job: WorkerJob): Promise<WorkerReply> {
  try {
    switch (job.kind) {
      case 'unet':
        return { ok: true, result: await runUnet(job) };
      case 'matmul':
        return {
          ok: true,
          result: { kind: 'matmul', rate: await measureMatMulRate(job), conv: job.conv ? await measureConvRate({ threads: job.threads }) : undefined, maxRss: maxRssBytes() },
        };
      case 'load':
        return { ok: true, result: await runLoad(job) };
      case 'image':
        return { ok: true, result: await runImage(job) };
      case 'hires':
        return { ok: true, result: await runHires(job) };
    }
  } catch (err) {
    return { ok: false, error: err instanceof Error ? err.message : String(err), maxRss: maxRssBytes() };
  }
}

if (process.send) {
  process.once('message', (job: WorkerJob) => {
    void handle(job).then((reply) => {
      process.send!(reply, () => process.exit(0));
    });
  });
}
