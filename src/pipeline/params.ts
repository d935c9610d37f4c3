import { DEFAULT_TOME } from '../tome/types.js';
import type { GenerationParams } from './types.js';

/**
 * Generation parameters with sdgen's library defaults (empty prompt, 512×512, 10 steps, Euler a,
 * CFG 7, seed 0, ToMe off, attention auto), `over` applied. For library callers, benchmarks and
 * tests; the CLI resolves its own defaults from flags, presets and config.
 */
export function generationParams(over: Partial<GenerationParams> = {}): GenerationParams {
  return {
    prompt: '',
    negativePrompt: '',
    width: 512,
    height: 512,
    steps: 10,
    cfg: 7,
    seed: 0,
    scheduler: 'euler_a',
    batchSize: 1,
    nIter: 1,
    eta: 0,
    clipSkip: 1,
    emphasis: true,
    tome: { ...DEFAULT_TOME },
    attention: 'auto',
    ...over,
  };
}
