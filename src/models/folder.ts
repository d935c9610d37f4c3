/**
 * A Stable Diffusion ONNX model folder in the diffusers / Optimum layout: model_index.json,
 * text_encoder/, unet/, vae_decoder/ (model.onnx, external data beside it), tokenizer/,
 * scheduler/scheduler_config.json and the config.json files; an SDXL folder
 * (StableDiffusionXLPipeline / ORTStableDiffusionXLPipeline) adds text_encoder_2/ and
 * tokenizer_2/. Reads and validates the layout; opens no ONNX session.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { SdgenError } from '../errors.js';
import { exists } from './exists.js';
import type { SchedulerConfig } from '../schedulers/types.js';
import { defaultSchedulerFor } from '../schedulers/index.js';
import { parseSchedulerConfig } from '../schedulers/config.js';
import { loadTokenizer } from '../text/load.js';
import type { ClipTokenizer } from '../text/clip-tokenizer.js';

export type JsonObject = Record<string, unknown>;

export interface ModelFolder {
  /** absolute folder path */
  dir: string;
  /** folder basename (A1111's "Model" key) */
  name: string;
  /** model_index.json `_class_name` */
  pipelineClass: string;
  /**
   * The model family, which picks the pipeline's stages: 'sd' (SD 1.x/2.x) or 'sdxl'
   * (StableDiffusionXLPipeline: two text encoders, `text_embeds` and `time_ids` UNet inputs).
   */
  family: 'sd' | 'sdxl';
  paths: {
    textEncoder: string;
    unet: string;
    vaeDecoder: string;
    /** present when the folder has one (img2img later) */
    vaeEncoder: string | null;
    tokenizer: string;
    schedulerConfig: string;
    /** SDXL's second text encoder (CLIPTextModelWithProjection) and its tokenizer; null for SD 1.x/2.x */
    textEncoder2: string | null;
    tokenizer2: string | null;
  };
  configs: {
    modelIndex: JsonObject;
    scheduler: SchedulerConfig;
    unet: JsonObject | null;
    vaeDecoder: JsonObject | null;
    textEncoder: JsonObject | null;
    textEncoder2?: JsonObject | null;
  };
  tokenizer: ClipTokenizer;
  /** SDXL's second tokenizer (pads with `!` per its config); null for SD 1.x/2.x */
  tokenizer2: ClipTokenizer | null;
  /**
   * model_index.json `force_zeros_for_empty_prompt` (SDXL; default true as in diffusers): an
   * empty negative prompt gives zero embeddings instead of the encoded "".
   */
  forceZerosForEmptyPrompt: boolean;
  /** pixels per latent cell: 2^(len(vae block_out_channels) − 1), else 8 */
  vaeScaleFactor: number;
  /** latents are divided by this before decoding (default 0.18215) */
  vaeScalingFactor: number;
  /** UNet sample_size × vaeScaleFactor (SD 1.x: 512, SD 2.x: 768), else 512 */
  defaultWidth: number;
  defaultHeight: number;
  /** canonical sdgen scheduler name matching scheduler_config's class */
  defaultScheduler: string;
  /** scheduler_config prediction_type (epsilon / v_prediction) */
  predictionType: string;
  /** UNet time_cond_proj_dim from its config (LCM), or null */
  timeCondProjDim: number | null;
}

async function readJson(file: string, what: string): Promise<JsonObject> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new SdgenError(`${what}: cannot read ${file}`, { cause: err });
  }
  try {
    const v: unknown = JSON.parse(text);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as JsonObject;
  } catch (err) {
    throw new SdgenError(`${what}: ${file} is not valid JSON (${(err as Error).message})`, { cause: err });
  }
}

async function readOptionalJson(file: string, what: string): Promise<JsonObject | null> {
  return (await exists(file)) ? readJson(file, what) : null;
}

async function requireModel(dir: string, sub: string): Promise<string> {
  const p = path.join(dir, sub, 'model.onnx');
  if (!(await exists(p))) {
    throw new SdgenError(`model folder ${dir}: missing ${path.join(sub, 'model.onnx')}`);
  }
  return p;
}

/** 2^(len(block_out_channels) − 1) from a VAE config, else 8. */
export function vaeScaleFactorOf(vaeConfig: JsonObject | null): number {
  const boc = vaeConfig?.['block_out_channels'];
  return Array.isArray(boc) && boc.length > 0 ? 2 ** (boc.length - 1) : 8;
}

function sampleSizeOf(unetConfig: JsonObject | null): [number, number] | null {
  const s = unetConfig?.['sample_size'];
  if (typeof s === 'number' && s > 0) return [s, s];
  if (Array.isArray(s) && s.length === 2 && s.every((x) => typeof x === 'number' && x > 0)) return [s[0] as number, s[1] as number];
  return null;
}

const UNSUPPORTED_PIPELINES = /XL|Cascade|Flux|SD3|StableDiffusion3|Kandinsky|Wuerstchen/i;
/** diffusers' and Optimum's SDXL pipeline classes (base layout: both text encoders). */
const SDXL_PIPELINES = /^(ORT)?StableDiffusionXL(Img2Img|Inpaint)?Pipeline$/;

