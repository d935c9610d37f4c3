/** `--from FILE.png`: generation options recorded in an image (sdgen JSON first, else A1111 infotext). */
import { coerceOption, SPEC_BY_KEY, type PartialOptions } from '../config/options.js';
import type { ImageMetadata } from '../metadata/metadata.js';
import type { ToMeOptions } from '../tome/types.js';
import type { GenerationParams } from '../pipeline/types.js';
import { SdgenError, UsageError } from '../errors.js';
import { checkPromptLength } from '../text/limits.js';

export interface FromImage {
  prompt: string;
  options: PartialOptions;
  /** model name the image records (folder name), to help the user find --model */
  modelName?: string;
}

/** The ToMe command-line options of recorded ToMe settings (all but the minimum size). */
function tomeOptions(t: Partial<ToMeOptions>): PartialOptions {
  return {
    tome: t.ratio,
    sx: t.sx,
    sy: t.sy,
    maxDownsample: t.maxDownsample,
    tomeRand: t.useRand,
    mergeAttn: t.mergeAttn,
    mergeCrossattn: t.mergeCrossattn,
    mergeMlp: t.mergeMlp,
  };
}

/** SDXL's recorded size and crop conditioning in the flags' text forms (then checked like flags). */
function sdxlOptions(p: Partial<GenerationParams>): PartialOptions {
  const size = (s: unknown): string | undefined =>
    s !== null && typeof s === 'object' ? `${String((s as { width?: unknown }).width)}x${String((s as { height?: unknown }).height)}` : undefined;
  const c: unknown = p.cropTopLeft;
  const crop = c !== null && typeof c === 'object' ? `${String((c as { left?: unknown }).left)},${String((c as { top?: unknown }).top)}` : undefined;
  return { originalSize: size(p.originalSize), cropTopLeft: crop, targetSize: size(p.targetSize), encodeEmptyNegative: p.encodeEmptyNegative };
}

/**
 * Every recorded value through the flags' own coercion and limits (src/config/options.ts), so a
 * crafted or damaged PNG cannot ask for what the command line would refuse (5000 steps, a seed
 * past 2^53, a 100000-pixel width); undefined values are dropped. Throws a one-line UsageError
 * naming the file and the key.
 */
/** The img2img / inpainting / hires options of a recorded image (its init picture and mask by path). */
function modeOptions(p: Partial<GenerationParams>): PartialOptions {
  const o: PartialOptions = {};
  const init = p.init;
  if (init !== null && typeof init === 'object') Object.assign(o, { initImage: init.path, strength: init.strength });
  const mask = p.mask;
  if (mask !== null && typeof mask === 'object') Object.assign(o, { mask: mask.path, maskBlur: mask.blur, invertMask: mask.invert });
  const h = p.hires;
  if (h !== null && typeof h === 'object') {
    Object.assign(o, {
      hires: true,
      ...(h.scale !== undefined ? { hiresScale: h.scale } : { hiresWidth: h.width, hiresHeight: h.height }),
      hiresUpscaler: h.upscaler,
      denoisingStrength: h.strength,
      hiresSteps: h.steps,
      hiresPrompt: h.prompt,
      hiresNegativePrompt: h.negativePrompt,
      hiresScheduler: h.scheduler,
      hiresTome: h.tome?.ratio,
    });
  }
  if (p.vaeTiling !== undefined) o.vaeTiling = p.vaeTiling;
  return o;
}

/**
 * One line per input picture (init image, mask) whose file is missing or no longer the one the
 * image was made from (SHA-256 recorded), so a regenerated image may differ.
 */
export async function inputFileNotes(file: string, p: Partial<GenerationParams>): Promise<string[]> {
  const { createHash } = await import('node:crypto');
  const { readFile } = await import('node:fs/promises');
  const notes: string[] = [];
  for (const [what, input] of [['init image', p.init], ['mask', p.mask]] as const) {
    if (input === null || typeof input !== 'object' || typeof input.path !== 'string') continue;
    let bytes: Buffer;
    try {
      bytes = await readFile(input.path);
    } catch {
      notes.push(`${file}: the ${what} ${input.path} is not found`);
      continue;
    }
    if (typeof input.sha256 === 'string' && createHash('sha256').update(bytes).digest('hex') !== input.sha256) {
      notes.push(`${file}: the ${what} ${input.path} has changed since the image was made (SHA-256 differs); the result will differ`);
    }
  }
  return notes;
}

function checked(file: string, o: PartialOptions): PartialOptions {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) {
    if (v === undefined) continue;
    const spec = SPEC_BY_KEY.get(k);
    if (!spec) throw new UsageError(`${file}: recorded option "${k}" is not an sdgen option`);
    out[k] = coerceOption(spec, v, `${file}: recorded ${spec.flag}`);
  }
  return out as PartialOptions;
}

/** The recorded prompt (and negative prompt) within the prompt length limits. */
function checkedPrompt(file: string, prompt: unknown, o: PartialOptions): string {
  if (typeof prompt !== 'string') throw new UsageError(`${file}: the recorded prompt is not text`);
  checkPromptLength(prompt, `${file}: recorded prompt`);
  if (o.negativePrompt !== undefined) checkPromptLength(o.negativePrompt, `${file}: recorded negative prompt`);
  return prompt;
}

/** Options that regenerate the image alone (batch size 1, one batch), validated like flags. Pure. */
export function optionsFromMetadata(meta: ImageMetadata): FromImage {
  const rec = meta.sdgen;
  if (rec) {
    const p = rec.params;
    if (p === null || typeof p !== 'object') throw new UsageError(`${meta.file}: the sdgen record has no parameters`);
    const t: Partial<ToMeOptions> = p.tome !== null && typeof p.tome === 'object' ? p.tome : {};
    const o: PartialOptions = {
      negativePrompt: p.negativePrompt,
      width: p.width,
      height: p.height,
      steps: p.steps,
      cfg: p.cfg,
      seed: p.seed,
      scheduler: p.scheduler || undefined,
      eta: p.eta,
      clipSkip: p.clipSkip,
      emphasis: p.emphasis,
      attention: p.attention,
      batchSize: 1,
      nIter: 1,
      ...tomeOptions(t),
      tomeMinWidth: t.minWidth,
      tomeMinHeight: t.minHeight,
      longPrompt: p.longPrompt,
      ...sdxlOptions(p),
      ...modeOptions(p),
    };
    const options = checked(meta.file, o);
    return { prompt: checkedPrompt(meta.file, p.prompt, options), options, modelName: rec.model };
  }
  const ip = meta.infotextParams;
  if (!ip) throw new SdgenError(`${meta.file}: no generation parameters in this PNG (no "sdgen" or "parameters" text chunk)`);
  const o: PartialOptions = {
    negativePrompt: ip.negativePrompt,
    width: ip.width,
    height: ip.height,
    steps: ip.steps,
    cfg: ip.cfg,
    seed: ip.seed,
    scheduler: ip.samplerName,
    eta: ip.eta,
    clipSkip: ip.clipSkip,
    emphasis: ip.emphasis,
    batchSize: 1,
    nIter: 1,
    ...tomeOptions(ip.tome),
  };
  const options = checked(meta.file, o);
  return { prompt: checkedPrompt(meta.file, ip.prompt, options), options, modelName: ip.modelName };
}
