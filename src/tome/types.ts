/** ToMe options, with tomesd / the A1111 extension's meanings. */
export interface ToMeOptions {
  /** Fraction of tokens merged; 0 = off. Valid: 0 ≤ ratio ≤ 1 − 1/(sx·sy). */
  ratio: number;
  sx: number;
  sy: number;
  /**
   * 1 | 2 | 4 | 8: merge in transformer blocks downsampled at most this much; 'auto': the
   * highest-resolution level that has transformer blocks, found in the graph (SD 1.x/2.x: 1;
   * SDXL: 2, its first level has none). See resolveMaxDownsample.
   */
  maxDownsample: number | 'auto';
  /** Random destination per cell (forced off at runtime for odd batch sizes). */
  useRand: boolean;
  mergeAttn: boolean;
  mergeCrossattn: boolean;
  mergeMlp: boolean;
  /** ToMe only when the output image (pixels) is at least this wide and high. */
  minWidth: number;
  minHeight: number;
}


/** A transformer block found in a UNet graph (see src/tome/find-blocks.ts). */
export interface BlockInfo {
  /** Position in run order (down, mid, up), from 0. */
  index: number;
  /** The diffusers module path when node names carry it (e.g. `down_blocks.0/attentions.0/transformer_blocks.0`), else ''. */
  name: string;
  /**
   * Downsample factor of the block's token grid relative to the latent (1, 2, 4, 8): at latent
   * H×W the block sees ceil(H/level)·ceil(W/level) tokens. null when it could not be determined.
   */
  level: number | null;
  /** Sub-layers present: self-attention, cross-attention, feed-forward. */
  sublayers: { attn: boolean; crossattn: boolean; mlp: boolean };
  /** Element type of the block's hidden states. */
  elemType: 'float32' | 'float16' | 'bfloat16';
  /** Name of the block's `tome_rand_<k>` input, when the patched graph has one. */
  randInput?: string;
}

/** A block as patched by applyToMe: which sub-layers got merge/unmerge. */
export interface PatchedBlockInfo extends BlockInfo {
  merged: { attn: boolean; crossattn: boolean; mlp: boolean };
}
