/**
 * Sharding one plan over N workers without coordination (`--shard I/N`, `--shard auto`). Pure:
 * the environment comes in as an argument.
 *
 * Every worker builds the same plan (same jobs, seeds and file names — names come from the plan,
 * never from what is already in the output directory) and keeps the images assigned to it. The
 * unit of assignment is one UNet batch of a job (batchSize images that are denoised together;
 * with the default --batch-size 1 that is one image): splitting a batch would change what is
 * computed together, and the images would no longer be byte-identical to a single run. Units go,
 * in plan order, to the shard with the fewest images so far (the lowest index on a tie) — with
 * equal batch sizes plain round-robin, so every shard gets ⌊T/N⌋ or ⌈T/N⌉ images and a mix of
 * every part of the prompt file.
 */
import { UsageError } from '../errors.js';
import type { Job, PlannedImage } from './jobs.js';

export interface Shard {
  /** 0-based */
  index: number;
  count: number;
}

export function shardLabel(s: Shard): string {
  return `${s.index}/${s.count}`;
}

const INT = /^\d+$/;

function badSpec(spec: string): never {
  throw new UsageError(`--shard: expected I/N with 0 ≤ I < N (e.g. 0/4), or auto; got ${JSON.stringify(spec)}`);
}

function checked(index: number, count: number, where: string): Shard {
  if (!Number.isSafeInteger(count) || count < 1) throw new UsageError(`${where}: the shard count must be a positive integer (got ${count})`);
  if (!Number.isSafeInteger(index) || index < 0 || index >= count) {
    throw new UsageError(`${where}: shard index ${index} is not within 0…${count - 1}`);
  }
  return { index, count };
}

function envInt(env: Record<string, string | undefined>, name: string): number | undefined {
  const v = env[name];
  if (v === undefined || v.trim() === '') return undefined;
  if (!/^-?\d+$/.test(v.trim())) throw new UsageError(`--shard auto: ${name}=${JSON.stringify(v)} is not an integer`);
  return Number(v.trim());
}

/**
 * The shard a worker runs: `I/N`, or `auto` from the job engine's environment —
 * Kubernetes Indexed Jobs (JOB_COMPLETION_INDEX; N from --shard-count or SDGEN_SHARD_COUNT),
 * Slurm job arrays (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN and
 * SLURM_ARRAY_TASK_STEP), AWS Batch array jobs (AWS_BATCH_JOB_ARRAY_INDEX; N from
 * AWS_BATCH_JOB_ARRAY_SIZE, --shard-count or SDGEN_SHARD_COUNT). `shardCount` (--shard-count)
 * wins over every variable.
 */
export function parseShard(spec: string, env: Record<string, string | undefined>, shardCount?: number): Shard {
  if (spec !== 'auto') {
    if (shardCount !== undefined) throw new UsageError('--shard-count goes with --shard auto (--shard I/N names the count itself)');
    const m = /^\s*([^/]*)\/([^/]*)\s*$/.exec(spec);
    if (!m || !INT.test(m[1]!) || !INT.test(m[2]!)) badSpec(spec);
    const index = Number(m[1]);
    const count = Number(m[2]);
    if (count < 1 || index >= count) badSpec(spec);
    return checked(index, count, '--shard');
  }
  if (shardCount !== undefined && (!Number.isSafeInteger(shardCount) || shardCount < 1)) {
    throw new UsageError(`--shard-count: expected a positive integer, got ${shardCount}`);
  }
  const sdgenCount = envInt(env, 'SDGEN_SHARD_COUNT');
  const k8s = envInt(env, 'JOB_COMPLETION_INDEX');
  if (k8s !== undefined) {
    const count = shardCount ?? sdgenCount;
    if (count === undefined) {
      throw new UsageError('--shard auto: JOB_COMPLETION_INDEX is set (Kubernetes Indexed Job) but not the shard count: pass --shard-count N or set SDGEN_SHARD_COUNT to the Job\'s completions');
    }
    return checked(k8s, count, '--shard auto (JOB_COMPLETION_INDEX)');
  }
  const slurm = envInt(env, 'SLURM_ARRAY_TASK_ID');
  if (slurm !== undefined) {
    const count = shardCount ?? envInt(env, 'SLURM_ARRAY_TASK_COUNT') ?? sdgenCount;
    if (count === undefined) throw new UsageError('--shard auto: SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT: pass --shard-count N');
    const min = envInt(env, 'SLURM_ARRAY_TASK_MIN') ?? 0;
    const step = envInt(env, 'SLURM_ARRAY_TASK_STEP') ?? 1;
    if (step < 1 || (slurm - min) % step !== 0) {
      throw new UsageError(`--shard auto: SLURM_ARRAY_TASK_ID ${slurm} is not on the array's grid (min ${min}, step ${step})`);
    }
    return checked((slurm - min) / step, count, '--shard auto (SLURM_ARRAY_TASK_ID)');
  }
  const aws = envInt(env, 'AWS_BATCH_JOB_ARRAY_INDEX');
  if (aws !== undefined) {
    const count = shardCount ?? envInt(env, 'AWS_BATCH_JOB_ARRAY_SIZE') ?? sdgenCount;
    if (count === undefined) {
      throw new UsageError('--shard auto: AWS_BATCH_JOB_ARRAY_INDEX is set but not the array size: set AWS_BATCH_JOB_ARRAY_SIZE or SDGEN_SHARD_COUNT, or pass --shard-count N');
    }
    return checked(aws, count, '--shard auto (AWS_BATCH_JOB_ARRAY_INDEX)');
  }
  throw new UsageError('--shard auto: no shard index in the environment (JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID or AWS_BATCH_JOB_ARRAY_INDEX); give --shard I/N');
}

/**
 * The shard of every planned image (indexed by plan position), for a plan of `jobs` in plan
 * order. Assignment is by batch (see the header); images of one batch share a shard.
 */
export function assignShards(jobs: readonly Job[], count: number): number[] {
  const out: number[] = [];
  const load = new Array<number>(count).fill(0);
  for (const job of jobs) {
    const bs = job.params.batchSize;
    for (let first = 0; first < job.imageCount; first += bs) {
      const n = Math.min(bs, job.imageCount - first);
      let best = 0;
      for (let s = 1; s < count; s++) if (load[s]! < load[best]!) best = s;
      load[best]! += n;
      for (let i = 0; i < n; i++) out.push(best);
    }
  }
  return out;
}

/** Images per shard of an assignment. */
export function shardSizes(assignment: readonly number[], count: number): number[] {
  const sizes = new Array<number>(count).fill(0);
  for (const s of assignment) sizes[s]!++;
  return sizes;
}

/** The images of `images` (a whole plan) that belong to `shard`. */
export function imagesOfShard(images: readonly PlannedImage[], assignment: readonly number[], shard: Shard): PlannedImage[] {
  return images.filter((img) => assignment[img.ordinal] === shard.index);
}
