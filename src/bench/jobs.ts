/** Messages between the benchmark parent (./child.ts) and its worker processes (./worker.ts). */
import type { ConvRate, MatMulRate } from './matmul-rate.js';
import type { ProfileSummary } from './profile.js';
import type { BenchAttention, BenchConv } from './types.js';
import type { ToMeOptions } from '../tome/types.js';
import type { HiresCallSummary } from './hires.js';

export type WorkerJob =
  | {
      kind: 'unet';
      modelPath: string;
      size: number;
      batch: number;
      seqLen: number;
      calls: number;
      threads: number;
      memArena?: boolean;
      memPattern?: boolean;
      /** profile the warm-up call (FLOPs) — file prefix for onnxruntime's trace */
      profilePrefix?: string;
      /** also profile one steady-state call (per-op breakdown) */
      profileSteady?: boolean;
      /** load through the optimized-graph cache here (Winograd variants: their folded weights) */
      cacheDir?: string;
    }
  | { kind: 'matmul'; n: number; calls: number; threads: number; /** also measure the 3×3 convolution rate */ conv?: boolean }
  | {
      kind: 'load';
      modelPath: string;
      threads: number;
      /** load through the optimized-graph cache in this directory */
      cacheDir?: string;
      variant?: string;
      /** store prepacked weights in the cache entry */
      savePrepacked?: boolean;
      memArena?: boolean;
      memPattern?: boolean;
      /** run one call at this size after loading (first-call time) */
      runSize?: number;
    }
  | {
      kind: 'image';
      modelDir: string;
      size: number;
      steps: number;
      ratio: number;
      attention: BenchAttention;
      conv: BenchConv;
      threads: number;
      cacheDir: string;
      /** only load the pipeline (filling the caches) and report the load time */
      warmOnly?: boolean;
    }
  | {
      kind: 'hires';
      modelDir: string;
      base: number;
      target: number;
      steps: [number, number];
      upscaler: string;
      strength: number;
      /** both passes' ToMe settings (their size thresholds decide where ToMe runs) */
      tome: ToMeOptions;
      attention: BenchAttention;
      conv: BenchConv;
      threads: number;
      cacheDir: string;
      /**
       * untimed: load the pipeline for pass 2 (its UNet graph into the caches), then make one
       * 64² → 128² hires image with 1 + 1 steps (pass 1's UNet, the VAE, the encoder of a
       * pixel-space upscaler)
       */
      warmOnly?: boolean;
    };

export interface UnetJobResult {
  kind: 'unet';
  loadMs: number;
  warmupMs: number;
  samplesMs: number[];
  flops?: number;
  profile?: ProfileSummary;
  warmupProfile?: ProfileSummary;
  maxRss: number;
}

export interface LoadJobResult {
  kind: 'load';
  loadMs: number;
  cached: boolean;
  firstRunMs?: number;
  maxRss: number;
  /** the optimized-graph cache was skipped, and why (one line) */
  notice?: string;
}

export interface ImageJobResult {
  kind: 'image';
  loadMs: number;
  textEncoderMs: number;
  unetMs: number;
  vaeMs: number;
  pngMs: number;
  totalMs: number;
  maxRss: number;
}

export interface HiresJobResult {
  kind: 'hires';
  loadMs: number;
  calls: HiresCallSummary;
  pass1Tome: boolean;
  pass2Tome: boolean;
  /** steps the pipeline reported per pass (ProgressEvents.onStep's phase) */
  passSteps: [number, number];
  /** the pipeline's decode of the final image (ms, tiling included) */
  vaeDecodeMs: number;
  pngMs: number;
  /** generate() from its call to the image, plus the PNG encode (ms) */
  totalMs: number;
  maxRss: number;
}

export interface MatMulJobResult {
  kind: 'matmul';
  rate: MatMulRate;
  /** the 3×3 convolution rate, measured in the same process */
  conv?: ConvRate;
  maxRss: number;
}

export type JobResult = UnetJobResult | LoadJobResult | ImageJobResult | HiresJobResult | MatMulJobResult;

export type WorkerReply = { ok: true; result: JobResult } | { ok: false; error: string; maxRss: number };
