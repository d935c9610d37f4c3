/**
 * Parameter counts (torch's `sum(p.numel() for p in model.parameters())`) of the synthetic
 * models, computed from their configurations alone: no graph is built and no weight exists, so
 * SDXL's 2.6 G-parameter UNet is counted in microseconds. The module structure followed is that
 * of the builders (diffusers UNet2DConditionModel / AutoencoderKL, transformers CLIPTextModel);
 * the tests hold each count against the parameters of the built graphs. Pure logic, no I/O.
 */
import type { UNetConfig } from './unet.js';
import { layersAt } from './unet.js';
import type { TextEncoderConfig } from './text-encoder.js';
import type { VaeConfig } from './vae-decoder.js';

/** nn.Linear(fin, fout) */
const linear = (fin: number, fout: number, bias = true): number => fin * fout + (bias ? fout : 0);
/** nn.Conv2d(cin, cout, k) with bias */
const conv = (cin: number, cout: number, k: number): number => cin * cout * k * k + cout;
/** GroupNorm / LayerNorm affine */
const norm = (c: number): number => 2 * c;

function unetResnet(cin: number, cout: number, tembDim: number): number {
  return norm(cin) + conv(cin, cout, 3) + linear(tembDim, cout) + norm(cout) + conv(cout, cout, 3) + (cin !== cout ? conv(cin, cout, 1) : 0);
}

/** BasicTransformerBlock: three LayerNorms, self- and cross-attention (q/k/v without bias), GEGLU feed-forward. */
function transformerBlock(dim: number, crossDim: number): number {
  const attn1 = 3 * linear(dim, dim, false) + linear(dim, dim);
  const attn2 = linear(dim, dim, false) + 2 * linear(crossDim, dim, false) + linear(dim, dim);
  const ff = linear(dim, dim * 8) + linear(dim * 4, dim);
  return 3 * norm(dim) + attn1 + attn2 + ff;
}

/** Transformer2DModel with `depth` blocks (linear or 1×1-conv proj_in/proj_out). */
function transformer2d(cfg: UNetConfig, ch: number, depth: number): number {
  const proj = cfg.useLinearProjection ? 2 * linear(ch, ch) : 2 * conv(ch, ch, 1);
  return norm(ch) + proj + depth * transformerBlock(ch, cfg.crossAttentionDim);
}

export function unetParamCount(cfg: UNetConfig): number {
  const boc = cfg.blockOutChannels;
  const temb = boc[0]! * 4;
  let n = conv(cfg.inChannels, boc[0]!, 3);
  n += linear(boc[0]!, temb) + linear(temb, temb);
  if (cfg.timeCondProjDim != null) n += linear(cfg.timeCondProjDim, boc[0]!, false);
  if (cfg.additionEmbedType === 'text_time') n += linear(cfg.projectionClassEmbeddingsInputDim!, temb) + linear(temb, temb);
  const skips: number[] = [boc[0]!];
  let outCh = boc[0]!;
  cfg.downBlockTypes.forEach((type, i) => {
    const inCh = outCh;
    outCh = boc[i]!;
    for (let j = 0; j < cfg.layersPerBlock; j++) {
      n += unetResnet(j === 0 ? inCh : outCh, outCh, temb);
      if (type === 'CrossAttnDownBlock2D') n += transformer2d(cfg, outCh, layersAt(cfg, i));
      skips.push(outCh);
    }
    if (i !== boc.length - 1) {
      n += conv(outCh, outCh, 3);
      skips.push(outCh);
    }
  });
  const mid = boc[boc.length - 1]!;
  n += 2 * unetResnet(mid, mid, temb) + transformer2d(cfg, mid, layersAt(cfg, boc.length - 1));
  const rev = [...boc].reverse();
  let upOut = rev[0]!;
  cfg.upBlockTypes.forEach((type, i) => {
    const prevOut = upOut;
    upOut = rev[i]!;
    const level = boc.length - 1 - i;
    for (let j = 0; j <= cfg.layersPerBlock; j++) {
      const skip = skips.pop()!;
      n += unetResnet((j === 0 ? prevOut : upOut) + skip, upOut, temb);
      if (type === 'CrossAttnUpBlock2D') n += transformer2d(cfg, upOut, layersAt(cfg, level));
    }
    if (i !== boc.length - 1) n += conv(upOut, upOut, 3);
  });
  return n + norm(boc[0]!) + conv(boc[0]!, cfg.outChannels, 3);
}

export function textEncoderParamCount(cfg: TextEncoderConfig): number {
  const d = cfg.hiddenSize;
  const layer = 4 * linear(d, d) + 2 * norm(d) + linear(d, cfg.intermediateSize) + linear(cfg.intermediateSize, d);
  const projection = cfg.withProjection ? linear(d, cfg.projectionDim, false) : 0;
  // position_ids is a buffer, not a parameter
  return cfg.vocabSize * d + cfg.maxPositions * d + cfg.numLayers * layer + norm(d) + projection;
}

function vaeResnet(cin: number, cout: number): number {
  return norm(cin) + conv(cin, cout, 3) + norm(cout) + conv(cout, cout, 3) + (cin !== cout ? conv(cin, cout, 1) : 0);
}

/** The VAE mid block: resnet, single-head attention (GroupNorm, q/k/v/out with bias), resnet. */
function vaeMid(ch: number): number {
  return 2 * vaeResnet(ch, ch) + norm(ch) + 4 * linear(ch, ch);
}

export function vaeDecoderParamCount(cfg: VaeConfig): number {
  const boc = cfg.blockOutChannels;
  const top = boc[boc.length - 1]!;
  let n = conv(cfg.latentChannels, cfg.latentChannels, 1) + conv(cfg.latentChannels, top, 3) + vaeMid(top);
  const rev = [...boc].reverse();
  let out = rev[0]!;
  rev.forEach((ch, i) => {
    const prev = out;
    out = ch;
    for (let j = 0; j <= cfg.layersPerBlock; j++) n += vaeResnet(j === 0 ? prev : out, out);
    if (i !== rev.length - 1) n += conv(out, out, 3);
  });
  return n + norm(boc[0]!) + conv(boc[0]!, cfg.outChannels, 3);
}

export function vaeEncoderParamCount(cfg: VaeConfig): number {
  const boc = cfg.blockOutChannels;
  const top = boc[boc.length - 1]!;
  let n = conv(cfg.outChannels, boc[0]!, 3);
  let out = boc[0]!;
  boc.forEach((ch, i) => {
    const prev = out;
    out = ch;
    for (let j = 0; j < cfg.layersPerBlock; j++) n += vaeResnet(j === 0 ? prev : out, out);
    if (i !== boc.length - 1) n += conv(out, out, 3);
  });
  const lat2 = 2 * cfg.latentChannels;
  return n + vaeMid(top) + norm(top) + conv(top, lat2, 3) + conv(lat2, lat2, 1);
}
