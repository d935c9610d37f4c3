/**
 * Hires fix as a composition (A1111's two-pass txt2img, the way the diffusers references build
 * it): pass 1 = txt2img at the job's size, its final latents kept; the latents upscaled (a
 * latent upscaler: torch interpolate, src/image/interpolate.ts; a pixel-space one: decode,
 * resize, encode); pass 2 = img2img at the hires size from them, with fresh generators seeded
 * seed + i and its own prompt, sampler, steps and ToMe settings. Pure parameter logic here; the
 * pipeline runs the passes.
 */
import { UsageError } from '../errors.js';
import { resolveHiresUpscaler, type HiresUpscaler } from '../image/interpolate.js';
import { scheduleLengthFor, validateStrength } from '../schedulers/img2img.js';
import type { GenerationParams, HiresParams } from './types.js';

/** Hires defaults: A1111's (scale 2, Latent, denoising 0.7, pass-2 steps = the job's). */
export const HIRES_DEFAULTS = { scale: 2, upscaler: 'Latent', strength: 0.7, steps: 0 } as const;

/**
 * Pass 2's size as A1111 computes it: `width`×`height` when given (either alone keeps the
 * aspect ratio), else int(`scale` × the job's size); both multiples of 8 or a UsageError.
 */
export function hiresSize(base: { width: number; height: number }, o: { scale?: number; width?: number; height?: number }): { width: number; height: number } {
  let w: number;
  let h: number;
  if (o.width || o.height) {
    // A1111: the missing side keeps the aspect ratio, with integer (floor) division
    w = o.width || Math.floor((o.height! * base.width) / base.height);
    h = o.height || Math.floor((o.width! * base.height) / base.width);
  } else {
    const s = o.scale ?? HIRES_DEFAULTS.scale;
    if (!(Number.isFinite(s) && s > 0)) throw new UsageError(`hires scale must be a positive number (got ${s})`);
    // A1111: int(width · scale)
    w = Math.floor(base.width * s);
    h = Math.floor(base.height * s);
  }
  if (w % 8 !== 0 || h % 8 !== 0) {
    throw new UsageError(`hires size ${w}×${h} is not a multiple of 8; choose another --hires-scale or --hires-width/--hires-height`);
  }
  return { width: w, height: h };
}

/** Checks a job's hires settings (UsageError on a bad value) and returns its upscaler. */
export function validateHires(h: HiresParams): HiresUpscaler {
  validateStrength(h.strength, 'denoising strength');
  if (!Number.isInteger(h.steps) || h.steps < 0) throw new UsageError(`hires steps must be an integer ≥ 0 (got ${h.steps})`);
  for (const [k, v] of [['width', h.width], ['height', h.height]] as const) {
    if (!Number.isInteger(v) || v <= 0 || v % 8 !== 0) throw new UsageError(`hires ${k} must be a positive multiple of 8 (got ${v})`);
  }
  return resolveHiresUpscaler(h.upscaler);
}

/**
 * Pass 2's parameters: the hires size, prompt, sampler and ToMe, no init/hires of its own, and
 * the schedule length whose img2img tail runs `hires.steps` steps (0: the job's steps) — the
 * smallest M with int(M·strength) = steps (scheduleLengthFor).
 */
export function secondPassParams(p: GenerationParams, seed: number): GenerationParams {
  const h = p.hires!;
  const run = h.steps > 0 ? h.steps : p.steps;
  const { hires: _h, init: _i, mask: _m, ...rest } = p;
  return {
    ...rest,
    seed,
    width: h.width,
    height: h.height,
    steps: scheduleLengthFor(run, h.strength),
    prompt: h.prompt ?? p.prompt,
    negativePrompt: h.negativePrompt ?? p.negativePrompt,
    scheduler: h.scheduler || p.scheduler,
    tome: h.tome ?? p.tome,
  };
}

/** Pass 1's parameters: the job without its hires settings. */
export function firstPassParams(p: GenerationParams, seed: number): GenerationParams {
  const { hires: _h, ...rest } = p;
  return { ...rest, seed };
}
