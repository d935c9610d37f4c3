import type { ToMeOptions } from '../tome/types.js';
import type { AttentionMode } from '../optimize/attention-mode.js';
import type { LoraRef } from '../lora/variant.js';
import type { AppliedLora } from '../lora/resolve.js';
import type { UsedEmbedding } from '../lora/embeddings.js';


/** Everything that determines one image (what the PNG metadata records). */
export interface GenerationParams {
  prompt: string;
  negativePrompt: string;
  width: number;
  height: number;
  steps: number;
  /** classifier-free guidance scale; exactly 1 (or ≤ 1) skips the unconditional pass */
  cfg: number;
  /** seed of the first image of the job; image i gets seed + i. -1 = random (resolved before generation). */
  seed: number;
  /** canonical scheduler name ('euler_a', 'ddim', ...) */
  scheduler: string;
  /** images per UNet call */
  batchSize: number;
  /** number of batches (A1111 batch count) */
  nIter: number;
  /** DDIM eta */
  eta: number;
  /** CLIP skip (1 = last layer) */
  clipSkip: number;
  /** A1111 emphasis syntax on/off */
  emphasis: boolean;
  tome: ToMeOptions;
  attention: AttentionMode;
  /**
   * Prompts over 75 tokens: 'chunk' (default when absent; A1111: 75-token chunks encoded one by
   * one and concatenated, BREAK starts a chunk) or 'truncate' (diffusers: only the first 75
   * tokens, the same ids diffusers' StableDiffusionPipeline feeds). Identical for ≤ 75 tokens.
   */
  longPrompt?: 'chunk' | 'truncate';
  /**
   * SDXL size and crop conditioning (`time_ids`; diffusers' `original_size`, `crops_coords_top_left`,
   * `target_size`), in pixels; absent: the image size and (0, 0). Ignored by SD 1.x/2.x.
   */
  originalSize?: { width: number; height: number };
  cropTopLeft?: { top: number; left: number };
  targetSize?: { width: number; height: number };
  /**
   * SDXL: encode an empty negative prompt (diffusers given `negative_prompt=""`) instead of the
   * zeros a folder with `force_zeros_for_empty_prompt` gives it (default; diffusers with no
   * negative prompt, A1111).
   */
  encodeEmptyNegative?: boolean;
  /**
   * LoRAs merged into the UNet and text encoder for this job (src/lora), in order; the prompt's
   * `<lora:NAME:SCALE>` tags add to them, resolved in `loraDir`, and are removed from its text.
   */
  loras?: LoraRef[];
  /** where `<lora:NAME:SCALE>` prompt tags find NAME.safetensors (searched recursively) */
  loraDir?: string;
  /** img2img (with `mask`: inpainting): the picture to start from (src/pipeline/img2img.ts) */
  init?: InitImageParams;
  /** inpainting: which part of the init picture to repaint (needs `init`) */
  mask?: MaskParams;
  /** hires fix: a second img2img pass at a larger size (src/pipeline/hires.ts) */
  hires?: HiresParams;
  /** tiled VAE decode/encode (src/pipeline/tiling.ts); default 'auto' */
  vaeTiling?: 'auto' | 'on' | 'off';
}

/** img2img's init picture. */
export interface InitImageParams {
  /** PNG, JPEG or WebP file, resized to width×height when its size differs (Lanczos) */
  path: string;
  /** (0, 1]: the part of the schedule run, diffusers' strength (A1111 "Denoising strength"); default 0.75 */
  strength: number;
  /** SHA-256 of the file the image was made from (set by the pipeline, recorded in metadata) */
  sha256?: string;
}

/** Inpainting mask (white = repaint). */
export interface MaskParams {
  path: string;
  /** A1111's mask blur σ in pixels (0 = none, as diffusers) */
  blur: number;
  /** repaint the black part instead (A1111 "Inpaint not masked") */
  invert: boolean;
  /** SHA-256 of the mask file (set by the pipeline) */
  sha256?: string;
}

/** Hires fix (A1111's two-pass txt2img): pass 2 is img2img of pass 1's result at width×height. */
export interface HiresParams {
  /** pass 2's size (from --hires-scale or --hires-width/--hires-height) */
  width: number;
  height: number;
  /** the scale the size came from, when it did (A1111 "Hires upscale") */
  scale?: number;
  /** A1111's upscaler name: 'Latent', 'Latent (antialiased)', …, 'Lanczos', 'Nearest' */
  upscaler: string;
  /** pass 2's denoising strength, (0, 1] */
  strength: number;
  /** the steps pass 2 runs (A1111 "Hires steps"); 0 = the job's steps */
  steps: number;
  prompt?: string;
  negativePrompt?: string;
  /** pass 2's sampler (default: the job's) */
  scheduler?: string;
  /** pass 2's ToMe settings (A1111 "Token merging ratio hr"); default: the job's */
  tome?: ToMeOptions;
}

export interface ImageTimings {
  textEncoderMs: number;
  unetMs: number;
  vaeMs: number;
  totalMs: number;
}

export interface GeneratedImage {
  /** index of the image within its job (0-based) */
  index: number;
  seed: number;
  width: number;
  height: number;
  /** RGB, row-major, width*height*3 */
  rgb: Uint8Array;
  /** params with this image's seed resolved */
  params: GenerationParams;
  /** whether the ToMe-patched UNet was used for this image */
  tomeApplied: boolean;
  /** model folder name (A1111 "Model") */
  modelName: string;
  /** the LoRAs applied (options, then prompt tags), with their hashes; absent when none */
  loras?: AppliedLora[];
  /** the textual-inversion embeddings the prompts used, with their hashes; absent when none */
  embeddings?: UsedEmbedding[];
  timings: ImageTimings;
}

/** Which pass of a multi-pass job (hires fix: 1 = the base size, 2 = the hires size) steps belong to. */
export interface StepPhase {
  pass: number;
  passes: number;
  width: number;
  height: number;
}

export interface ProgressEvents {
  onLoad?(stage: string, done: number, total: number): void;
  /**
   * step 1…total within batch 1…batches (total = UNet calls of the scheduler's timesteps);
   * `phase` names the pass of a multi-pass job (hires fix), absent for single-pass jobs
   */
  onStep?(step: number, total: number, batch: number, batches: number, phase?: StepPhase): void;
  /** one-line notices (provider fallback, ToMe skipped, ...) */
  onNotice?(message: string): void;
}
