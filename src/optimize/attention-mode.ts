/**
 * Which attention implementation a session should run ('auto' resolved per provider and dtype),
 * from what docs/performance.md measured:
 *
 * - CPU, float32: the fused com.microsoft MultiHeadAttention never materializes the [B·H, S, L]
 *   score tensors; it is faster at every size measured and uses a fraction of the memory
 *   (the decomposed graph cannot run 1024² at all on a 16 GB machine).
 * - CPU, float16: onnxruntime's CPU MultiHeadAttention kernel is float32 only, so the session
 *   would fail to load: standard.
 * - CUDA / DirectML: both have MultiHeadAttention kernels (CUDA with flash / memory-efficient
 *   attention) for float16 and float32: fused.
 * - Other providers (CoreML, WebGPU in Node): no MultiHeadAttention kernel we rely on: standard.
 */
import { UsageError } from '../errors.js';

/** `--attention`: 'auto' resolves per provider and float type (chooseAttention). */
export type AttentionMode = 'auto' | 'standard' | 'fused';
export type ResolvedAttention = 'standard' | 'fused';

/** Whether `provider` has a com.microsoft MultiHeadAttention kernel for this dtype. */
export function providerSupportsFusedAttention(provider: string, isFp16: boolean): boolean {
  const p = provider.toLowerCase();
  if (p === 'cpu') return !isFp16;
  return p === 'cuda' || p === 'dml' || p === 'tensorrt';
}

/**
 * Resolves `--attention`. 'auto' picks fused wherever the provider supports it (measured faster
 * and lighter on CPU float32); an explicit 'fused' the provider cannot run is a usage error.
 */
export function chooseAttention(mode: AttentionMode, provider: string, isFp16: boolean): ResolvedAttention {
  const supported = providerSupportsFusedAttention(provider, isFp16);
  if (mode === 'standard') return 'standard';
  if (mode === 'fused') {
    if (!supported) {
      throw new UsageError(
        provider.toLowerCase() === 'cpu'
          ? "--attention fused: onnxruntime's CPU MultiHeadAttention is float32 only and this model is float16 (use --attention standard or auto)"
          : `--attention fused: the ${provider} provider has no MultiHeadAttention kernel sdgen relies on (use --attention standard or auto)`,
      );
    }
    return 'fused';
  }
  return supported ? 'fused' : 'standard';
}
