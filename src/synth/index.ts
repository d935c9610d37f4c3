/**
 * `synthesize`: writes a complete diffusers-layout ONNX Stable Diffusion folder with seeded
 * synthetic weights (model_index.json, text_encoder/, unet/, vae_decoder/, tokenizer/,
 * scheduler/), and `countParams`, the parameter counts of an architecture without building any
 * weights.
 */
import { writeFileSync } from 'node:fs';
import { makeDirs } from '../files.js';
import { join } from 'node:path';
import { generateTinyVocab } from '../text/tiny-vocab.js';
import { UsageError } from '../errors.js';
import { ARCHS, archSpec, type Arch, type ArchSpec } from './archs.js';
import { countOf, type ParamEntry } from './context.js';
import {
  jsonText,
  mergesText,
  modelIndexJson,
  schedulerConfigJson,
  specialTokensMapJson,
  tokenizerConfigJson,
} from './folder-files.js';
import { buildTextEncoder, textEncoderConfigJson } from './text-encoder.js';
import { buildUNet, unetConfigJson, type BuiltModel, type TimestepType } from './unet.js';
import { buildVaeDecoder, vaeConfigJson } from './vae-decoder.js';
import { buildVaeEncoder } from './vae-encoder.js';
import { writeModel } from './writer.js';

export type { Arch } from './archs.js';
export { ARCHS } from './archs.js';

export interface SynthesizeOptions {
  arch: Arch;
  outDir: string;
  /** weight seed (default 0) */
  seed?: number;
  /** all float tensors, graph inputs and outputs included, in float16 */
  fp16?: boolean;
  /** ONNX opset: 14 (diffusers script, decomposed LayerNorm) or 17 (LayerNormalization) */
  opset?: 14 | 17;
  /** UNet `timestep` input: float32 [B] (default), int64 [B] or a float32 scalar */
  timestepType?: TimestepType;
  /**
   * Only for `tiny`: 'sd2' gives the SD 2.x variant (linear proj_in/out, per-block head counts,
   * upcast attention, gelu text MLP, v_prediction, "!" padding). Default 'sd1'.
   */
  style?: 'sd1' | 'sd2';
  /**
   * An LCM-distilled UNet (diffusers' `time_cond_proj_dim`, 256 in LCM_Dreamshaper_v7): the UNet
   * gets the input `timestep_cond` [batch, D] through `time_embedding.cond_proj`, and the folder
   * an LCMScheduler config. Default: none (a plain SD UNet).
   */
  timeCondProjDim?: number;
  /** stage: 'text_encoder' | 'unet' | 'vae_decoder'; done/total in bytes of weights */
  onProgress?: (stage: string, done: number, total: number) => void;
}

export interface SynthesizeResult {
  params: { unet: number; textEncoder: number; vaeDecoder: number; vaeEncoder: number };
  files: string[];
}

function tinySd2(spec: ArchSpec): ArchSpec {
  return {
    ...spec,
    unet: { ...spec.unet, useLinearProjection: true, attentionHeadDim: [2, 4], upcastAttention: true },
    textEncoder: { ...spec.textEncoder, hiddenAct: 'gelu' },
    predictionType: 'v_prediction',
    padToken: '!',
  };
}

/** Largest `timeCondProjDim` accepted (LCM UNets use 256). */
export const MAX_TIME_COND_PROJ_DIM = 65536;

/**
 * Checks a `timeCondProjDim`: an integer from 4 (the guidance-scale embedding divides by
 * D/2 − 1, so 2 and 3 would feed NaN) to MAX_TIME_COND_PROJ_DIM.
 */
export function checkTimeCondProjDim(v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 4 || v > MAX_TIME_COND_PROJ_DIM) {
    throw new UsageError(`timeCondProjDim: expected an integer from 4 to ${MAX_TIME_COND_PROJ_DIM}, got ${String(v)}`);
  }
  return v;
}

/** The spec with an LCM-style UNet (`time_cond_proj_dim` = dim); unchanged when dim is undefined. */
export function withTimeCondProjDim(spec: ArchSpec, dim: number | undefined): ArchSpec {
  if (dim === undefined) return spec;
  return { ...spec, unet: { ...spec.unet, timeCondProjDim: checkTimeCondProjDim(dim) } };
}

/**
 * The resolved architecture (tiny's vocabulary size comes from the generated tokenizer);
 * `timeCondProjDim` makes its UNet LCM-style.
 */
export function resolveArch(arch: Arch, style: 'sd1' | 'sd2' = 'sd1', timeCondProjDim?: number): ArchSpec {
  return withTimeCondProjDim(resolveBaseArch(arch, style), timeCondProjDim);
}

