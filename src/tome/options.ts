/**
 * ToMe options, one module for all of them: the defaults, the flat form the command line,
 * `.sdgenrc`, presets and prompt files use (`tome`, `tomeRand`, `tomeMinWidth`, …) and its
 * mapping to the nested ToMeOptions both ways, the checks (a UsageError wherever options enter),
 * the key of the options that shape the rewritten graph, and the runtime quantities the pipeline
 * needs (whether ToMe applies to an image size, the shape of each `tome_rand_<k>` input).
 * Pure logic.
 */
import { UsageError } from '../errors.js';
import type { BlockInfo, ToMeOptions } from './types.js';

const MAX_DOWNSAMPLES = [1, 2, 4, 8];

/**
 * tomesd's defaults (A1111 extension's too), with ToMe off (ratio 0) and no size threshold, except
 * max downsample 'auto': tomesd's 1 on SD 1.x/2.x, 2 on SDXL, where 1 merges nothing.
 */
export const DEFAULT_TOME: Readonly<ToMeOptions> = Object.freeze({
  ratio: 0,
  sx: 2,
  sy: 2,
  maxDownsample: 'auto',
  useRand: false,
  mergeAttn: true,
  mergeCrossattn: false,
  mergeMlp: false,
  minWidth: 0,
  minHeight: 0,
});

/** The ToMe settings as flat option keys (command line, config files, prompt-file lines). */
export interface ToMeFlatOptions {
  tome: number;
  sx: number;
  sy: number;
  maxDownsample: number | 'auto';
  tomeRand: boolean;
  mergeAttn: boolean;
  mergeCrossattn: boolean;
  mergeMlp: boolean;
  tomeMinWidth: number;
  tomeMinHeight: number;
}

/** Flat option keys → ToMeOptions. */
export function tomeFromFlat(f: ToMeFlatOptions): ToMeOptions {
  return {
    ratio: f.tome,
    sx: f.sx,
    sy: f.sy,
    maxDownsample: f.maxDownsample,
    useRand: f.tomeRand,
    mergeAttn: f.mergeAttn,
    mergeCrossattn: f.mergeCrossattn,
    mergeMlp: f.mergeMlp,
    minWidth: f.tomeMinWidth,
    minHeight: f.tomeMinHeight,
  };
}

/** ToMeOptions → flat option keys (the inverse of tomeFromFlat). */
export function tomeToFlat(o: ToMeOptions): ToMeFlatOptions {
  return {
    tome: o.ratio,
    sx: o.sx,
    sy: o.sy,
    maxDownsample: o.maxDownsample,
    tomeRand: o.useRand,
    mergeAttn: o.mergeAttn,
    mergeCrossattn: o.mergeCrossattn,
    mergeMlp: o.mergeMlp,
    tomeMinWidth: o.minWidth,
    tomeMinHeight: o.minHeight,
  };
}

/** The options that shape the rewritten graph (the size thresholds only decide whether it runs). */
export function tomeGraphOptions(o: ToMeOptions): Pick<ToMeOptions, 'ratio' | 'sx' | 'sy' | 'maxDownsample' | 'useRand' | 'mergeAttn' | 'mergeCrossattn' | 'mergeMlp'> {
  return {
    ratio: o.ratio, sx: o.sx, sy: o.sy, maxDownsample: o.maxDownsample, useRand: o.useRand,
    mergeAttn: o.mergeAttn, mergeCrossattn: o.mergeCrossattn, mergeMlp: o.mergeMlp,
  };
}

/** A string that is equal for two option sets exactly when their rewritten graphs are. */
export function tomeGraphKey(o: ToMeOptions): string {
  return JSON.stringify(tomeGraphOptions(o));
}

/** Throws a UsageError (one line) when the options are invalid. */
export function validateToMeOptions(o: ToMeOptions): void {
  const bad = toMeOptionsProblem(o);
  if (bad !== null) throw new UsageError(bad);
}

