/**
 * Benchmark child process: runs one job (UNet timing, MatMul rate, whole image, session load)
 * in a process of its own, so that its peak memory (`process.resourceUsage().maxRSS`) is its
 * own, and reports the result to the parent over IPC. Started by ./child.ts.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { measureConvRate, measureMatMulRate } from './matmul-rate.js';
import { xorshiftFill as fill } from './inputs.js';
import { maxRssBytes } from './memory.js';
import { summarizeProfile, type ProfileEvent, type ProfileSummary } from './profile.js';
import type { WorkerJob, WorkerReply, UnetJobResult, ImageJobResult, LoadJobResult } from './jobs.js';
import { DEFAULT_MEMORY_OPTIONS } from '../optimize/session-cache.js';

/** Inputs for one UNet call, shaped from the session's own metadata. */
export function unetFeeds(session: ort.InferenceSession, batch: number, latentH: number, latentW: number, seqLen: number): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  const meta = session.inputMetadata;
  for (const m of meta) {
    if (!m.isTensor) throw new Error(`input ${m.name} is not a tensor`);
    const name = m.name;
    const dims = m.shape;
    if (name === 'sample' || (dims.length === 4 && !('sample' in feeds) && name.includes('sample'))) {
      const ch = typeof dims[1] === 'number' ? dims[1] : 4;
      feeds[name] = makeFloat(m.type, fill(batch * ch * latentH * latentW, 1), [batch, ch, latentH, latentW]);
    } else if (name === 'timestep' || name === 'timesteps' || name === 't') {
      const shape = dims.length === 0 ? [] : [batch];
      const count = dims.length === 0 ? 1 : batch;
      if (m.type === 'int64') feeds[name] = new ort.Tensor('int64', BigInt64Array.from({ length: count }, () => 500n), shape);
      else feeds[name] = makeFloat(m.type, new Float32Array(count).fill(500), shape);
    } else if (name === 'encoder_hidden_states') {
      const d = typeof dims[2] === 'number' ? dims[2] : 768;
      feeds[name] = makeFloat(m.type, fill(batch * seqLen * d, 2).map((v) => v * 0.5), [batch, seqLen, d]);
    } else {
      throw new Error(`UNet input ${name} is not one the benchmark knows how to feed`);
    }
  }
  return feeds;
}

function makeFloat(type: string, data: Float32Array, dims: number[]): ort.Tensor {
  if (type === 'float16') {
    const h = new Uint16Array(data.length);
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (let i = 0; i < data.length; i++) {
      f[0] = data[i]!;
      const x = u[0]!;
      const e = ((x >>> 23) & 0xff) - 112;
      h[i] = ((x >>> 16) & 0x8000) | (e <= 0 ? 0 : e >= 31 ? 0x7c00 : (e << 10) | ((x >>> 13) & 0x3ff));
    }
    return new ort.Tensor('float16', h, dims);
  }
  return new ort.Tensor('float32', data, dims);
}

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
): Promise<{ session: ort.InferenceSession; cached: boolean }> {
  if (!cache) return { session: await ort.InferenceSession.create(modelPath, options), cached: false };
  const { createCachedSession } = await import('../optimize/session-cache.js');
  const r = await createCachedSession(modelPath, options, { provider: 'cpu', ...cache });
  return { session: r.session, cached: r.cached };
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
  const { session, cached } = await openSession(
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
  return { kind: 'load', loadMs, cached, firstRunMs, maxRss: maxRssBytes() };
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
