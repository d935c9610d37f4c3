/**
 * The hires-fix measurement of `sdgen bench --hires BASE:TARGET` (issue 19): one image through
 * the library's hires fix (StableDiffusionPipeline.generate with params.hires), timed per pass.
 * The pipeline's own timings cover pass 2 only, so the worker (./worker.ts) records every
 * onnxruntime session run of the image (which model ran, for how long, at which latent size) and
 * this module sorts the records into the two passes and the VAE work between and after them.
 * Pure logic: option parsing, the role of a session run, the per-pass summary, the derived
 * speed-ups.
 */
import { UsageError } from '../errors.js';
import type { ToMeOptions } from '../tome/types.js';
import { median } from './report.js';

/** What a recorded session run was: a UNet call, a VAE decoder/encoder call, a text encoder call. */
export type RunRole = 'unet' | 'decoder' | 'encoder' | 'text' | 'other';

/** One onnxruntime session run during the timed image. */
export interface RunRecord {
  role: RunRole;
  /** performance.now() at the start of the run (ms) */
  start: number;
  ms: number;
  /** UNet calls: the latent height and width of `sample` */
  latent?: [number, number];
}

/**
 * The role of a session run, from its input names and the dims of its feeds: a text encoder takes
 * `input_ids`; a UNet takes a timestep (`timestep`, `timesteps`, `t`) or `encoder_hidden_states`;
 * the VAE decoder `latent_sample` (or a 4-channel picture with no timestep); the VAE encoder a
 * 3-channel picture.
 */
export function sessionRole(inputNames: readonly string[], feedDims: Readonly<Record<string, readonly number[]>>): RunRole {
  const names = new Set(inputNames);
  if (names.has('input_ids')) return 'text';
  if (names.has('encoder_hidden_states') || names.has('timestep') || names.has('timesteps') || names.has('t')) return 'unet';
  if (names.has('latent_sample')) return 'decoder';
  const pictures = Object.values(feedDims).filter((d) => d.length === 4);
  if (pictures.length === 1) {
    const ch = pictures[0]![1];
    if (ch === 3) return 'encoder';
    if (ch === 4) return 'decoder';
  }
  return 'other';
}

/** The latent height and width of a UNet run: the spatial dims of its 4-D `sample` feed. */
export function unetLatent(feedDims: Readonly<Record<string, readonly number[]>>): [number, number] | undefined {
  const d = feedDims['sample'] ?? Object.values(feedDims).find((x) => x.length === 4);
  return d && d.length === 4 ? [d[2]!, d[3]!] : undefined;
}

export interface HiresPassTiming {
  /** image side (pixels) */
  size: number;
  /** UNet calls made (one per step; a call carries the guided batch of 2) */
  calls: number;
  /** UNet time of the pass (ms), every call */
  unetMs: number;
  /** median UNet call (ms) */
  perCallMs?: number;
  /** the pass's first UNet call (ms): a freshly opened session's first run included */
  firstCallMs?: number;
}

/** The session runs of one hires image, sorted into passes. */
export interface HiresCallSummary {
  pass1: HiresPassTiming;
  pass2: HiresPassTiming;
  /** text encoder runs, both passes (ms) */
  textEncoderMs: number;
  /** pixel-space upscalers: the decode of pass 1's latents and the encode of the resized picture (ms) */
  upscaleDecodeMs: number;
  upscaleEncodeMs: number;
  /** end of pass 1's last UNet call → start of pass 2's first (upscale, pass-2 prompts, UNet switch) (ms) */
  betweenMs?: number;
  /** VAE decoder runs after pass 2 (ms; tiles summed) */
  finalDecodeRunsMs: number;
}

function passTiming(size: number, recs: readonly RunRecord[]): HiresPassTiming {
  const ms = recs.map((r) => r.ms);
  return {
    size,
    calls: recs.length,
    unetMs: ms.reduce((a, b) => a + b, 0),
    ...(recs.length > 0 ? { perCallMs: median(ms)!, firstCallMs: ms[0]! } : {}),
  };
}