export async function loadModelFolder(dirIn: string): Promise<ModelFolder> {
  const dir = path.resolve(dirIn);
  let st;
  try {
    st = await stat(dir);
  } catch (err) {
    throw new SdgenError(`model folder not found: ${dirIn}`, { cause: err });
  }
  if (!st.isDirectory()) throw new SdgenError(`not a Stable Diffusion ONNX folder: ${dirIn} (not a directory)`);
  const indexPath = path.join(dir, 'model_index.json');
  if (!(await exists(indexPath))) {
    throw new SdgenError(`not a Stable Diffusion ONNX folder: ${dirIn} (no model_index.json)`);
  }
  const modelIndex = await readJson(indexPath, 'model_index.json');
  const pipelineClass = typeof modelIndex['_class_name'] === 'string' ? modelIndex['_class_name'] : 'unknown';
  const hasEncoder2 = await exists(path.join(dir, 'text_encoder_2'));
  const family: ModelFolder['family'] = SDXL_PIPELINES.test(pipelineClass) || (hasEncoder2 && !UNSUPPORTED_PIPELINES.test(pipelineClass)) ? 'sdxl' : 'sd';
  if (family === 'sd' && (UNSUPPORTED_PIPELINES.test(pipelineClass) || hasEncoder2)) {
    throw new SdgenError(`model folder ${dirIn}: ${pipelineClass} is not supported (sdgen runs SD 1.x/2.x and SDXL pipelines)`);
  }
  if (family === 'sdxl' && !(await exists(path.join(dir, 'text_encoder')))) {
    // the SDXL refiner has text_encoder_2 only (and other UNet inputs)
    throw new SdgenError(`model folder ${dirIn}: an SDXL folder without text_encoder/ (a refiner?) is not supported`);
  }

  // One after the other, so the first missing part is always the one reported.
  const textEncoder = await requireModel(dir, 'text_encoder');
  const textEncoder2 = family === 'sdxl' ? await requireModel(dir, 'text_encoder_2') : null;
  const unet = await requireModel(dir, 'unet');
  const vaeDecoder = await requireModel(dir, 'vae_decoder');
  const vaeEncoderPath = path.join(dir, 'vae_encoder', 'model.onnx');
  const vaeEncoder = (await exists(vaeEncoderPath)) ? vaeEncoderPath : null;

  const tokenizerDir = path.join(dir, 'tokenizer');
  if (!(await exists(path.join(tokenizerDir, 'vocab.json'))) || !(await exists(path.join(tokenizerDir, 'merges.txt')))) {
    throw new SdgenError(`model folder ${dirIn}: missing tokenizer/vocab.json or tokenizer/merges.txt`);
  }
  const tokenizer2Dir = family === 'sdxl' ? path.join(dir, 'tokenizer_2') : null;
  if (tokenizer2Dir && (!(await exists(path.join(tokenizer2Dir, 'vocab.json'))) || !(await exists(path.join(tokenizer2Dir, 'merges.txt'))))) {
    throw new SdgenError(`model folder ${dirIn}: missing tokenizer_2/vocab.json or tokenizer_2/merges.txt`);
  }
  const schedulerConfigPath = path.join(dir, 'scheduler', 'scheduler_config.json');
  if (!(await exists(schedulerConfigPath))) {
    throw new SdgenError(`model folder ${dirIn}: missing scheduler/scheduler_config.json`);
  }

  const [scheduler, unetConfig, vaeConfig, textConfig, tokenizer, textConfig2, tokenizer2] = await Promise.all([
    // Python-style JSON (diffusers writes -Infinity), every value checked: one line naming the file and key.
    readFile(schedulerConfigPath, 'utf8').then(
      (text) => parseSchedulerConfig(text, path.join(dirIn, 'scheduler', 'scheduler_config.json')),
      (err: unknown) => {
        throw new SdgenError(`scheduler config: cannot read ${schedulerConfigPath}`, { cause: err });
      },
    ),
    readOptionalJson(path.join(dir, 'unet', 'config.json'), 'unet config'),
    readOptionalJson(path.join(dir, 'vae_decoder', 'config.json'), 'vae_decoder config'),
    readOptionalJson(path.join(dir, 'text_encoder', 'config.json'), 'text_encoder config'),
    loadTokenizer(tokenizerDir),
    family === 'sdxl' ? readOptionalJson(path.join(dir, 'text_encoder_2', 'config.json'), 'text_encoder_2 config') : null,
    tokenizer2Dir ? loadTokenizer(tokenizer2Dir) : null,
  ]);

  const vaeScaleFactor = vaeScaleFactorOf(vaeConfig);
  const sf = vaeConfig?.['scaling_factor'];
  const vaeScalingFactor = typeof sf === 'number' && sf > 0 ? sf : 0.18215;
  const sample = sampleSizeOf(unetConfig);
  const defaultHeight = sample ? sample[0] * vaeScaleFactor : 512;
  const defaultWidth = sample ? sample[1] * vaeScaleFactor : 512;
  const tcd = unetConfig?.['time_cond_proj_dim'];

  return {
    dir,
    name: path.basename(dir),
    pipelineClass,
    family,
    paths: {
      textEncoder, unet, vaeDecoder, vaeEncoder, tokenizer: tokenizerDir, schedulerConfig: schedulerConfigPath,
      textEncoder2, tokenizer2: tokenizer2Dir,
    },
    configs: { modelIndex, scheduler, unet: unetConfig, vaeDecoder: vaeConfig, textEncoder: textConfig, textEncoder2: textConfig2 },
    tokenizer,
    tokenizer2,
    forceZerosForEmptyPrompt: modelIndex['force_zeros_for_empty_prompt'] !== false,
    vaeScaleFactor,
    vaeScalingFactor,
    defaultWidth,
    defaultHeight,
    defaultScheduler: defaultSchedulerFor(scheduler),
    predictionType: typeof scheduler.prediction_type === 'string' ? scheduler.prediction_type : 'epsilon',
    timeCondProjDim: typeof tcd === 'number' && tcd > 0 ? tcd : null,
  };
}
