/** `--from FILE.png`: generation options recorded in an image (sdgen JSON first, else A1111 infotext). */
import type { PartialOptions } from '../config/options.js';
import type { ImageMetadata } from '../image/metadata.js';
import type { ToMeOptions } from '../tome/types.js';
import { SdgenError } from '../errors.js';

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

/** Options that regenerate the image alone (batch size 1, one batch). Pure. */
export function optionsFromMetadata(meta: ImageMetadata): FromImage {
  const rec = meta.sdgen;
  if (rec) {
    const p = rec.params;
    const t = p.tome ?? {};
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
    };
    return { prompt: p.prompt, options: o, modelName: rec.model };
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
  return { prompt: ip.prompt, options: o, modelName: ip.modelName };
}