/**
 * Sorts the runs of a hires image (in run order) into pass 1 (UNet calls at the base latent
 * size), pass 2 (at the hires latent size; the two must differ), the VAE runs between them
 * (pixel-space upscalers) and those after pass 2 (the final decode).
 */
export function summarizeHiresRuns(records: readonly RunRecord[], base: { size: number; latent: number }, target: { size: number; latent: number }): HiresCallSummary {
  if (base.latent === target.latent) throw new Error('summarizeHiresRuns: the passes must have different latent sizes');
  const at = (r: RunRecord, l: number): boolean => r.role === 'unet' && r.latent?.[0] === l && r.latent[1] === l;
  const p1 = records.filter((r) => at(r, base.latent));
  const p2 = records.filter((r) => at(r, target.latent));
  const p1End = p1.length > 0 ? p1[p1.length - 1]!.start + p1[p1.length - 1]!.ms : -Infinity;
  const p2Start = p2.length > 0 ? p2[0]!.start : Infinity;
  const p2End = p2.length > 0 ? p2[p2.length - 1]!.start + p2[p2.length - 1]!.ms : Infinity;
  const sum = (pred: (r: RunRecord) => boolean): number => records.filter(pred).reduce((a, r) => a + r.ms, 0);
  const between = (r: RunRecord): boolean => r.start >= p1End && r.start < p2Start;
  return {
    pass1: passTiming(base.size, p1),
    pass2: passTiming(target.size, p2),
    textEncoderMs: sum((r) => r.role === 'text'),
    upscaleDecodeMs: sum((r) => r.role === 'decoder' && between(r)),
    upscaleEncodeMs: sum((r) => r.role === 'encoder' && between(r)),
    ...(p1.length > 0 && p2.length > 0 ? { betweenMs: p2Start - p1End } : {}),
    finalDecodeRunsMs: sum((r) => r.role === 'decoder' && r.start >= p2End),
  };
}

/** `--hires BASE:TARGET` (square sides in pixels, e.g. 512:1024 or 512x512:1024x1024). */
export function parseHiresSizes(v: unknown): { base: number; target: number } | undefined {
  if (v === undefined || v === null || v === '' || v === false) return undefined;
  if (typeof v === 'object' && 'base' in (v as object) && 'target' in (v as object)) {
    const o = v as { base: unknown; target: unknown };
    return { base: Number(o.base), target: Number(o.target) };
  }
  const side = (s: string): number => {
    const m = /^(\d+)(?:x(\d+))?$/i.exec(s);
    if (!m) throw new UsageError(`--hires: ${s} is not a size (e.g. 512 or 512x512)`);
    if (m[2] !== undefined && m[2] !== m[1]) throw new UsageError(`--hires: ${s}: the benchmark runs square images only`);
    return Number(m[1]);
  };
  const parts = String(v).split(':');
  if (parts.length !== 2) throw new UsageError(`--hires: expected BASE:TARGET, e.g. 512:1024 (got ${String(v)})`);
  return { base: side(parts[0]!.trim()), target: side(parts[1]!.trim()) };
}

/** `--hires-steps P1+P2` (e.g. 20+10): the steps of pass 1 and of pass 2. */
export function parseHiresSteps(v: unknown): [number, number] | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  if (Array.isArray(v) && v.length === 2) return [Number(v[0]), Number(v[1])];
  const m = /^\s*(\d+)\s*\+\s*(\d+)\s*$/.exec(String(v));
  if (!m) throw new UsageError(`--hires-steps: expected PASS1+PASS2 steps, e.g. 20+10 (got ${String(v)})`);
  return [Number(m[1]), Number(m[2])];
}

