/**
 * The denoising loop for one batch of images: classifier-free guidance in one UNet call per
 * step (batch rows = [uncond 0…B−1, cond 0…B−1], uncond first as diffusers), one Scheduler and
 * one TorchGenerator per image, timestep fed the way the UNet's metadata says, optional LCM
 * guidance embedding and ToMe random-destination inputs. All UNet inputs, the output and the
 * latent buffers are allocated once per batch and reused every step.
 */
import ort from 'onnxruntime-node';
import { SdgenError } from '../errors.js';
import { ortErrorMessage } from '../models/ort-log.js';
import type { Scheduler } from '../schedulers/types.js';
import type { TorchGenerator } from '../random/torch-generator.js';
import type { FloatType, UnetIO } from '../models/io.js';
import { FloatInput, toFloat32 } from './tensors.js';
import { float32ToFloat16Into } from './tensors.js';
import type { PromptEmbedding } from './text-encoding.js';

/** One ToMe `tome_rand_<k>` input: [h//sy, w//sx, 1] indices in [0, sx·sy). */
export interface TomeRandInput {
  name: string;
  type: 'int64' | 'int32';
  shape: number[];
}

export interface TomeRandFeed {
  inputs: TomeRandInput[];
  /** sx · sy */
  high: number;
  /**
   * One generator per image of the batch (the batch must then hold one image, see the
   * pipeline): per UNet call, input k gets `randint(high, shape_k)` in k order. Used only when
   * the call's batch is even (tomesd turns random destinations off for odd batches); odd
   * batches get zeros (tomesd's no-rand destination).
   */
  generators: TorchGenerator[];
}

export interface DenoiseArgs {
  session: ort.InferenceSession;
  io: UnetIO;
  /** one per image, timesteps already set, all with the same timesteps */
  schedulers: Scheduler[];
  /** one per image: noise for ancestral/stochastic steps */
  generators: TorchGenerator[];
  /**
   * one per image, [1,4,h,w] initial latents (× initNoiseSigma). The entries are replaced: after
   * the call `latents[b]` holds image b's final latents (buffers are swapped, not copied).
   */
  latents: Float32Array[];
  latentHeight: number;
  latentWidth: number;
  cond: PromptEmbedding;
  /** null: no unconditional pass */
  uncond: PromptEmbedding | null;
  cfg: number;
  /** LCM guidance embedding [dim] for every row, when the UNet has timestep_cond */
  timestepCond: Float32Array | null;
  tomeRand: TomeRandFeed | null;
  /**
   * Further [rows, dim] UNet inputs given per row (SDXL's `text_embeds` and `time_ids`, from its
   * conditioning stage): the loop feeds them as it feeds the text embeddings, uncond rows first,
   * without knowing what they mean. Built once per batch.
   */
  extraInputs?: ExtraUnetInput[];
  /**
   * Per image, [E, h, w] channels fed after the 4 latent channels of the UNet's sample input
   * (a 9-channel inpainting UNet: the latent mask and the masked picture's latents), the same in
   * the uncond and cond rows; the latents alone when absent.
   */
  extraChannels?: Float32Array[] | null;
  signal?: AbortSignal;
  /** after each step (1-based) */
  onStep?: (step: number, total: number) => void;
}

/** One extra UNet input: `cond` for the conditional rows, `uncond` (same length) for the unconditional ones. */
export interface ExtraUnetInput {
  name: string;
  type: FloatType;
  cond: Float32Array;
  /** required when the run has an unconditional pass */
  uncond: Float32Array | null;
}

export interface DenoiseResult {
  unetMs: number;
}

/** Thrown when the AbortSignal fires between steps; no partial image is produced. */
export class GenerationAbortedError extends SdgenError {
  constructor(reason?: unknown) {
    super('generation aborted', { cause: reason });
    this.name = 'AbortError';
  }
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new GenerationAbortedError(signal.reason);
}

/**
 * An image's initial latents: the generator's first randn([1, 4, h, w]) draw × the scheduler's
 * initNoiseSigma, multiplied in float32 (diffusers' prepare_latents with a CPU generator).
 */
export function initialLatents(generator: TorchGenerator, scheduler: Scheduler, latentHeight: number, latentWidth: number): Float32Array {
  const x = generator.randn([1, 4, latentHeight, latentWidth]);
  const sigma = Math.fround(scheduler.initNoiseSigma);
  if (sigma !== 1) for (let k = 0; k < x.length; k++) x[k] = Math.fround(x[k]! * sigma);
  return x;
}

/** Yield to the event loop (session.run blocks it) so that aborts and progress get through. */
const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Timestep input of the UNet: built once per batch, value rewritten each step. */
class TimestepInput {
  readonly tensor: ort.Tensor;
  private readonly f32: Float32Array | null = null;
  private readonly f16: Uint16Array | null = null;
  private readonly i64: BigInt64Array | null = null;
  private readonly i32: Int32Array | null = null;

