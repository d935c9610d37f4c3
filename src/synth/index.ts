/**
 * `synthesize`: writes a complete diffusers-layout ONNX Stable Diffusion folder with seeded
 * synthetic weights (model_index.json, text_encoder/, unet/, vae_decoder/, vae_encoder/,
 * tokenizer/, scheduler/; SDXL adds text_encoder_2/ and tokenizer_2/ in Optimum's layout), and
 * `countParams`, the parameter counts of an architecture from its configuration alone.
 */
import { writeFileSync } from 'node:fs';
import { makeDirs } from '../files.js';
import { join } from 'node:path';
import { generateTinyVocab } from '../text/tiny-vocab.js';
import { UsageError } from '../errors.js';
import { ARCHS, archSpec, isSdxlArch, type Arch, type ArchSpec } from './archs.js';
import { countOf, type ParamEntry } from './context.js';
import { textEncoderParamCount, unetParamCount, vaeDecoderParamCount, vaeEncoderParamCount } from './params.js';
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
import { totalBytes, writeModel } from './writer.js';

export type { Arch } from './archs.js';
export { ARCHS } from './archs.js';

export interface SynthesizeOptions {
  arch: Arch;
  outDir: string;
  /** weight seed (default 0) */
  seed?: number;
  /** all float tensors, graph inputs and outputs included, in float16 */
  fp16?: boolean;
  /**
   * ONNX opset: 14 (diffusers script, decomposed LayerNorm) or 17 (LayerNormalization). Default
   * 14; 17 for the SDXL architectures (Optimum's export).
   */
  opset?: 14 | 17;
  /** UNet `timestep` input: float32 [B] (default), int64 [B] or a float32 scalar (SDXL's default, as Optimum exports it) */
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
  /** stage: 'text_encoder' | 'text_encoder_2' | 'unet' | 'vae_decoder' | 'vae_encoder'; done/total in bytes of weights */
  onProgress?: (stage: string, done: number, total: number) => void;
}

export interface SynthesizeResult {
  /** textEncoder2: SDXL's second text encoder, absent for SD 1.x/2.x */
  params: { unet: number; textEncoder: number; textEncoder2?: number; vaeDecoder: number; vaeEncoder: number };
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
  if (arch !== 'tiny' && style !== 'sd1') throw new UsageError(`style '${style}' applies only to the tiny architecture`);
  if (arch === 'sdxl-tiny') return archSpec(arch, Object.keys(generateTinyVocab().vocab).length);
  if (arch !== 'tiny') return archSpec(arch);
  const size = Object.keys(generateTinyVocab().vocab).length;
  const spec = archSpec('tiny', size);
  return style === 'sd2' ? tinySd2(spec) : spec;
}

function trainable(params: readonly ParamEntry[]): number {
  return params.filter((p) => p.trainable).reduce((a, p) => a + countOf(p.dims), 0);
}

/** Builds the graphs (without weights); `textEncoder2` for SDXL only. */
export function buildComponents(
  spec: ArchSpec,
  opts: { opset?: 14 | 17; fp16?: boolean; timestepType?: TimestepType } = {},
): { textEncoder: BuiltModel; textEncoder2: BuiltModel | null; unet: BuiltModel; vaeDecoder: BuiltModel; vaeEncoder: BuiltModel } {
  const sdxl = spec.textEncoder2 !== undefined;
  const opset = opts.opset ?? (sdxl ? 17 : 14);
  const fp16 = opts.fp16 ?? false;
  if (opset !== 14 && opset !== 17) throw new UsageError(`unsupported opset ${String(opset)} (expected 14 or 17)`);
  const tt = opts.timestepType ?? (sdxl ? 'float32-scalar' : 'float32');
  if (!['float32', 'int64', 'float32-scalar'].includes(tt)) {
    throw new UsageError(`unknown timestep type '${String(tt)}' (expected float32, int64, float32-scalar)`);
  }
  return {
    textEncoder: buildTextEncoder(spec.textEncoder, { opset, fp16 }),
    textEncoder2: spec.textEncoder2 ? buildTextEncoder(spec.textEncoder2, { opset, fp16 }) : null,
    unet: buildUNet(spec.unet, { opset, fp16, timestepType: tt }),
    vaeDecoder: buildVaeDecoder(spec.vae, { opset, fp16 }),
    vaeEncoder: buildVaeEncoder(spec.vae, { opset, fp16 }),
  };
}