/** Checks the hires settings of a bench run (UsageError, one line). */
export function validateHiresBench(h: { base: number; target: number }, steps: readonly [number, number], strength: number): void {
  for (const [what, s] of [['base', h.base], ['target', h.target]] as const) {
    if (!Number.isInteger(s) || s < 64 || s % 64 !== 0) throw new UsageError(`--hires: the ${what} size must be a multiple of 64 pixels (got ${s})`);
  }
  if (h.target <= h.base) throw new UsageError(`--hires: the target size must be larger than the base size (got ${h.base}:${h.target})`);
  if (!steps.every((s) => Number.isInteger(s) && s >= 1)) throw new UsageError(`--hires-steps: both passes need at least 1 step (got ${steps.join('+')})`);
  if (!(strength > 0 && strength <= 1)) throw new UsageError(`--hires-strength must be in (0, 1] (got ${strength})`);
}

/** The flat ToMe keys a preset may set (src/tome/options.ts ToMeFlatOptions). */
const TOME_KEYS = ['tome', 'sx', 'sy', 'maxDownsample', 'tomeRand', 'mergeAttn', 'mergeCrossattn', 'mergeMlp', 'tomeMinWidth', 'tomeMinHeight'] as const;

/** The ToMe keys of a preset's options (the rest of the preset does not concern the measurement). */
export function presetToMeKeys(options: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of TOME_KEYS) if (options[k] !== undefined) out[k] = options[k];
  return out;
}

/** One line describing a configuration's ToMe settings. */
export function describeToMe(t: ToMeOptions): string {
  if (!(t.ratio > 0)) return 'off';
  const min = t.minWidth > 0 || t.minHeight > 0 ? `, from ${t.minWidth}×${t.minHeight}` : '';
  return `ratio ${t.ratio}, max downsample ${t.maxDownsample}${min}`;
}

/** One configuration of the hires measurement (ToMe by the preset, or ToMe off). */
export interface HiresRunResult {
  label: string;
  /** the ToMe settings of both passes (the size thresholds decide where they apply) */
  tome: string;
  status: 'ok' | 'skipped' | 'failed';
  note?: string;
  /** whether each pass ran the ToMe graph */
  pass1Tome?: boolean;
  pass2Tome?: boolean;
  pass1?: HiresPassTiming;
  pass2?: HiresPassTiming;
  textEncoderMs?: number;
  upscaleDecodeMs?: number;
  upscaleEncodeMs?: number;
  betweenMs?: number;
  /** the final decode at the hires size (the pipeline's own timing, tiling included) */
  vaeDecodeMs?: number;
  pngMs?: number;
  /** generate() from its call to the image, plus the PNG encode (model load excluded) */
  totalMs?: number;
  loadMs?: number;
  peakRss?: number;
}

export interface HiresReport {
  base: number;
  target: number;
  /** steps as asked (pass 1, pass 2); each pass's `calls` is what ran */
  steps: [number, number];
  upscaler: string;
  strength: number;
  preset: string;
  attention: string;
  runs: HiresRunResult[];
  /** ToMe off ÷ preset: pass 2's median UNet call */
  pass2PerCallSpeedup?: number;
  /** ToMe off ÷ preset: pass 2's UNet total */
  pass2Speedup?: number;
  /** ToMe off ÷ preset: the whole image */
  imageSpeedup?: number;
}

/** Fills the speed-ups of a hires report: its run without ToMe over its run with the preset. */
export function deriveHiresSpeedups(r: HiresReport): void {
  const off = r.runs.find((x) => x.label === 'off' && x.status === 'ok');
  const on = r.runs.find((x) => x.label !== 'off' && x.status === 'ok');
  if (!off || !on) return;
  const ratio = (a: number | undefined, b: number | undefined): number | undefined => (a !== undefined && b !== undefined && b > 0 ? a / b : undefined);
  const pc = ratio(off.pass2?.perCallMs, on.pass2?.perCallMs);
  const p2 = ratio(off.pass2?.unetMs, on.pass2?.unetMs);
  const img = ratio(off.totalMs, on.totalMs);
  if (pc !== undefined) r.pass2PerCallSpeedup = pc;
  if (p2 !== undefined) r.pass2Speedup = p2;
  if (img !== undefined) r.imageSpeedup = img;
}
