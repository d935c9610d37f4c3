/**
 * `runBench`: the UNet benchmark behind `sdgen bench`. For each size × ToMe ratio × attention
 * mode it times UNet calls (batch 2 = classifier-free guidance) in child processes of their own
 * (peak memory per configuration), interleaved round-robin across configurations; counts the
 * FLOPs of the graph actually run from onnxruntime's profile; measures the machine's MatMul rate
 * with onnxruntime; times one whole image; with `--hires`, times one hires-fix image per pass
 * with a preset's ToMe and without (./hires.ts); writes JSON + Markdown to the results directory.
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { SdgenError, UsageError } from '../errors.js';
import { defaultCacheDir } from '../models/cache-dir.js';
import { defaultThreadCount } from '../models/session.js';
import { estimateImageMs, estimateProcessMs, fits, roundCalls, roundOrder, type TimedConfig } from './budget.js';
import { SDGEN_VERSION } from '../version.js';
import type { ToMeOptions } from '../tome/types.js';
import { runInChild } from './child.js';
import type { UnetJobResult } from './jobs.js';
import { GB, attentionShape, availableMemory, fmtGB, predictPeakBytes } from './memory.js';
import { deriveHiresSpeedups, describeToMe, presetToMeKeys, validateHiresBench, type HiresReport, type HiresRunResult } from './hires.js';
import { parseBenchOptions } from './options.js';
import { floorMsOf } from './profile.js';
import { deriveRatios, median, renderMarkdown } from './report.js';
import type { BenchAttention, BenchConv, BenchOptions, BenchReport, ConfigResult, ImageResult, MachineInfo } from './types.js';
import { prepareVariant, variantLabel, type PreparedVariant } from './variants.js';

export type { BenchOptions, BenchReport, ConfigResult, ImageResult, BenchAttention, BenchConv } from './types.js';
export type { HiresReport, HiresRunResult, HiresPassTiming } from './hires.js';
export { summarizeProfile, nodeFlops, floorMsOf } from './profile.js';
export { predictPeakBytes } from './memory.js';
export { parseBenchOptions } from './options.js';

export const DEFAULT_BENCH_OPTIONS: Readonly<Omit<BenchOptions, 'log' | 'model' | 'cacheDir' | 'threads' | 'memoryLimit' | 'hires'>> = Object.freeze({
  sizes: [512, 768, 1024],
  ratios: [0, 0.3, 0.5, 0.6],
  maxDownsample: 'auto' as const,
  attention: ['standard', 'fused'] as BenchAttention[],
  conv: 'winograd' as BenchConv,
  steps: 2,
  rounds: 2,
  batch: 2,
  batch1Sizes: [768],
  profile: false,
  out: 'bench/results',
  imageSize: 512,
  imageSteps: 20,
  budget: 30,
  hiresSteps: [20, 10] as [number, number],
  hiresPreset: 'tome-hires',
  hiresUpscaler: 'Latent',
  hiresStrength: 0.7,
});

/** ToMe ratio of the batch-1 rows (with ratio 0): the issue's 768² batch-1 target. */
export const B1_RATIO = 0.5;

/** Default ratio and attention of the whole-image run: the configuration sdgen recommends. */
export const IMAGE_RATIO = 0.5;
export const IMAGE_ATTENTION: BenchAttention = 'fused';

function validate(o: BenchOptions): void {
  if (o.sizes.some((s) => !Number.isInteger(s) || s < 64 || s % 64 !== 0)) {
    throw new UsageError(`--sizes: each size must be a multiple of 64 pixels (got ${o.sizes.join(',')})`);
  }
  if (o.ratios.length === 0 || o.ratios.some((r) => !(r >= 0 && r <= 0.75))) {
    throw new UsageError(`--ratios: each ratio must be in [0, 0.75] (sx = sy = 2) (got ${o.ratios.join(',')})`);
  }
  if (o.attention.length === 0 || o.attention.some((a) => a !== 'standard' && a !== 'fused')) {
    throw new UsageError(`--attention: standard and/or fused (got ${o.attention.join(',')})`);
  }
  if (!Number.isInteger(o.steps) || o.steps < 1) throw new UsageError(`--steps must be a positive integer (got ${o.steps})`);
  if (!Number.isInteger(o.batch) || o.batch < 1) throw new UsageError(`--batch must be a positive integer (got ${o.batch})`);
  if (!(o.budget >= 0)) throw new UsageError(`--budget must be a number of minutes, 0 for none (got ${o.budget})`);
  if (o.hires) validateHiresBench(o.hires, o.hiresSteps, o.hiresStrength);
}