/** Parameter counts (torch's `sum(p.numel())`) of a spec's models, from the configuration alone (see params.ts). */
export function specParams(spec: ArchSpec): SynthesizeResult['params'] {
  return {
    unet: unetParamCount(spec.unet),
    textEncoder: textEncoderParamCount(spec.textEncoder),
    ...(spec.textEncoder2 ? { textEncoder2: textEncoderParamCount(spec.textEncoder2) } : {}),
    vaeDecoder: vaeDecoderParamCount(spec.vae),
    vaeEncoder: vaeEncoderParamCount(spec.vae),
  };
}

/** Parameter counts (torch's `sum(p.numel())`) of an architecture's models; builds nothing. */
export function countParams(arch: Arch, style: 'sd1' | 'sd2' = 'sd1', timeCondProjDim?: number): SynthesizeResult['params'] {
  return specParams(resolveArch(arch, style, timeCondProjDim));
}

/** The parameter counts of built graphs (what `specParams` must agree with). */
export function builtParams(m: ReturnType<typeof buildComponents>): SynthesizeResult['params'] {
  return {
    unet: trainable(m.unet.params),
    textEncoder: trainable(m.textEncoder.params),
    ...(m.textEncoder2 ? { textEncoder2: trainable(m.textEncoder2.params) } : {}),
    vaeDecoder: trainable(m.vaeDecoder.params),
    vaeEncoder: trainable(m.vaeEncoder.params),
  };
}

/**
 * Models whose weights exceed this go to external data whatever the architecture says: protobuf
 * cannot encode a model.onnx of 2 GiB or more (SDXL's text_encoder_2 holds 2.8 GB in float32).
 */
export const EXTERNAL_DATA_BYTES = 1.5 * 2 ** 30;

export async function synthesize(opts: SynthesizeOptions): Promise<SynthesizeResult> {
  const seed = opts.seed ?? 0;
  const spec = resolveArch(opts.arch, opts.style ?? 'sd1', opts.timeCondProjDim);
  const models = buildComponents(spec, opts);
  const sdxl = models.textEncoder2 !== null;
  const out = opts.outDir;
  const files: string[] = [];
  const write = (rel: string, text: string): void => {
    const p = join(out, rel);
    writeFileSync(p, text);
    files.push(p);
  };
  const tokenizers = sdxl ? ['tokenizer', 'tokenizer_2'] : ['tokenizer'];
  const modelDirs = ['text_encoder', ...(sdxl ? ['text_encoder_2'] : []), 'unet', 'vae_decoder', 'vae_encoder'];
  for (const d of [...modelDirs, ...tokenizers, 'scheduler']) makeDirs(join(out, d));
  write('model_index.json', jsonText(modelIndexJson(spec)));
  write('scheduler/scheduler_config.json', jsonText(schedulerConfigJson(spec)));

  const vocab = generateTinyVocab();
  for (const [dir, pad] of [['tokenizer', spec.padToken], ['tokenizer_2', spec.padToken2 ?? spec.padToken]] as const) {
    if (!tokenizers.includes(dir)) continue;
    write(`${dir}/vocab.json`, JSON.stringify(vocab.vocab) + '\n');
    write(`${dir}/merges.txt`, mergesText(vocab.merges));
    write(`${dir}/tokenizer_config.json`, jsonText(tokenizerConfigJson(spec, pad)));
    write(`${dir}/special_tokens_map.json`, jsonText(specialTokensMapJson(spec, pad)));
  }

  const stages: [string, BuiltModel, Record<string, unknown>, boolean][] = [
    ['text_encoder', models.textEncoder, textEncoderConfigJson(spec.textEncoder), false],
    ...(models.textEncoder2 ? [['text_encoder_2', models.textEncoder2, textEncoderConfigJson(spec.textEncoder2!), false] as [string, BuiltModel, Record<string, unknown>, boolean]] : []),
    ['unet', models.unet, unetConfigJson(spec.unet), spec.externalUNet],
    ['vae_decoder', models.vaeDecoder, vaeConfigJson(spec.vae), false],
    ['vae_encoder', models.vaeEncoder, vaeConfigJson(spec.vae), false],
  ];
  for (const [stage, built, config, externalSpec] of stages) {
    write(`${stage}/config.json`, jsonText(config));
    const external = externalSpec || totalBytes(built.params) >= EXTERNAL_DATA_BYTES;
    const paths = await writeModel(built, join(out, stage), {
      seed,
      salt: stage,
      ...(external ? { externalFile: 'weights.pb' } : {}),
      onProgress: (done, total) => opts.onProgress?.(stage, done, total),
    });
    files.push(...paths);
  }
  return { params: builtParams(models), files };
}
