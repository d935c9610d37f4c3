/**
 * `synthesize`: writes a complete diffusers-layout ONNX Stable Diffusion folder with seeded
 * synthetic weights (model_index.json, text_encoder/, unet/, vae_decoder/, tokenizer/,
 * scheduler/), and `countParams`, the parameter counts of an architecture without building any
 * weights.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
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
  /** stage: 'text_encoder' | 'unet' | 'vae_decoder'; done/total in bytes of weights */
  onProgress?: (stage: string, done: number, total: number) => void;
}

export interface SynthesizeResult {
  params: { unet: number; textEncoder: number; vaeDecoder: number };
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

/** The resolved architecture (tiny's vocabulary size comes from the generated tokenizer). */
export function resolveArch(arch: Arch, style: 'sd1' | 'sd2' = 'sd1'): ArchSpec {
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
): { textEncoder: BuiltModel; unet: BuiltModel; vaeDecoder: BuiltModel } {
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
  };
}

/** Parameter counts (torch's `sum(p.numel())`) of an architecture's three models. */
export function countParams(arch: Arch, style: 'sd1' | 'sd2' = 'sd1'): SynthesizeResult['params'] {
  const spec = resolveArch(arch, style);
  const m = buildComponents(spec);
  return {
    unet: trainable(m.unet.params),
    textEncoder: trainable(m.textEncoder.params),
    vaeDecoder: trainable(m.vaeDecoder.params),
  };
}

export async function synthesize(opts: SynthesizeOptions): Promise<SynthesizeResult> {
  const seed = opts.seed ?? 0;
  const spec = resolveArch(opts.arch, opts.style ?? 'sd1');
  const models = buildComponents(spec, opts);
  const out = opts.outDir;
  const files: string[] = [];
  const write = (rel: string, text: string): void => {
    const p = join(out, rel);
    writeFileSync(p, text);
    files.push(p);
  };
  for (const d of ['text_encoder', 'unet', 'vae_decoder', 'tokenizer', 'scheduler']) {
    mkdirSync(join(out, d), { recursive: true });
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
    },
    files,
  };
}