/** Null when valid, else a one-line message. */
export function toMeOptionsProblem(o: ToMeOptions): string | null {
  for (const [k, v] of [['sx', o.sx], ['sy', o.sy]] as const) {
    if (!Number.isInteger(v) || v < 1) return `ToMe ${k} must be a positive integer (got ${v})`;
  }
  if (!Number.isFinite(o.ratio)) return `ToMe ratio must be a number (got ${o.ratio})`;
  const max = 1 - 1 / (o.sx * o.sy);
  if (o.ratio < 0 || o.ratio > max) {
    return `ToMe ratio must satisfy 0 ≤ R ≤ 1 − 1/(sx·sy) = ${+max.toFixed(6)} for sx=${o.sx}, sy=${o.sy} (got ${o.ratio})`;
  }
  if (o.maxDownsample !== 'auto' && !MAX_DOWNSAMPLES.includes(o.maxDownsample)) {
    return `ToMe max downsample must be 1, 2, 4 or 8, or auto (got ${o.maxDownsample})`;
  }
  for (const [k, v] of [['min width', o.minWidth], ['min height', o.minHeight]] as const) {
    if (!Number.isFinite(v) || v < 0) return `ToMe ${k} must be ≥ 0 (got ${v})`;
  }
  return null;
}

/** Whether ToMe runs for an image of width × height pixels (else run the original UNet). */
export function tomeApplies(o: ToMeOptions, width: number, height: number): { apply: boolean; reason?: string } {
  if (!(o.ratio > 0)) return { apply: false, reason: 'ToMe ratio is 0' };
  if (!o.mergeAttn && !o.mergeCrossattn && !o.mergeMlp) return { apply: false, reason: 'no sub-layer selected for merging' };
  if (width < o.minWidth || height < o.minHeight) {
    return { apply: false, reason: `image ${width}x${height} is below the ToMe minimum ${o.minWidth}x${o.minHeight}` };
  }
  return { apply: true };
}

/**
 * Max downsample 'auto' for a UNet whose transformer blocks sit at these levels: the smallest
 * known level (the highest resolution that has blocks: SD 1.x/2.x 1, SDXL 2); 1 (tomesd's
 * default) when no level is known.
 */
export function autoMaxDownsample(levels: readonly (number | null)[]): number {
  let m = Infinity;
  for (const l of levels) if (l !== null && l < m) m = l;
  return Number.isFinite(m) ? m : 1;
}

/** The max downsample that applies to a UNet with blocks at `levels`: the option, 'auto' resolved. */
export function resolveMaxDownsample(o: Pick<ToMeOptions, 'maxDownsample'>, levels: readonly (number | null)[]): number {
  return o.maxDownsample === 'auto' ? autoMaxDownsample(levels) : o.maxDownsample;
}

const ceilDiv = (a: number, b: number): number => Math.floor((a + b - 1) / b);

/**
 * tomesd's per-block numbers at latent H×W for a block seeing `tokens` tokens. Max downsample
 * 'auto' is resolved from the graph's blocks first (resolveMaxDownsample); unresolved, it sets no
 * level limit here.
 */
export function blockMergeParams(
  latentH: number, latentW: number, tokens: number, o: ToMeOptions,
): { downsample: number; w: number; h: number; r: number; numDst: number; apply: boolean } {
  const k = Math.floor((latentH * latentW) / tokens);
  const downsample = Math.max(1, Math.ceil(Math.sqrt(k)));
  const w = ceilDiv(latentW, downsample);
  const h = ceilDiv(latentH, downsample);
  const r = Math.min(Math.trunc(tokens * o.ratio), tokens - Math.floor(h / o.sy) * Math.floor(w / o.sx));
  const numDst = Math.floor(h / o.sy) * Math.floor(w / o.sx);
  const limit = o.maxDownsample === 'auto' ? Infinity : o.maxDownsample;
  const apply = downsample <= limit && r > 0 && numDst > 0 && h * w === tokens;
  return { downsample, w, h, r, numDst, apply };
}

/**
 * Shape of a block's `tome_rand_<k>` input at latent H×W: [h//sy, w//sx, 1] when the block merges
 * at that size; [0, 0, 1] (an empty tensor the graph never reads) when it does not. Values fed
 * must lie in [0, sx·sy). null when the block's level is unknown.
 */
export function tomeRandShape(block: Pick<BlockInfo, 'level'>, latentH: number, latentW: number, o: ToMeOptions): [number, number, 1] | null {
  if (block.level === null) return null;
  const tokens = ceilDiv(latentH, block.level) * ceilDiv(latentW, block.level);
  const p = blockMergeParams(latentH, latentW, tokens, o);
  if (!p.apply) return [0, 0, 1];
  return [Math.floor(p.h / o.sy), Math.floor(p.w / o.sx), 1];
}