/** The UNet file and (if any) the pipeline folder of `--model`, or of the synthetic sd15 model. */
async function resolveModel(o: BenchOptions, cacheDir: string, log: (l: string) => void): Promise<{ unet: string; folder?: string; label: string }> {
  if (o.model) {
    const p = path.resolve(o.model);
    if (p.endsWith('.onnx')) {
      if (!existsSync(p)) throw new SdgenError(`--model: ${p} not found`);
      return { unet: p, label: o.model };
    }
    const unet = path.join(p, 'unet', 'model.onnx');
    if (!existsSync(unet)) throw new SdgenError(`--model: ${p} has no unet/model.onnx`);
    return { unet, folder: p, label: o.model };
  }
  const folder = path.join(cacheDir, 'bench-models', 'sd15');
  const unet = path.join(folder, 'unet', 'model.onnx');
  const done = path.join(folder, '.complete');
  if (!existsSync(done)) {
    log(`Synthesizing the SD 1.5 model (random weights, real shapes) into ${folder} …`);
    const { synthesize } = await import('../synth/index.js');
    const t0 = performance.now();
    let lastPct = -1;
    await synthesize({
      arch: 'sd15',
      outDir: folder,
      seed: 0,
      onProgress: (stage, d, total) => {
        const pctNow = Math.floor((d / Math.max(1, total)) * 10);
        if (stage === 'unet' && pctNow !== lastPct) {
          lastPct = pctNow;
          log(`  unet weights ${pctNow * 10}%`);
        }
      },
    });
    await writeFile(done, new Date().toISOString());
    log(`  done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  }
  return { unet, folder, label: 'synthetic sd15 (random weights)' };
}

function machineInfo(threads: number): MachineInfo {
  return {
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    logicalCpus: os.cpus().length,
    threads,
    totalMem: os.totalmem(),
    availableMemAtStart: availableMemory(),
    loadAverage: os.loadavg(),
    node: process.version,
    ort: ort.env.versions.node ?? ort.env.versions.common,
    sdgen: SDGEN_VERSION,
    platform: `${process.platform}-${process.arch}`,
  };
}

/** The ToMe settings of a preset (`--hires-preset`): its ToMe keys over sdgen's ToMe defaults; a UsageError for an unknown or invalid one. */
async function presetToMe(name: string): Promise<ToMeOptions> {
  const { findPreset } = await import('../config/presets.js');
  const { DEFAULT_TOME, tomeFromFlat, tomeToFlat, validateToMeOptions } = await import('../tome/options.js');
  const preset = findPreset(name);
  const t = tomeFromFlat({ ...tomeToFlat(DEFAULT_TOME), ...presetToMeKeys(preset.options as Record<string, unknown>) } as ReturnType<typeof tomeToFlat>);
  validateToMeOptions(t);
  if (!(t.ratio > 0)) throw new UsageError(`--hires-preset ${name}: the preset does not turn ToMe on (its ratio is 0)`);
  return t;
}

/**
 * The hires-fix measurement (`--hires`): the preset's ToMe run and the ToMe-off run, each first
 * warmed untimed (its UNet graphs, decoder and encoder into the caches, as a user's earlier runs
 * leave them) and then timed in a fresh process, so each peak RSS is that image's own.
 */
async function runHiresBench(
  o: BenchOptions,
  presetTome: ToMeOptions,
  folder: string | undefined,
  env: { threads: number; cacheDir: string; limit: number; deadline: number; log: (l: string) => void },
): Promise<HiresReport> {
  const h = o.hires!;
  const attention = o.imageAttention ?? IMAGE_ATTENTION;
  const report: HiresReport = {
    base: h.base, target: h.target, steps: [...o.hiresSteps], upscaler: o.hiresUpscaler, strength: o.hiresStrength,
    preset: o.hiresPreset, attention, runs: [],
  };
  const { DEFAULT_TOME } = await import('../tome/options.js');
  const configs = [
    { label: o.hiresPreset, tome: presetTome },
    { label: 'off', tome: { ...DEFAULT_TOME, ratio: 0 } },
  ];
  for (const c of configs) {
    const run: HiresRunResult = { label: c.label, tome: describeToMe(c.tome), status: 'ok' };
    report.runs.push(run);
    if (!folder) {
      run.status = 'skipped';
      run.note = '--model is a UNet file, not a pipeline folder';
      continue;
    }
    if (Date.now() > env.deadline) {
      run.status = 'skipped';
      run.note = `not run: the ${o.budget}-minute --budget is spent`;
      env.log(`Hires ${c.label}: ${run.note}`);
      continue;
    }
    const job = {
      kind: 'hires' as const, modelDir: folder, base: h.base, target: h.target, steps: o.hiresSteps, upscaler: o.hiresUpscaler,
      strength: o.hiresStrength, tome: c.tome, attention, conv: o.conv, threads: env.threads, cacheDir: env.cacheDir,
    };
    const t0 = Date.now();
    const warm = await runInChild({ ...job, warmOnly: true }, { memoryLimit: env.limit });
    env.log(`Hires ${c.label}: pipeline warmed into the caches (${((Date.now() - t0) / 1000).toFixed(0)} s)${warm.ok ? '' : `: ${warm.error}`}`);
    env.log(`Timing one hires image ${h.base}² → ${h.target}², ${o.hiresSteps[0]} + ${o.hiresSteps[1]} steps, ${o.hiresUpscaler}, ToMe ${run.tome} …`);
    const out = await runInChild(job, {
      memoryLimit: Math.min(env.limit, availableMemory() + 0.5 * GB),
      ...(o.configTimeout ? { timeoutMs: o.configTimeout * 1000 } : {}),
    });
    run.peakRss = out.peakRss;
    if (!out.ok) {
      run.status = out.killed ? 'skipped' : 'failed';
      run.note = out.error;
      env.log(`  ${run.status}: ${out.error}`);
      continue;
    }
    if (out.result.kind !== 'hires') continue;
    const r = out.result;
    Object.assign(run, {
      pass1Tome: r.pass1Tome, pass2Tome: r.pass2Tome, pass1: r.calls.pass1, pass2: r.calls.pass2, textEncoderMs: r.calls.textEncoderMs,
      upscaleDecodeMs: r.calls.upscaleDecodeMs, upscaleEncodeMs: r.calls.upscaleEncodeMs, vaeDecodeMs: r.vaeDecodeMs, pngMs: r.pngMs,
      totalMs: r.totalMs, loadMs: r.loadMs,
      ...(r.calls.betweenMs !== undefined ? { betweenMs: r.calls.betweenMs } : {}),
    });
    if (r.passSteps[0] !== r.calls.pass1.calls || r.passSteps[1] !== r.calls.pass2.calls) {
      run.note = `the pipeline reported ${r.passSteps.join(' + ')} steps, the UNet calls counted by size ${r.calls.pass1.calls} + ${r.calls.pass2.calls}`;
    }
    const sec = (ms: number | undefined): string => (ms === undefined ? '–' : (ms / 1000).toFixed(2));
    env.log(`  pass 1 UNet ${sec(r.calls.pass1.unetMs)} s (${r.calls.pass1.calls} calls, ${sec(r.calls.pass1.perCallMs)} s/call), pass 2 UNet ${sec(r.calls.pass2.unetMs)} s (${r.calls.pass2.calls} calls, ${sec(r.calls.pass2.perCallMs)} s/call), VAE decode ${sec(r.vaeDecodeMs)} s, total ${sec(r.totalMs)} s, peak ${fmtGB(out.peakRss)} GB`);
  }
  deriveHiresSpeedups(report);
  return report;
}

/** Splits `steps` timed calls over `rounds` rounds (earlier rounds get the extra ones). */
export function callsPerRound(steps: number, rounds: number): number[] {
  const r = Math.max(1, Math.min(rounds, steps));
  return Array.from({ length: r }, (_, i) => Math.floor(steps / r) + (i < steps % r ? 1 : 0));
}

/**
 * Runs the benchmark. Accepts typed options or the raw `sdgen bench` flags (strings such as
 * `sizes: '512,768'`, see ./options.ts). With `json: true` the report is printed as JSON on
 * stdout and progress goes to stderr.
 */
export async function runBench(input: Partial<BenchOptions> | Record<string, unknown> = {}): Promise<BenchReport> {
  const { json, ...partial } = parseBenchOptions(input as Record<string, unknown>);
  const o: BenchOptions = { ...DEFAULT_BENCH_OPTIONS, ...partial } as BenchOptions;
  if (partial.rounds === undefined) o.rounds = o.steps > 1 ? DEFAULT_BENCH_OPTIONS.rounds : 1;
  validate(o);
  const hiresTome = o.hires ? await presetToMe(o.hiresPreset) : undefined;
  const log = o.log ?? (json ? (l: string) => process.stderr.write(`${l}\n`) : (l: string) => console.log(l));
  const cacheDir = o.cacheDir ?? defaultCacheDir();
  const threads = o.threads ?? defaultThreadCount();
  const started = new Date();
  // --budget: stop starting work that is not expected to end in time (0 = no limit)
  // plans end two minutes early (7 % of shorter budgets): estimates are medians, not bounds (a
  // 30-minute run planned to the minute ended 3 s over, its whole image a minute over estimate)
  const deadline = o.budget > 0 ? started.getTime() + o.budget * 60_000 - Math.min(120_000, o.budget * 4_200) : Infinity;
  const machine = machineInfo(threads);
  const limit = o.memoryLimit ?? Math.max(1 * GB, machine.availableMemAtStart - 1.5 * GB);
  log(`sdgen bench: ${machine.cpuModel}, ${threads} threads, ${fmtGB(machine.totalMem)} GB RAM, ${fmtGB(machine.availableMemAtStart)} GB available; memory limit per configuration ${fmtGB(limit)} GB`);

  const model = await resolveModel(o, cacheDir, log);
  const report: BenchReport = {
    started: started.toISOString(),
    finished: '',
    machine,
    model: model.label,
    options: { ...o, log: undefined } as Omit<BenchOptions, 'log'>,
    configs: [],
    files: [],
  };
  delete (report.options as Partial<BenchOptions>).log;

  // --- the machine's MatMul rate
  log('Measuring the MatMul and convolution rates …');
  const mm = await runInChild({ kind: 'matmul', n: o.matmulSize ?? 2048, calls: 8, threads, conv: true }, { memoryLimit: limit });
  if (mm.ok && mm.result.kind === 'matmul') {
    report.matmul = mm.result.rate;
    report.conv = mm.result.conv;
    report.floorGflops = Math.max(mm.result.rate.gflops, mm.result.conv?.gflops ?? 0);
    log(`  MatMul ${mm.result.rate.gflops.toFixed(0)} GFLOP/s median (best ${mm.result.rate.bestGflops.toFixed(0)})` +
      (mm.result.conv ? `, 3×3 conv ${mm.result.conv.gflops.toFixed(0)} GFLOP/s median (best ${mm.result.conv.bestGflops.toFixed(0)})` : ''));
  } else if (!mm.ok) log(`  failed: ${mm.error}`);

  // --- variants. 'standard' rows run the exported graph (ToMe-patched for r > 0) as it is;
  // 'fused' rows run sdgen's optimized graph: fused attention and --conv's convolutions.
  const imageTargetRatio = o.imageRatio ?? IMAGE_RATIO;
  const imageTargetAttention = o.imageAttention ?? IMAGE_ATTENTION;
  const variantOf = (ratio: number, attention: BenchAttention) => ({ ratio, attention, conv: attention === 'fused' ? o.conv : ('direct' as BenchConv), maxDownsample: o.maxDownsample });
  const variants = new Map<string, PreparedVariant | string>();
  // only the grid's rows time these graphs (`--sizes none` leaves just the image and hires runs)
  if (o.sizes.length > 0) log('Preparing UNet variants …');
  for (const ratio of o.sizes.length > 0 ? o.ratios : []) {
    for (const attention of o.attention) {
      const v = variantOf(ratio, attention);
      try {
        const pv = await prepareVariant(model.unet, v, cacheDir, log);
        if (pv.convs > 0) {
          // sdgen loads a Winograd graph through its optimized-graph cache: the first load
          // optimizes it (NCHWc layouts, prepacking; ~20 s for SD 1.5) and stores the result,
          // later ones read it back. So does the benchmark: one untimed load here, so that the
          // timed processes measure what a user's later runs do.
          const t0 = Date.now();
          const warm = await runInChild({ kind: 'load', modelPath: pv.path, threads, cacheDir }, { memoryLimit: limit });
          if (!warm.ok) throw new Error(`loading the Winograd variant failed: ${warm.error}`);
          const cached = warm.result.kind === 'load' && warm.result.cached;
          const notice = warm.result.kind === 'load' ? warm.result.notice : undefined;
          log(`    ${cached ? 'its optimized graph is in the cache' : notice ?? 'optimized once into the optimized-graph cache'} (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
        }
        variants.set(variantLabel(v), pv);
      } catch (err) {
        variants.set(variantLabel(v), err instanceof Error ? err.message : String(err));
      }
    }
  }

  // The whole-image run loads the pipeline through the same caches: its first load writes the
  // UNet's and the VAE decoder's Winograd and optimized graphs. Done now, untimed, so that the
  // image run (and the budget planned for it) measures a user's later runs.
  if (o.imageSize > 0 && model.folder) {
    const t0 = Date.now();
    const warm = await runInChild(
      { kind: 'image', modelDir: model.folder, size: o.imageSize, steps: 0, ratio: imageTargetRatio, attention: imageTargetAttention, conv: o.conv, threads, cacheDir, warmOnly: true },
      { memoryLimit: limit },
    );
    log(`  whole-image pipeline loaded once into the caches (${((Date.now() - t0) / 1000).toFixed(0)} s)${warm.ok ? '' : `: ${warm.error}`}`);
  }

  // --- configurations
  const configs: ConfigResult[] = [];
  const prepared = new Map<ConfigResult, PreparedVariant>();
  const grid: { size: number; batch: number; ratios: number[] }[] = [];
  for (const size of o.sizes) {
    grid.push({ size, batch: o.batch, ratios: o.ratios });
    if (o.batch !== 1 && o.batch1Sizes.includes(size)) grid.push({ size, batch: 1, ratios: o.ratios.filter((r) => r === 0 || r === B1_RATIO) });
  }
  for (const { size, batch, ratios } of grid) {
    for (const ratio of ratios) {
      for (const attention of o.attention) {
        const v = variants.get(variantLabel(variantOf(ratio, attention)))!;
        const weightsBytes = typeof v === 'string' ? 0 : v.weightsBytes;
        const sdxl = typeof v !== 'string' && v.sdxl;
        const c: ConfigResult = {
          size, batch, ratio, attention, status: 'ok', samplesMs: [],
          predictedPeak: predictPeakBytes({ weightsBytes, size, batch, ratio, attention, ...attentionShape(sdxl) }),
          ...(typeof v !== 'string' && typeof v.maxDownsample === 'number' ? { maxDownsample: v.maxDownsample } : {}),
        };
        if (typeof v === 'string') {
          c.status = 'failed';
          c.note = v;
        } else if (c.predictedPeak > limit) {
          c.status = 'skipped';
          c.note = `predicted peak ${fmtGB(c.predictedPeak)} GB > ${fmtGB(limit)} GB available (estimate)`;
        } else prepared.set(c, v);
        configs.push(c);
      }
    }
  }
  report.configs = configs;
  const runnable = configs.filter((c) => c.status === 'ok');
  const plan = callsPerRound(o.steps, o.rounds);
  o.rounds = plan.length;
  report.options.rounds = plan.length;
  log(`Timing ${runnable.length} configurations (${configs.length - runnable.length} skipped), ${o.steps} calls each in ${plan.length} round(s) …`);
  const profileDir = path.join(os.tmpdir(), `sdgen-bench-prof-${process.pid}`);
  await mkdir(profileDir, { recursive: true });
  const imageTarget = { size: o.imageSize, batch: 2, ratio: imageTargetRatio, attention: imageTargetAttention };
  const timed = (): TimedConfig[] =>
    configs.filter((c) => c.samplesMs.length > 0).map((c) => ({ ...c, perCallMs: median(c.samplesMs)!, loadMs: c.loadMs ?? 0, warmupMs: c.warmupMs }));
  // --- one whole image: right after round 1, so that later rounds (which the budget may cut
  // short) never take its place
  let imageDone = false;
  const runImage = async (): Promise<void> => {
    imageDone = true;
    if (o.imageSize <= 0) return;
    const { ratio, attention } = imageTarget;
    const img: ImageResult = { size: o.imageSize, steps: o.imageSteps, ratio, attention, status: 'ok' };
    const imageEstimate = estimateImageMs(imageTarget, o.imageSteps, timed());
    if (!model.folder) {
      img.status = 'skipped';
      img.note = '--model is a UNet file, not a pipeline folder';
    } else if (!fits(Date.now(), imageEstimate, 0, deadline)) {
      img.status = 'skipped';
      img.note = `not run: over the ${o.budget}-minute --budget (estimated ${((imageEstimate ?? 0) / 1000).toFixed(0)} s)`;
      log(`Whole image: ${img.note}`);
    } else {
      log(`Timing one whole image (${o.imageSize}², ${o.imageSteps} steps, ToMe ${ratio}, ${attention} attention) …`);
      const out = await runInChild(
        { kind: 'image', modelDir: model.folder, size: o.imageSize, steps: o.imageSteps, ratio, attention, conv: o.conv, threads, cacheDir },
        { memoryLimit: Math.min(limit, availableMemory() + 0.5 * GB) },
      );
      img.peakRss = out.peakRss;
      if (out.ok && out.result.kind === 'image') {
        const r = out.result;
        Object.assign(img, { loadMs: r.loadMs, textEncoderMs: r.textEncoderMs, unetMs: r.unetMs, vaeMs: r.vaeMs, pngMs: r.pngMs, totalMs: r.totalMs });
        const outside = r.totalMs - r.unetMs;
        log(`  total ${(r.totalMs / 1000).toFixed(1)} s: UNet ${(r.unetMs / 1000).toFixed(1)} s, text ${(r.textEncoderMs / 1000).toFixed(2)} s, VAE ${(r.vaeMs / 1000).toFixed(1)} s, PNG ${(r.pngMs / 1000).toFixed(2)} s (outside UNet ${((outside / r.totalMs) * 100).toFixed(1)}%)`);
      } else if (!out.ok) {
        img.status = out.killed ? 'skipped' : 'failed';
        img.note = out.error;
        log(`  ${img.status}: ${out.error}`);
      }
    }
    report.image = img;
  };
  const imageReserve = (): number => (o.imageSize > 0 && !imageDone ? estimateImageMs(imageTarget, o.imageSteps, timed()) ?? 0 : 0);
  const droppedRounds = new Map<ConfigResult, number>(); // later rounds the budget did not allow
  for (let round = 0; round < plan.length; round++) {
    const order = roundOrder(runnable, round, B1_RATIO);
    const smallest = Math.min(...runnable.map((c) => c.size));
    for (const c of order) {
      if (c.status !== 'ok') continue;
      const v = prepared.get(c)!;
      const first = round === 0;
      const label = `${c.size}² b${c.batch} r${c.ratio} ${c.attention}`;
      const calls = roundCalls(c, round, plan[round]!, B1_RATIO, smallest);
      const estimate = estimateProcessMs(c, calls, timed());
      if (!fits(Date.now(), estimate, imageReserve(), deadline)) {
        const why = `the ${o.budget}-minute --budget (estimated ${((estimate ?? 0) / 1000).toFixed(0)} s more)`;
        if (first) {
          c.status = 'skipped';
          c.note = `not run: over ${why}`;
        } else droppedRounds.set(c, (droppedRounds.get(c) ?? 0) + 1);
        log(`  ${label}: round ${round + 1} not run, over ${why}`);
        continue;
      }
      const out = await runInChild(
        {
          kind: 'unet',
          modelPath: v.path,
          size: c.size,
          batch: c.batch,
          seqLen: 77,
          calls,
          threads,
          ...(first ? { profilePrefix: path.join(profileDir, `p${configs.indexOf(c)}`), profileSteady: o.profile } : {}),
          ...(v.convs > 0 ? { cacheDir } : {}),
        },
        { memoryLimit: Math.min(limit, availableMemory() + 0.5 * GB), ...(o.configTimeout ? { timeoutMs: o.configTimeout * 1000 } : {}) },
      );
      c.peakRss = Math.max(c.peakRss ?? 0, out.peakRss ?? 0) || undefined;
      if (!out.ok) {
        c.status = out.killed ? 'skipped' : 'failed';
        c.note = out.error;
        log(`  ${label}: ${c.status} — ${out.error}`);
        continue;
      }
      const r = out.result as UnetJobResult;
      c.samplesMs.push(...r.samplesMs);
      if (first) {
        c.loadMs = r.loadMs;
        c.warmupMs = r.warmupMs;
        c.flops = r.flops;
        if (r.profile) c.profile = r.profile;
        if (r.warmupProfile) c.warmupProfile = { ...r.warmupProfile, byOp: r.warmupProfile.byOp.slice(0, 24) };
      }
      log(`  ${label}: ${r.samplesMs.map((ms) => (ms / 1000).toFixed(2)).join(', ')} s/call, peak ${fmtGB(out.peakRss)} GB (round ${round + 1}/${plan.length})`);
    }
    if (round === 0) await runImage();
  }
  for (const c of configs) {
    c.medianMs = median(c.samplesMs);
    const byOp = c.profile?.byOp ?? c.warmupProfile?.byOp;
    if (c.flops && report.matmul && c.medianMs) {
      // each kernel class at its own measured rate (a Winograd UNet's convolutions are MatMuls)
      c.floorMs = byOp
        ? floorMsOf(byOp, { matmulGflops: report.matmul.gflops, convGflops: report.conv?.gflops })
        : (c.flops / ((report.floorGflops ?? report.matmul.gflops) * 1e9)) * 1000;
      c.efficiency = c.floorMs / c.medianMs;
    }
    if (c.status === 'ok' && c.peakRss && c.peakRss > 0) {
      const v = prepared.get(c);
      if (v) c.note = `${v.tomeBlocks} ToMe blocks${typeof v.maxDownsample === 'number' ? ` (max downsample ${v.maxDownsample})` : ''}, ${v.fused} fused${v.convs > 0 ? `, ${v.convs} Winograd convs` : ''}`;
      const dropped = droppedRounds.get(c) ?? 0;
      if (dropped > 0) c.note = `${c.note ? `${c.note}; ` : ''}${plan.length - dropped} of ${plan.length} rounds (--budget)`;
    }
  }
  deriveRatios(configs);

  if (!imageDone) await runImage(); // (no rounds planned)
  if (o.hires) report.hires = await runHiresBench(o, hiresTome!, model.folder, { threads, cacheDir, limit, deadline, log });

  report.finished = new Date().toISOString();
  // --out: a directory, or a .json/.md file name (the other format beside it)
  const outAbs = path.resolve(o.out);
  const ext = path.extname(outAbs).toLowerCase();
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const base = ext === '.json' || ext === '.md' ? outAbs.slice(0, -ext.length) : path.join(outAbs, `bench-${stamp}`);
  await mkdir(path.dirname(base), { recursive: true });
  const md = renderMarkdown(report);
  const files = [`${base}.json`, `${base}.md`];
  report.files = files;
  await writeFile(files[0]!, JSON.stringify(report, null, 2));
  await writeFile(files[1]!, md);
  log('');
  if (json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else log(md);
  log(`Results: ${files.join(', ')}`);
  return report;
}
