import { UsageError } from '../errors.js';
import type { ModelFolder } from '../models/folder.js';
import { checkStepCount } from '../schedulers/config.js';
import { tokenizeChunks } from '../text/chunks.js';
import { checkPromptLength } from '../text/limits.js';
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

/**
 * Checks the parameters the engine depends on; a UsageError (one line) on a bad value. Pure, so
 * the batch runner checks a job before any model loads; with the model folder it also checks
 * what depends on the model (size multiples, CLIP token count, steps against the scheduler's
 * training range), as every generate call does.
 */
export function validateGenerationParams(p: GenerationParams, folder?: ModelFolder): void {
  const scale = folder?.vaeScaleFactor ?? 8;
  for (const [k, v] of [['width', p.width], ['height', p.height]] as const) {
    if (!Number.isInteger(v) || v <= 0) throw new UsageError(`${k} must be a positive integer (got ${v})`);
    if (v % 8 !== 0) throw new UsageError(`${k} must be a multiple of 8 (got ${v})`);
    if (v % scale !== 0) throw new UsageError(`${k} must be a multiple of ${scale} for this model (got ${v})`);
  }
  if (!Number.isInteger(p.steps) || p.steps < 1) throw new UsageError(`steps must be a positive integer (got ${p.steps})`);
  if (!Number.isInteger(p.batchSize) || p.batchSize < 1) throw new UsageError(`batch size must be a positive integer (got ${p.batchSize})`);
  if (!Number.isInteger(p.nIter) || p.nIter < 1) throw new UsageError(`batch count must be a positive integer (got ${p.nIter})`);
  if (!Number.isFinite(p.cfg)) throw new UsageError(`cfg must be a number (got ${p.cfg})`);
  if (!Number.isInteger(p.seed) || p.seed < -1) throw new UsageError(`seed must be an integer ≥ 0, or -1 for random (got ${p.seed})`);
  if (!Number.isInteger(p.clipSkip) || p.clipSkip < 1) throw new UsageError(`clip skip must be an integer ≥ 1 (got ${p.clipSkip})`);
  if (!Number.isFinite(p.eta) || p.eta < 0) throw new UsageError(`eta must be ≥ 0 (got ${p.eta})`);
  if (p.longPrompt !== undefined && p.longPrompt !== 'chunk' && p.longPrompt !== 'truncate') {
    throw new UsageError(`long prompt mode must be 'chunk' or 'truncate' (got ${String(p.longPrompt)})`);
  }
  // prompt limits (src/text/limits.ts): characters always, CLIP tokens with the folder's tokenizer
  for (const [what, text] of [['prompt', p.prompt], ['negative prompt', p.negativePrompt]] as const) {
    checkPromptLength(text, what);
    if (folder) checkPromptLength(text, what, tokenizeChunks(folder.tokenizer, text, { emphasis: p.emphasis }).tokenCount);
  }
  if (folder) checkStepCount(p.steps, folder.configs.scheduler.num_train_timesteps ?? 1000);
}
