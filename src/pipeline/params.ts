import { DEFAULT_TOME } from '../tome/options.js';
import type { GenerationParams } from './types.js';

/**
 * The seed of image `i` of a job (i = iteration·batchSize + position, from 0): the job's seed + i,
 * A1111's and diffusers' convention, so any image can be regenerated alone from its own seed.
 */
export function imageSeed(params: Pick<GenerationParams, 'seed'>, i: number): number {
  return params.seed + i;
}

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
