/**
 * Architectures the synthesizer knows: `tiny` (a seconds-fast pipeline shaped like the shared
 * tiny fixtures), `sd15` and `sd21` (the real Stable Diffusion 1.5 / 2.1 shapes). Pure data.
 */
import type { UNetConfig } from './unet.js';
import type { TextEncoderConfig } from './text-encoder.js';
import type { VaeConfig } from './vae-decoder.js';

export type Arch = 'tiny' | 'sd15' | 'sd21';
export const ARCHS: readonly Arch[] = ['tiny', 'sd15', 'sd21'];

export interface ArchSpec {
  unet: UNetConfig;
  /** vocabSize is filled in for `tiny` from the generated tokenizer vocabulary */
  textEncoder: TextEncoderConfig;
  vae: VaeConfig;
  predictionType: 'epsilon' | 'v_prediction';
  /** tokenizer pad token: SD1 pads with <|endoftext|>, SD2 with "!" */
  padToken: '<|endoftext|>' | '!';
  /** UNet weights go to an external `weights.pb` (large models) */
  externalUNet: boolean;
}

const SD_VAE: VaeConfig = {
  blockOutChannels: [128, 256, 512, 512],
  layersPerBlock: 2,
  latentChannels: 4,
  outChannels: 3,
  normNumGroups: 32,
  sampleSize: 512,
  scalingFactor: 0.18215,
};

const SD_BLOCKS = {
  downBlockTypes: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  upBlockTypes: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
} as const;

/** The UNet of the real SD 1.x / 2.x models; the fields that differ between them are given. */
function sdUNet(
  v: Pick<UNetConfig, 'sampleSize' | 'crossAttentionDim' | 'attentionHeadDim' | 'useLinearProjection' | 'upcastAttention'>,
): UNetConfig {
  return {
    sampleSize: v.sampleSize,
    inChannels: 4,
    outChannels: 4,
    blockOutChannels: [320, 640, 1280, 1280],
    downBlockTypes: [...SD_BLOCKS.downBlockTypes],
    upBlockTypes: [...SD_BLOCKS.upBlockTypes],
    layersPerBlock: 2,
    crossAttentionDim: v.crossAttentionDim,
    attentionHeadDim: v.attentionHeadDim,
    normNumGroups: 32,
    normEps: 1e-5,
    useLinearProjection: v.useLinearProjection,
    upcastAttention: v.upcastAttention,
    flipSinToCos: true,
    freqShift: 0,
  };
}

/** The CLIP text encoder of the real SD 1.x / 2.x models (49408-token vocabulary, 77 positions). */
function clipTextEncoder(
  v: Pick<TextEncoderConfig, 'hiddenSize' | 'intermediateSize' | 'numLayers' | 'numHeads' | 'hiddenAct' | 'projectionDim'>,
): TextEncoderConfig {
  return {
    vocabSize: 49408,
    hiddenSize: v.hiddenSize,
    intermediateSize: v.intermediateSize,
    numLayers: v.numLayers,
    numHeads: v.numHeads,
    maxPositions: 77,
    hiddenAct: v.hiddenAct,
    projectionDim: v.projectionDim,
    layerNormEps: 1e-5,
    bosTokenId: 0,
    eosTokenId: 2,
    padTokenId: 1,
  };
}

/** The architecture's configuration; `tinyVocabSize` sets the tiny text encoder's vocabulary. */
export function archSpec(arch: Arch, tinyVocabSize = 49408): ArchSpec {
  switch (arch) {
    case 'tiny':
      return {
        unet: {
          sampleSize: 64,
          inChannels: 4,
          outChannels: 4,
          blockOutChannels: [32, 64],
          downBlockTypes: ['CrossAttnDownBlock2D', 'DownBlock2D'],
          upBlockTypes: ['UpBlock2D', 'CrossAttnUpBlock2D'],
          layersPerBlock: 2,
          crossAttentionDim: 32,
          // 2 heads, not the tiny fixture's 8: at 64×64 latents 8 heads materialise 1 GiB score
          // tensors (6–9 GB RSS, 15–25 s per UNet call on 2 cores); 2 heads keep the multi-head
          // export pattern at a few seconds per call.
          attentionHeadDim: 2,
          normNumGroups: 32,
          normEps: 1e-5,
          useLinearProjection: false,
          upcastAttention: false,
          flipSinToCos: true,
          freqShift: 0,
        },
        textEncoder: {
          vocabSize: tinyVocabSize,
          hiddenSize: 32,
          intermediateSize: 64,
          numLayers: 3,
          numHeads: 4,
          maxPositions: 77,
          hiddenAct: 'quick_gelu',
          projectionDim: 32,
          layerNormEps: 1e-5,
          bosTokenId: 0,
          eosTokenId: 2,
          padTokenId: 1,
        },
        vae: {
          blockOutChannels: [8, 16, 32, 32],
          layersPerBlock: 1,
          latentChannels: 4,
          outChannels: 3,
          normNumGroups: 4,
          sampleSize: 512,
          scalingFactor: 0.18215,
        },
        predictionType: 'epsilon',
        padToken: '<|endoftext|>',
        externalUNet: false,
      };
    case 'sd15':
      return {
        unet: sdUNet({ sampleSize: 64, crossAttentionDim: 768, attentionHeadDim: 8, useLinearProjection: false, upcastAttention: false }),
        textEncoder: clipTextEncoder({ hiddenSize: 768, intermediateSize: 3072, numLayers: 12, numHeads: 12, hiddenAct: 'quick_gelu', projectionDim: 768 }),
        vae: SD_VAE,
        predictionType: 'epsilon',
        padToken: '<|endoftext|>',
        externalUNet: true,
      };
    case 'sd21':
      return {
        unet: sdUNet({ sampleSize: 96, crossAttentionDim: 1024, attentionHeadDim: [5, 10, 20, 20], useLinearProjection: true, upcastAttention: true }),
        textEncoder: clipTextEncoder({ hiddenSize: 1024, intermediateSize: 4096, numLayers: 23, numHeads: 16, hiddenAct: 'gelu', projectionDim: 512 }),
        vae: { ...SD_VAE, sampleSize: 768 },
        predictionType: 'v_prediction',
        padToken: '!',
        externalUNet: true,
      };
  }
}
