/**
 * The UNet variants a benchmark runs: the exported graph rewritten with ToMe (ratio r, sx = sy
 * = 2, no rand: A1111's defaults; max downsample 'auto' by default, which is tomesd's 1 on SD
 * 1.x/2.x and 2 on SDXL), fused attention and/or Winograd
 * convolutions (in that order, as the pipeline applies them). A variant's graph
 * is small; its weights stay in the source's external data file, which the variant's folder
 * links to (hard link, else symbolic link, else copy), so variants cost no disk.
 */
import { createHash } from 'node:crypto';
import { readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { loadModel, modelFileIdentity } from '../onnx/model-io.js';
import { externalLocations, fuseModel, writeModelLinkingWeights } from '../optimize/fused-model.js';
import { applyToMe } from '../tome/index.js';
import { TOME_GRAPH_VERSION } from '../models/tome-cache.js';
import { DEFAULT_TOME } from '../tome/options.js';
import type { ToMeOptions } from '../tome/types.js';
import { SDGEN_VERSION } from '../version.js';
import type { BenchAttention, BenchConv } from './types.js';
import { WINOGRAD_REWRITE_VERSION, winogradRewrite } from '../optimize/conv-mode.js';

export interface Variant {
  ratio: number;
  attention: BenchAttention;
  /** convolution algorithm (src/optimize/conv-mode.ts) */
  conv: BenchConv;
  /** ToMe's max downsample (default 'auto') */
  maxDownsample?: number | 'auto';
}

export interface PreparedVariant extends Variant {
  path: string;
  /** attentions fused (fused variants) */
  fused: number;
  /** transformer blocks ToMe patched (0 when ratio 0) */
  tomeBlocks: number;
  /** weights bytes (external data + inline), with what the Winograd weights add once folded */
  weightsBytes: number;
  /** convolutions in Winograd form */
  convs: number;
  /** ToMe's max downsample as applied: the deepest level of the patched blocks (ratio > 0) */
  maxDownsample?: number | 'auto';
  /** the source is an SDXL UNet (it takes `text_embeds`) */
  sdxl: boolean;
}

export const benchToMe = (ratio: number, maxDownsample: number | 'auto' = 'auto'): ToMeOptions => ({ ...DEFAULT_TOME, ratio, sx: 2, sy: 2, maxDownsample, useRand: false });

/**
 * A variant's name (its cache folder's). 'auto' adds nothing: on SD 1.x/2.x it is the max
 * downsample 1 the unsuffixed names were made with, so their cached graphs stay valid.
 */
export const variantLabel = (v: Variant): string =>
  `r${v.ratio}-${v.attention}-${v.conv}${v.maxDownsample === undefined || v.maxDownsample === 'auto' ? '' : `-md${v.maxDownsample}`}`;

/** Bytes of a model's weights (its file plus its external data files), and whether it is an SDXL UNet. */
export async function unetTraits(modelPath: string): Promise<{ weightsBytes: number; sdxl: boolean }> {
  const m = await loadModel(modelPath, { externalData: 'lazy' });
  let total = (await stat(modelPath)).size;
  for (const loc of externalLocations(m)) total += (await stat(path.join(path.dirname(modelPath), loc))).size;
  return { weightsBytes: total, sdxl: (m.graph?.input ?? []).some((i) => i.name === 'text_embeds') };
}

/** Bytes of a model's weights: its file plus its external data files. */
export async function modelBytes(modelPath: string): Promise<number> {
  return (await unetTraits(modelPath)).weightsBytes;
}

/**
 * Writes (or reuses) the variant of `unetPath` under `cacheDir/bench-variants/`. Ratio 0 with
 * standard attention is the source model itself.
 */
export async function prepareVariant(unetPath: string, v: Variant, cacheDir: string, log: (l: string) => void): Promise<PreparedVariant> {
  const { weightsBytes, sdxl } = await unetTraits(unetPath);
  if (v.ratio === 0 && v.attention === 'standard' && v.conv === 'direct') return { ...v, path: unetPath, fused: 0, tomeBlocks: 0, weightsBytes, convs: 0, sdxl };
  const id = createHash('sha256')
    .update(`${await modelFileIdentity(unetPath)}|${SDGEN_VERSION}|${variantLabel(v)}|U in a weights file|GEGLU split|ToMe graph ${TOME_GRAPH_VERSION}|Winograd ${WINOGRAD_REWRITE_VERSION}`)
    .digest('hex')
    .slice(0, 20);
  const dir = path.join(cacheDir, 'bench-variants', `${id}-${variantLabel(v)}`);
  const file = path.join(dir, 'model.onnx');
  const metaFile = path.join(dir, 'variant.json');
  if (existsSync(file) && existsSync(metaFile)) {
    const meta = JSON.parse(await readFile(metaFile, 'utf8')) as { fused: number; tomeBlocks: number; convs: number; extraWeightBytes: number; appliedMaxDownsample?: number };
    return {
      ...v, path: file, fused: meta.fused, tomeBlocks: meta.tomeBlocks, weightsBytes: weightsBytes + meta.extraWeightBytes, convs: meta.convs, sdxl,
      // variants written before the field: ratio > 0 meant max downsample 1
      ...(v.ratio > 0 ? { maxDownsample: meta.appliedMaxDownsample ?? 1 } : {}),
    };
  }
  const t0 = performance.now();
  const model = await loadModel(unetPath, { externalData: 'lazy' });
  let tomeBlocks = 0;
  let appliedMaxDownsample: number | undefined;
  if (v.ratio > 0) {
    const r = applyToMe(model, benchToMe(v.ratio, v.maxDownsample));
    if (!r.patched) throw new Error(`ToMe could not patch ${unetPath}: ${r.reason ?? 'unknown reason'}`);
    const merged = r.blocks.filter((b) => b.merged.attn || b.merged.crossattn || b.merged.mlp);
    tomeBlocks = merged.length;
    const levels = merged.map((b) => b.level).filter((l): l is number => l !== null);
    appliedMaxDownsample = levels.length > 0 ? Math.max(...levels) : undefined;
  }
  let fused = 0;
  let geglu = 0;
  if (v.attention === 'fused') {
    const r = fuseModel(model);
    fused = r.count;
    geglu = r.geglu;
    if (fused === 0) throw new Error(`no attention could be fused in ${unetPath}: ${r.skipped[0] ?? 'no Softmax found'}`);
  }
  let convs = 0;
  let extraWeightBytes = 0;
  let files: Record<string, string> = {};
  if (v.conv === 'winograd') {
    // as sdgen runs it (getWinogradModel): U computed into the model's shared weights file
    const r = await winogradRewrite(model, cacheDir);
    convs = r.count - r.polyphase;
    if (r.polyphase > 0) log(`  variant ${variantLabel(v)}: ${r.polyphase} upsampler convolutions in polyphase form`);
    extraWeightBytes = r.extraWeightBytes;
    files = r.files ?? {};
  }
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await writeModelLinkingWeights(model, unetPath, tmp, files);
  await writeFile(path.join(tmp, 'variant.json'), JSON.stringify({ source: path.resolve(unetPath), ...v, fused, tomeBlocks, convs, extraWeightBytes, appliedMaxDownsample }, null, 2));
  await rm(dir, { recursive: true, force: true });
  await rename(tmp, dir);
  log(`  variant ${variantLabel(v)}: ${tomeBlocks} ToMe blocks, ${fused} fused attentions, ${geglu} GEGLU projections split, ${convs} Winograd convolutions (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  return { ...v, path: file, fused, tomeBlocks, weightsBytes: weightsBytes + extraWeightBytes, convs, sdxl, ...(appliedMaxDownsample !== undefined ? { maxDownsample: appliedMaxDownsample } : {}) };
}
