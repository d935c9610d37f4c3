/**
 * Which convolution algorithm a session runs (`--conv auto|direct|winograd`), and the cached
 * Winograd variant of a model file.
 *
 * - 'auto': Winograd on the CPU provider (onnxruntime's CPU convolutions are direct NCHWc
 *   kernels; the rewrite measured 1.3× per SD 1.5 UNet call and 1.5–1.7× per VAE decode on
 *   x86, docs/performance.md), direct elsewhere (cuDNN, DirectML and CoreML choose Winograd or
 *   implicit GEMM kernels themselves).
 * - 'winograd': the rewrite on every provider (it uses standard ONNX ops only).
 * - 'direct': the model's convolutions as exported.
 *
 * float16 convolutions are never rewritten (the m = 4 transforms need float32's range), so a
 * float16 model runs as exported whatever the mode.
 */
import type { ConvMode } from '../pipeline/types.js';
import { getRewrittenModel, type RewrittenModel } from './fused-model.js';
import { winogradConvs, type WinogradOptions } from './winograd.js';

export function useWinograd(mode: ConvMode | undefined, provider: string): boolean {
  if (mode === 'winograd') return true;
  if (mode === 'direct') return false;
  return provider.toLowerCase() === 'cpu';
}

/**
 * The Winograd variant of `modelPath` (cached under `<cacheDir>/winograd/`); `rewritten: false`
 * when the model has no convolution worth rewriting (a text encoder, a float16 model).
 */
export function getWinogradModel(modelPath: string, cacheDir: string, opts: WinogradOptions = {}): Promise<RewrittenModel> {
  return getRewrittenModel(modelPath, cacheDir, 'winograd', { v: 1, tile: opts.tile ?? 'auto', minChannels: opts.minChannels ?? null }, (m) => winogradConvs(m, opts));
}
