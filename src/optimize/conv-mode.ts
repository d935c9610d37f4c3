/**
 * Which convolution algorithm a session runs (`--conv auto|direct|winograd`), and the cached
 * Winograd variant of a model file.
 *
 * - 'auto': Winograd on the CPU provider of a machine with at least 12 GiB of memory (see
 *   WINOGRAD_MIN_MEMORY; onnxruntime's CPU convolutions are direct NCHWc
 *   kernels; the rewrite measured 1.3× per SD 1.5 UNet call and 1.5–1.7× per VAE decode on
 *   x86, docs/performance.md), direct elsewhere (cuDNN, DirectML and CoreML choose Winograd or
 *   implicit GEMM kernels themselves).
 * - 'winograd': the rewrite on every provider (it uses standard ONNX ops only).
 * - 'direct': the model's convolutions as exported.
 *
 * float16 convolutions are never rewritten (the m = 4 transforms need float32's range), so a
 * float16 model runs as exported whatever the mode.
 */
import os from 'node:os';
import type { ConvMode } from '../pipeline/types.js';
import { getRewrittenModel, type RewrittenModel } from './fused-model.js';
import { winogradConvs, type WinogradOptions } from './winograd.js';

/**
 * Memory below which 'auto' stays direct: onnxruntime folds the transformed weights when it
 * first optimizes a graph, which peaks at about 9.5 GB for SD 1.5's UNet (once; later loads
 * read the folded graph from the optimized-graph cache at ~5.5 GB).
 */
export const WINOGRAD_MIN_MEMORY = 12 * 2 ** 30;

export function useWinograd(mode: ConvMode | undefined, provider: string, totalMemory: number = os.totalmem()): boolean {
  if (mode === 'winograd') return true;
  if (mode === 'direct') return false;
  return provider.toLowerCase() === 'cpu' && totalMemory >= WINOGRAD_MIN_MEMORY;
}

/**
 * The Winograd variant of `modelPath` (cached under `<cacheDir>/winograd/`); `rewritten: false`
 * when the model has no convolution worth rewriting (a text encoder, a float16 model).
 */
export function getWinogradModel(modelPath: string, cacheDir: string, opts: WinogradOptions = {}): Promise<RewrittenModel> {
  return getRewrittenModel(modelPath, cacheDir, 'winograd', { v: 1, tile: opts.tile ?? 'auto', minChannels: opts.minChannels ?? null }, (m) => winogradConvs(m, opts));
}
