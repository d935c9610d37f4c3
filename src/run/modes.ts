/**
 * The img2img / inpainting / hires options of a job (--init-image, --strength, --mask,
 * --mask-blur, --invert-mask, --hires*, --denoising-strength, --vae-tiling) as the engine's
 * GenerationParams fields, with their defaults (strength 0.75, mask blur 0, hires scale 2,
 * upscaler Latent, denoising strength 0.7, hires steps 0 = --steps) and the checks that need no
 * model (UsageError, one line). Pure: the files are read by the pipeline.
 */
import { UsageError } from '../errors.js';
import { hiresSize, HIRES_DEFAULTS, validateHires } from '../pipeline/hires.js';
import { validateStrength } from '../schedulers/img2img.js';
import type { GenerationParams } from '../pipeline/types.js';
import type { ToMeOptions } from '../tome/types.js';
import type { SdgenOptions } from '../config/options.js';

export type ModeOptions = Pick<
  Partial<SdgenOptions>,
  | 'initImage' | 'strength' | 'mask' | 'maskBlur' | 'invertMask' | 'hires' | 'hiresScale' | 'hiresWidth' | 'hiresHeight'
  | 'hiresUpscaler' | 'denoisingStrength' | 'hiresSteps' | 'hiresPrompt' | 'hiresNegativePrompt' | 'hiresScheduler' | 'hiresTome' | 'vaeTiling'
>;

export const DEFAULT_STRENGTH = 0.75;

/**
 * The GenerationParams fields of a job's mode options, for a job of `size` (after the model's
 * default size is applied) and ToMe settings `tome`. Empty for a plain txt2img job.
 */
export function modeParams(o: ModeOptions, size: { width: number; height: number }, tome: ToMeOptions): Pick<GenerationParams, 'init' | 'mask' | 'hires' | 'vaeTiling'> {
  const out: Pick<GenerationParams, 'init' | 'mask' | 'hires' | 'vaeTiling'> = {};
  if (o.vaeTiling !== undefined) out.vaeTiling = o.vaeTiling;
  if (o.mask !== undefined && o.initImage === undefined) throw new UsageError('--mask needs --init-image (the picture to inpaint)');
  if (o.strength !== undefined && o.initImage === undefined) throw new UsageError('--strength needs --init-image (for hires fix, use --denoising-strength)');
  if (o.initImage !== undefined) {
    if (o.initImage === '') throw new UsageError('--init-image needs a file');
    const strength = o.strength ?? DEFAULT_STRENGTH;
    validateStrength(strength);
    out.init = { path: o.initImage, strength };
    if (o.mask !== undefined) {
      if (o.mask === '') throw new UsageError('--mask needs a file');
      out.mask = { path: o.mask, blur: o.maskBlur ?? 0, invert: o.invertMask ?? false };
    }
  }
  const hiresAsked = [o.hiresScale, o.hiresWidth, o.hiresHeight, o.hiresUpscaler, o.denoisingStrength, o.hiresSteps, o.hiresPrompt, o.hiresNegativePrompt, o.hiresScheduler, o.hiresTome]
    .some((v) => v !== undefined);
  if (!o.hires) {
    if (hiresAsked) throw new UsageError('the --hires-* and --denoising-strength options need --hires');
    return out;
  }
  if (o.initImage !== undefined) throw new UsageError('--hires is a txt2img mode; it does not take --init-image');
  if (o.hiresScale !== undefined && (o.hiresWidth !== undefined || o.hiresHeight !== undefined)) {
    throw new UsageError('give --hires-scale or --hires-width/--hires-height, not both');
  }
  const { width, height } = hiresSize(size, {
    ...(o.hiresScale !== undefined ? { scale: o.hiresScale } : {}),
    ...(o.hiresWidth !== undefined ? { width: o.hiresWidth } : {}),
    ...(o.hiresHeight !== undefined ? { height: o.hiresHeight } : {}),
  });
  out.hires = {
    width,
    height,
    ...(o.hiresWidth === undefined && o.hiresHeight === undefined ? { scale: o.hiresScale ?? HIRES_DEFAULTS.scale } : {}),
    upscaler: o.hiresUpscaler ?? HIRES_DEFAULTS.upscaler,
    strength: o.denoisingStrength ?? HIRES_DEFAULTS.strength,
    steps: o.hiresSteps ?? HIRES_DEFAULTS.steps,
    ...(o.hiresPrompt !== undefined ? { prompt: o.hiresPrompt } : {}),
    ...(o.hiresNegativePrompt !== undefined ? { negativePrompt: o.hiresNegativePrompt } : {}),
    ...(o.hiresScheduler !== undefined && o.hiresScheduler !== '' ? { scheduler: o.hiresScheduler } : {}),
    ...(o.hiresTome !== undefined ? { tome: { ...tome, ratio: o.hiresTome } } : {}),
  };
  validateHires(out.hires);
  return out;
}