function resolveBaseArch(arch: Arch, style: 'sd1' | 'sd2'): ArchSpec {
  if (!ARCHS.includes(arch)) {
    throw new UsageError(`unknown architecture '${String(arch)}' (expected ${ARCHS.join(', ')})`);
  }
  if (style !== 'sd1' && style !== 'sd2') throw new UsageError(`unknown style '${String(style)}' (expected sd1, sd2)`);
  if (arch !== 'tiny') {
    if (style !== 'sd1') throw new UsageError(`style '${style}' applies only to the tiny architecture`);
    return archSpec(arch);
  }
  const size = Object.keys(generateTinyVocab().vocab).length;
  const spec = archSpec('tiny', size);
  return style === 'sd2' ? tinySd2(spec) : spec;
}

function trainable(params: readonly ParamEntry[]): number {
  return params.filter((p) => p.trainable).reduce((a, p) => a + countOf(p.dims), 0);
}

/** Builds the three graphs (without weights). */
export function buildComponents(
  spec: ArchSpec,
  opts: { opset?: 14 | 17; fp16?: boolean; timestepType?: TimestepType } = {},
): { textEncoder: BuiltModel; unet: BuiltModel; vaeDecoder: BuiltModel; vaeEncoder: BuiltModel } {
  const opset = opts.opset ?? 14;
  const fp16 = opts.fp16 ?? false;
  if (opset !== 14 && opset !== 17) throw new UsageError(`unsupported opset ${String(opset)} (expected 14 or 17)`);
  const tt = opts.timestepType ?? 'float32';
  if (!['float32', 'int64', 'float32-scalar'].includes(tt)) {
    throw new UsageError(`unknown timestep type '${String(tt)}' (expected float32, int64, float32-scalar)`);
  }
  return {
    textEncoder: buildTextEncoder(spec.textEncoder, { opset, fp16 }),
    unet: buildUNet(spec.unet, { opset, fp16, timestepType: tt }),
    vaeDecoder: buildVaeDecoder(spec.vae, { opset, fp16 }),
    vaeEncoder: buildVaeEncoder(spec.vae, { opset, fp16 }),
  };
}

/** Parameter counts (torch's `sum(p.numel())`) of an architecture's three models. */
export function countParams(arch: Arch, style: 'sd1' | 'sd2' = 'sd1', timeCondProjDim?: number): SynthesizeResult['params'] {
  const spec = resolveArch(arch, style, timeCondProjDim);
  const m = buildComponents(spec);
  return {
    unet: trainable(m.unet.params),
    textEncoder: trainable(m.textEncoder.params),
    vaeDecoder: trainable(m.vaeDecoder.params),
    vaeEncoder: trainable(m.vaeEncoder.params),
  };
}

export async function synthesize(opts: SynthesizeOptions): Promise<SynthesizeResult> {
  const seed = opts.seed ?? 0;
  const spec = resolveArch(opts.arch, opts.style ?? 'sd1', opts.timeCondProjDim);
  const models = buildComponents(spec, opts);
  const out = opts.outDir;
  const files: string[] = [];
  const write = (rel: string, text: string): void => {
    const p = join(out, rel);
    writeFileSync(p, text);
    files.push(p);
  };
  for (const d of ['text_encoder', 'unet', 'vae_decoder', 'vae_encoder', 'tokenizer', 'scheduler']) {
    makeDirs(join(out, d));
  }
  write('model_index.json', jsonText(modelIndexJson(spec)));
  write('scheduler/scheduler_config.json', jsonText(schedulerConfigJson(spec)));

  const vocab = generateTinyVocab();
  write('tokenizer/vocab.json', JSON.stringify(vocab.vocab) + '\n');
  write('tokenizer/merges.txt', mergesText(vocab.merges));
  write('tokenizer/tokenizer_config.json', jsonText(tokenizerConfigJson(spec)));
  write('tokenizer/special_tokens_map.json', jsonText(specialTokensMapJson(spec)));

  const stages: [string, BuiltModel, Record<string, unknown>, boolean][] = [
    ['text_encoder', models.textEncoder, textEncoderConfigJson(spec.textEncoder), false],
    ['unet', models.unet, unetConfigJson(spec.unet), spec.externalUNet],
    ['vae_decoder', models.vaeDecoder, vaeConfigJson(spec.vae), false],
    ['vae_encoder', models.vaeEncoder, vaeConfigJson(spec.vae), false],
  ];
  for (const [stage, built, config, external] of stages) {
    write(`${stage}/config.json`, jsonText(config));
    const paths = await writeModel(built, join(out, stage), {
      seed,
      salt: stage,
      ...(external ? { externalFile: 'weights.pb' } : {}),
      onProgress: (done, total) => opts.onProgress?.(stage, done, total),
    });
    files.push(...paths);
  }
  return {
    params: {
      unet: trainable(models.unet.params),
      textEncoder: trainable(models.textEncoder.params),
      vaeDecoder: trainable(models.vaeDecoder.params),
      vaeEncoder: trainable(models.vaeEncoder.params),
    },
    files,
  };
}
