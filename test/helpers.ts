/** Helpers shared by the test files (not a test file itself). */
import { DEFAULT_TOME } from '../src/tome/types.js';
import type { GenerationParams } from '../src/pipeline/types.js';

/** Generation parameters with sdgen's defaults (empty prompt, 512×512, 10 steps, Euler a, seed 0), `over` applied. */
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
