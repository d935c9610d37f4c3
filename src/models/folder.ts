/**
 * A Stable Diffusion ONNX model folder in the diffusers / Optimum layout: model_index.json,
 * text_encoder/, unet/, vae_decoder/ (model.onnx, external data beside it), tokenizer/,
 * scheduler/scheduler_config.json and the config.json files. Reads and validates the layout;
 * opens no ONNX session.
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
  paths: {
    textEncoder: string;
    unet: string;
    vaeDecoder: string;
    /** present when the folder has one (img2img later) */
    vaeEncoder: string | null;
    tokenizer: string;
    schedulerConfig: string;
  };
  configs: {
    modelIndex: JsonObject;
    scheduler: SchedulerConfig;
    unet: JsonObject | null;
    vaeDecoder: JsonObject | null;
    textEncoder: JsonObject | null;
  };
  tokenizer: ClipTokenizer;
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
  if (UNSUPPORTED_PIPELINES.test(pipelineClass) || (await exists(path.join(dir, 'text_encoder_2')))) {
    throw new SdgenError(`model folder ${dirIn}: ${pipelineClass} is not supported (sdgen runs SD 1.x/2.x pipelines)`);
  }

  // One after the other, so the first missing part is always the one reported.
  const textEncoder = await requireModel(dir, 'text_encoder');
  const unet = await requireModel(dir, 'unet');
  const vaeDecoder = await requireModel(dir, 'vae_decoder');
  const vaeEncoderPath = path.join(dir, 'vae_encoder', 'model.onnx');
  const vaeEncoder = (await exists(vaeEncoderPath)) ? vaeEncoderPath : null;

  const tokenizerDir = path.join(dir, 'tokenizer');
  if (!(await exists(path.join(tokenizerDir, 'vocab.json'))) || !(await exists(path.join(tokenizerDir, 'merges.txt')))) {
    throw new SdgenError(`model folder ${dirIn}: missing tokenizer/vocab.json or tokenizer/merges.txt`);
  }
  const schedulerConfigPath = path.join(dir, 'scheduler', 'scheduler_config.json');
  if (!(await exists(schedulerConfigPath))) {
    throw new SdgenError(`model folder ${dirIn}: missing scheduler/scheduler_config.json`);
  }

  const [scheduler, unetConfig, vaeConfig, textConfig, tokenizer] = await Promise.all([
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
    paths: { textEncoder, unet, vaeDecoder, vaeEncoder, tokenizer: tokenizerDir, schedulerConfig: schedulerConfigPath },
    configs: { modelIndex, scheduler, unet: unetConfig, vaeDecoder: vaeConfig, textEncoder: textConfig },
    tokenizer,
    vaeScaleFactor,
    vaeScalingFactor,
    defaultWidth,
    defaultHeight,
    defaultScheduler: defaultSchedulerFor(scheduler),
    predictionType: typeof scheduler.prediction_type === 'string' ? scheduler.prediction_type : 'epsilon',
    timeCondProjDim: typeof tcd === 'number' && tcd > 0 ? tcd : null,
  };
}