  constructor(io: UnetIO['timestep'], rows: number) {
    const len = io.rank === 0 ? 1 : (io.length ?? rows);
    const dims = io.rank === 0 ? [] : [len];
    switch (io.type) {
      case 'float32':
        this.f32 = new Float32Array(len);
        this.tensor = new ort.Tensor('float32', this.f32, dims);
        break;
      case 'float16':
        this.f16 = new Uint16Array(len);
        this.f32 = new Float32Array(len);
        this.tensor = new ort.Tensor('float16', this.f16, dims);
        break;
      case 'int64':
        this.i64 = new BigInt64Array(len);
        this.tensor = new ort.Tensor('int64', this.i64, dims);
        break;
      case 'int32':
        this.i32 = new Int32Array(len);
        this.tensor = new ort.Tensor('int32', this.i32, dims);
        break;
    }
  }

  set(t: number): void {
    if (this.i64) this.i64.fill(BigInt(Math.trunc(t)));
    else if (this.i32) this.i32.fill(Math.trunc(t));
    else {
      this.f32!.fill(t);
      if (this.f16) float32ToFloat16Into(this.f32!, this.f16);
    }
  }
}

/** Run the denoising loop for one batch; `args.latents` hold the final latents afterwards. */
export async function denoiseBatch(args: DenoiseArgs): Promise<DenoiseResult> {
  const { session, io, schedulers, generators, latents, cond, uncond, cfg, signal } = args;
  const B = latents.length;
  if (B === 0) return { unetMs: 0 };
  if (schedulers.length !== B || generators.length !== B) throw new Error('denoiseBatch: one scheduler and generator per image');
  const h = args.latentHeight;
  const w = args.latentWidth;
  const n = 4 * h * w;
  for (const l of latents) if (l.length !== n) throw new Error('denoiseBatch: latent size mismatch');
  const guided = uncond !== null;
  if (guided && (uncond.seqLen !== cond.seqLen || uncond.dim !== cond.dim)) {
    throw new Error('denoiseBatch: cond and uncond embeddings differ in shape');
  }
  const rows = guided ? 2 * B : B;
  const S = cond.seqLen;
  const D = cond.dim;
  if (io.encoderHiddenStates.dim !== null && io.encoderHiddenStates.dim !== D) {
    throw new SdgenError(`unet: input "${io.encoderHiddenStates.name}" takes width ${io.encoderHiddenStates.dim}, the text encoder gives ${D}`);
  }

  const extraCh = args.extraChannels ?? null;
  if (extraCh && extraCh.length !== B) throw new Error('denoiseBatch: extra channels for every image or none');
  const E = extraCh ? extraCh[0]!.length / (h * w) : 0;
  if (extraCh && (!Number.isInteger(E) || extraCh.some((x) => x.length !== E * h * w))) throw new Error('denoiseBatch: extra channels of another size');
  /** values per row of the sample input: the latents, then the extra channels */
  const rowN = (4 + E) * h * w;
  const fixed = io.sample.dims;
  if (fixed) {
    const want = [rows, 4 + E, h, w];
    const names = ['batch', 'channels', 'height', 'width'];
    for (let d = 0; d < 4; d++) {
      const f = fixed[d];
      if (f !== null && f !== undefined && f !== want[d]) {
        throw new SdgenError(
          `unet: input "${io.sample.name}" has a fixed ${names[d]} of ${f}; this run needs ${want[d]}` +
            (d === 0 ? ' (images per batch, ×2 with guidance)' : d >= 2 ? ' (latent size = image size / VAE scale factor)' : ''),
        );
      }
    }
  }

  // Inputs, allocated once for the batch.
  const sample = new FloatInput(io.sample.type, [rows, 4 + E, h, w]);
  if (extraCh) {
    for (let b = 0; b < B; b++) {
      sample.data.set(extraCh[b]!, b * rowN + n);
      if (guided) sample.data.set(extraCh[b]!, (B + b) * rowN + n);
    }
  }
  const ehs = new FloatInput(io.encoderHiddenStates.type, [rows, S, D]);
  for (let b = 0; b < B; b++) {
    if (guided) {
      ehs.data.set(uncond.data, b * S * D);
      ehs.data.set(cond.data, (B + b) * S * D);
    } else {
      ehs.data.set(cond.data, b * S * D);
    }
  }
  const ehsTensor = ehs.sync();
  const timestep = new TimestepInput(io.timestep, rows);
  const feeds: Record<string, ort.Tensor> = {
    [io.sample.name]: sample.tensor,
    [io.timestep.name]: timestep.tensor,
    [io.encoderHiddenStates.name]: ehsTensor,
  };
  if (io.timestepCond) {
    if (!args.timestepCond) throw new SdgenError(`unet: input "${io.timestepCond.name}" needs a guidance embedding`);
    const dim = args.timestepCond.length;
    if (io.timestepCond.dim !== null && io.timestepCond.dim !== dim) {
      throw new SdgenError(`unet: input "${io.timestepCond.name}" takes width ${io.timestepCond.dim}, got ${dim}`);
    }
    const tc = new FloatInput(io.timestepCond.type, [rows, dim]);
    for (let r = 0; r < rows; r++) tc.data.set(args.timestepCond, r * dim);
    feeds[io.timestepCond.name] = tc.sync();
  }
  for (const x of args.extraInputs ?? []) {
    const dim = x.cond.length;
    if (guided && (!x.uncond || x.uncond.length !== dim)) throw new Error(`denoiseBatch: extra input ${x.name} needs an uncond value of width ${dim}`);
    const f = new FloatInput(x.type, [rows, dim]);
    for (let b = 0; b < B; b++) {
      if (guided) {
        f.data.set(x.uncond!, b * dim);
        f.data.set(x.cond, (B + b) * dim);
      } else f.data.set(x.cond, b * dim);
    }
    feeds[x.name] = f.sync();
  }
  const rand = args.tomeRand;
  const randBufs: (BigInt64Array | Int32Array)[] = [];
  if (io.tomeRand.length > 0) {
    if (!rand || rand.inputs.length !== io.tomeRand.length) {
      throw new SdgenError(`unet: the ToMe-patched model needs ${io.tomeRand.length} tome_rand inputs`);
    }
    if (rand.generators.length !== 1 && rows % 2 === 0) {
      throw new Error('denoiseBatch: ToMe random destinations need one image per batch');
    }
    for (const r of rand.inputs) {
      const size = r.shape.reduce((a, b) => a * b, 1);
      const buf = r.type === 'int64' ? new BigInt64Array(size) : new Int32Array(size);
      randBufs.push(buf);
      feeds[r.name] = new ort.Tensor(r.type, buf, r.shape);
    }
  }
  const useRand = rand !== null && randBufs.length > 0 && rows % 2 === 0;

  // Output, preallocated (onnxruntime writes into it).
  const outType = io.output.type;
  const outData = outType === 'float16' ? new Uint16Array(rows * n) : new Float32Array(rows * n);
  const outTensor = new ort.Tensor(outType, outData, [rows, 4, h, w]);
  const eps = outType === 'float16' ? new Float32Array(rows * n) : (outData as Float32Array);
  const fetches = { [io.output.name]: outTensor };

  // Double-buffered latents so that no scheduler writes the array it reads.
  const spare: Float32Array[] = latents.map(() => new Float32Array(n));
  const g = Math.fround(cfg);
  const timesteps = schedulers[0]!.timesteps;
  const total = timesteps.length;
  let unetMs = 0;

  for (let i = 0; i < total; i++) {
    throwIfAborted(signal);
    const t = Number(timesteps[i]);
    for (let b = 0; b < B; b++) {
      const dst = sample.data.subarray(b * rowN, b * rowN + n);
      const scaled = schedulers[b]!.scaleModelInput(latents[b]!, t, dst);
      if (scaled !== dst) dst.set(scaled);
      if (guided) sample.data.copyWithin((B + b) * rowN, b * rowN, b * rowN + n);
    }
    sample.sync();
    timestep.set(t);
    if (useRand) {
      const gen = rand!.generators[0]!;
      for (let k = 0; k < randBufs.length; k++) {
        const drawn = gen.randint(rand!.high, rand!.inputs[k]!.shape);
        const buf = randBufs[k]!;
        if (buf instanceof BigInt64Array) buf.set(drawn);
        else for (let j = 0; j < buf.length; j++) buf[j] = Number(drawn[j]!);
      }
    }

    const t0 = performance.now();
    let result: ort.InferenceSession.OnnxValueMapType;
    try {
      result = await session.run(feeds, fetches);
    } catch (err) {
      throw new SdgenError(`unet failed at step ${i + 1}: ${ortErrorMessage(err)}`, { cause: err });
    }
    unetMs += performance.now() - t0;
    const produced = result[io.output.name] as ort.Tensor | undefined;
    if (outType === 'float16') toFloat32(produced ?? outTensor, eps);
    else if (produced && produced.data !== outData) outData.set(produced.data as Float32Array);

    for (let b = 0; b < B; b++) {
      const e = eps.subarray(b * n, (b + 1) * n);
      if (guided) {
        // eps = eps_u + g·(eps_c − eps_u), float32 at every operation like torch.
        const c = eps.subarray((B + b) * n, (B + b + 1) * n);
        for (let j = 0; j < n; j++) {
          const u = e[j]!;
          e[j] = Math.fround(u + Math.fround(g * Math.fround(c[j]! - u)));
        }
      }
      const next = spare[b]!;
      const stepped = schedulers[b]!.step(e, t, latents[b]!, generators[b], next);
      spare[b] = latents[b]!;
      if (stepped !== next) next.set(stepped);
      latents[b] = next;
    }
    args.onStep?.(i + 1, total);
    await tick();
  }
  return { unetMs };
}
