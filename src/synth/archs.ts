/**
 * Architectures the synthesizer knows: `tiny` (a seconds-fast pipeline shaped like the shared
 * tiny fixtures), `sd15` and `sd21` (the real Stable Diffusion 1.5 / 2.1 shapes), `sdxl` (SDXL
 * base 1.0's shapes: two text encoders, a three-level UNet with 1/2/10 transformer blocks per
 * level and text_time conditioning) and `sdxl-tiny` (a seconds-fast SDXL of the tiny-sdxl
 * fixture's topology). Pure data.
 */
import type { UNetConfig } from './unet.js';
import type { TextEncoderConfig } from './text-encoder.js';
import type { VaeConfig } from './vae-decoder.js';

export type Arch = 'tiny' | 'sd15' | 'sd21' | 'sdxl' | 'sdxl-tiny';
export const ARCHS: readonly Arch[] = ['tiny', 'sd15', 'sd21', 'sdxl', 'sdxl-tiny'];

/** The SDXL architectures (StableDiffusionXLPipeline folders). */
export function isSdxlArch(arch: Arch): boolean {
  return arch === 'sdxl' || arch === 'sdxl-tiny';
}

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
  /**
   * SDXL: the second text encoder (CLIPTextModelWithProjection, `text_embeds` output) and its
   * tokenizer's pad token ("!"); the folder is then a StableDiffusionXLPipeline in Optimum's
   * layout (opset 17, int64 input_ids, scalar timestep, hidden_states outputs by default).
   */
  textEncoder2?: TextEncoderConfig;
  padToken2?: '<|endoftext|>' | '!';
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

/** The UNet of SDXL-shaped models (DownBlock2D first, text_time conditioning); the fields that differ are given. */
function sdxlUNet(
  v: Pick<UNetConfig, 'sampleSize' | 'blockOutChannels' | 'crossAttentionDim' | 'attentionHeadDim' | 'normNumGroups' | 'transformerLayersPerBlock' | 'additionTimeEmbedDim' | 'projectionClassEmbeddingsInputDim'>,
): UNetConfig {
  return {
    ...v,
    inChannels: 4,
    outChannels: 4,
    downBlockTypes: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
    upBlockTypes: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
    layersPerBlock: 2,
    normEps: 1e-5,
    useLinearProjection: true,
    upcastAttention: false,
    flipSinToCos: true,
    freqShift: 0,
    additionEmbedType: 'text_time',
  };
}

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

/** SDXL's VAE: SD's AutoencoderKL with SDXL's latent scaling factor. */
const SDXL_VAE: VaeConfig = { ...SD_VAE, sampleSize: 1024, scalingFactor: 0.13025 };

/** Both text encoders of an SDXL export have Optimum's int64 ids and hidden_states outputs. */
const sdxlEncoder = (c: TextEncoderConfig, withProjection: boolean): TextEncoderConfig => ({
  ...c,
  inputIdsType: 'int64',
  outputHiddenStates: true,
  withProjection,
});

/** The architecture's configuration; `tinyVocabSize` sets the tiny text encoders' vocabulary. */
export function archSpec(arch: Arch, tinyVocabSize = 49408): ArchSpec {
  switch (arch) {
    case 'sdxl':
      // stabilityai/stable-diffusion-xl-base-1.0 (diffusers 0.27.2 configs)
      return {
        unet: sdxlUNet({
          sampleSize: 128,
          blockOutChannels: [320, 640, 1280],
          crossAttentionDim: 2048,
          // heads per level (head dim 64); level 0 has no attention
          attentionHeadDim: [5, 10, 20],
          normNumGroups: 32,
          transformerLayersPerBlock: [1, 2, 10],
          additionTimeEmbedDim: 256,
          // text_embeds (1280) + 6 time ids × 256
          projectionClassEmbeddingsInputDim: 2816,
        }),
        // CLIP ViT-L/14 (as SD 1.x's) and OpenCLIP ViT-bigG/14 with its projection
        textEncoder: sdxlEncoder(
          clipTextEncoder({ hiddenSize: 768, intermediateSize: 3072, numLayers: 12, numHeads: 12, hiddenAct: 'quick_gelu', projectionDim: 768 }),
          false,
        ),
        textEncoder2: sdxlEncoder(
          clipTextEncoder({ hiddenSize: 1280, intermediateSize: 5120, numLayers: 32, numHeads: 20, hiddenAct: 'gelu', projectionDim: 1280 }),
          true,
        ),
        vae: SDXL_VAE,
        predictionType: 'epsilon',
        padToken: '<|endoftext|>',
        padToken2: '!',
        externalUNet: true,
      };
    case 'sdxl-tiny':
      // the topology of the shared tiny-sdxl fixture (DownBlock2D first, 1/1/2 transformer
      // blocks per level, text_time conditioning, 64 + 6·8 = 112 add_embedding inputs), with
      // the generated tokenizer's vocabulary and a 256² default size
      return {
        unet: sdxlUNet({
          sampleSize: 32,
          blockOutChannels: [32, 64, 64],
          crossAttentionDim: 96,
          attentionHeadDim: [1, 1, 2],
          normNumGroups: 16,
          transformerLayersPerBlock: [1, 1, 2],
          additionTimeEmbedDim: 8,
          projectionClassEmbeddingsInputDim: 112,
        }),
        textEncoder: sdxlEncoder(
          {
            vocabSize: tinyVocabSize, hiddenSize: 32, intermediateSize: 64, numLayers: 3, numHeads: 4, maxPositions: 77,
            hiddenAct: 'quick_gelu', projectionDim: 32, layerNormEps: 1e-5, bosTokenId: 0, eosTokenId: 2, padTokenId: 1,
          },
          false,
        ),
        textEncoder2: sdxlEncoder(
          {
            vocabSize: tinyVocabSize, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, maxPositions: 77,
            hiddenAct: 'gelu', projectionDim: 64, layerNormEps: 1e-5, bosTokenId: 0, eosTokenId: 2, padTokenId: 1,
          },
          true,
        ),
        vae: {
          blockOutChannels: [8, 16, 32, 32],
          layersPerBlock: 1,
          latentChannels: 4,
          outChannels: 3,
          normNumGroups: 4,
          sampleSize: 256,
          scalingFactor: 0.13025,
        },
        predictionType: 'epsilon',
        padToken: '<|endoftext|>',
        padToken2: '!',
        externalUNet: false,
      };
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
