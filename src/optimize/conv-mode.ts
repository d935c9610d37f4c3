/**
 * Which convolution algorithm a session runs (`--conv auto|direct|winograd`), and the cached
 * Winograd variant of a model file.
 *
 * - 'auto': Winograd on the CPU provider of a machine with at least 12 GiB of memory (see
 *   WINOGRAD_MIN_MEMORY; onnxruntime's CPU convolutions are direct NCHWc
 *   kernels; the rewrite measured 1.3× per SD 1.5 UNet call and about 1.6× per VAE decode on
 *   x86, whose image-resolution level stays direct (autoTile) but for its upsampler
 *   convolution's polyphase form; docs/performance.md), direct
 *   elsewhere (cuDNN, DirectML and CoreML choose Winograd or implicit GEMM kernels themselves).
 * - 'winograd': the rewrite on every provider (it uses standard ONNX ops only).
 * - 'direct': the model's convolutions as exported.
 *
 * float16 convolutions are never rewritten (the m = 4 transforms need float32's range), so a
 * float16 model runs as exported whatever the mode.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdir, open, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { readTensorBytes } from '../onnx/model-io.js';
import { tensorFloats } from '../onnx/tensor.js';
import { DataLocation, type ModelProto, type TensorProto } from '../onnx/types.js';
import { getRewrittenModel, type RewriteCount, type RewrittenModel } from './fused-model.js';
import { polyphaseUpsampleConvs } from './polyphase.js';
import { winogradConvs, winogradU, type WinogradFold, type WinogradOptions, type WinogradResult } from './winograd.js';

/** Convolution algorithm: 'auto' = Winograd on the CPU provider with enough memory (useWinograd). */
export type ConvMode = 'auto' | 'direct' | 'winograd';

/**
 * Memory below which 'auto' stays direct: the transformed weights add about 1.6 GB (SD 1.5
 * UNet) and 0.6 GB (VAE decoder) to a run's memory, which a small machine needs for activations.
 */
export const WINOGRAD_MIN_MEMORY = 12 * 2 ** 30;

export function useWinograd(mode: ConvMode | undefined, provider: string, totalMemory: number = os.totalmem()): boolean {
  if (mode === 'winograd') return true;
  if (mode === 'direct') return false;
  return provider.toLowerCase() === 'cpu' && totalMemory >= WINOGRAD_MIN_MEMORY;
}

/** The external data file of a Winograd variant's transformed weights (linked into its entry). */
export const WINOGRAD_WEIGHTS_FILE = 'winograd.weights';
const ALIGN = 4096;

/** A float32 weight's values, inline or external, without making an external one inline. */
async function weightFloats(t: TensorProto): Promise<Float32Array> {
  const bytes = await readTensorBytes(t);
  // tensorFloats views the bytes (copying them when a decoded file left them unaligned)
  return tensorFloats(bytes === undefined ? t : { name: t.name, dims: t.dims, dataType: t.dataType, rawData: bytes });
}

/**
 * Version of the rewrite's output, part of every cache key of a rewritten graph (6: strides no
 * longer pass through Shape, which gave ToMe graphs of SDXL the wrong tile at its 32×32 level).
 */
export const WINOGRAD_REWRITE_VERSION = 6;

/** `<weights file><USED_SUFFIX>`: its modification time is the weights file's last reuse (cache-prune.ts). */
const USED_SUFFIX = '.used';

/**
 * Computes the transformed weights U of `folds` (winogradU) into one data file under `dir`,
 * named by the content of the weights they come from, so that every variant of a model (each
 * ToMe ratio, fused or not) shares one file; an existing file is reused. Points each fold's
 * initializer at its range of the file (location WINOGRAD_WEIGHTS_FILE) and returns the file.
 */
export async function writeWinogradWeights(folds: readonly WinogradFold[], dir: string): Promise<string> {
  const hash = createHash('sha256');
  let offset = 0;
  const ranges: { offset: number; length: number }[] = [];
  for (const f of folds) {
    const a = f.m + 2;
    hash.update(`${f.m},${f.K},${f.C};`);
    const w = await weightFloats(f.w);
    hash.update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength));
    const length = a * a * f.K * f.C * 4;
    ranges.push({ offset, length });
    offset = Math.ceil((offset + length) / ALIGN) * ALIGN;
  }
  const file = path.join(dir, `${hash.digest('hex').slice(0, 32)}.bin`);
  const total = ranges.length > 0 ? ranges[ranges.length - 1]!.offset + ranges[ranges.length - 1]!.length : 0;
  if (existsSync(file) && statSync(file).size === total) {
    // reused: marked as just used, so that pruneDerived leaves it to the entry about to link it.
    // The mark is a file beside it: the weights file's own time is part of the identity of every
    // graph that links it (modelFileIdentity), and touching it would invalidate their cached
    // optimized graphs each time another variant is made.
    await writeFile(`${file}${USED_SUFFIX}`, '').catch(() => {});
  } else {
    await mkdir(dir, { recursive: true });
    const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    const fh = await open(tmp, 'w');
    try {
      for (let i = 0; i < folds.length; i++) {
        const f = folds[i]!;
        const u = winogradU(await weightFloats(f.w), f.K, f.C, f.m);
        await fh.write(new Uint8Array(u.buffer, u.byteOffset, u.byteLength), 0, u.byteLength, ranges[i]!.offset);
      }
      await fh.close();
      await rename(tmp, file);
    } catch (err) {
      await fh.close().catch(() => {});
      await rm(tmp, { force: true });
      throw err;
    }
  }
  folds.forEach((f, i) => {
    f.u.dataLocation = DataLocation.EXTERNAL;
    f.u.externalData = [
      { key: 'location', value: WINOGRAD_WEIGHTS_FILE },
      { key: 'offset', value: String(ranges[i]!.offset) },
      { key: 'length', value: String(ranges[i]!.length) },
    ];
  });
  return file;
}

/**
 * The Winograd rewrite as sdgen runs it, on a model loaded with its external data left lazy: U
 * as initializers, computed into the model's shared weights file under
 * `<cacheDir>/winograd/weights/` (writeWinogradWeights); `files` names that file for
 * writeModelLinkingWeights. Upsampler convolutions the Winograd form leaves direct (a VAE
 * decoder's image level) then take the polyphase form (src/optimize/polyphase.ts). `count`
 * counts both; `polyphase` the latter.
 */
export async function winogradRewrite(model: ModelProto, cacheDir: string, opts: WinogradOptions = {}): Promise<WinogradResult & RewriteCount & { polyphase: number }> {
  const r = winogradConvs(model, { ...opts, weights: 'initializer' });
  const p = polyphaseUpsampleConvs(model);
  const both = {
    ...r,
    count: r.count + p.count,
    polyphase: p.count,
    // Winograd's reasons start with the convolution's label, the name polyphase lists
    skipped: r.skipped.filter((s) => !p.convs.some((c) => s.startsWith(`${c}: `))),
    // the four 2×2 kernels are 16/9 of the 3×3 weight once onnxruntime has folded them
    extraWeightBytes: r.extraWeightBytes + p.extraWeightBytes,
  };
  if (r.count === 0) return both;
  const file = await writeWinogradWeights(r.folds, path.join(cacheDir, 'winograd', 'weights'));
  return { ...both, files: { [WINOGRAD_WEIGHTS_FILE]: file } };
}

/**
 * The Winograd variant of `modelPath` (cached under `<cacheDir>/winograd/`); `rewritten: false`
 * when the model has no convolution worth rewriting (a text encoder, a float16 model). The
 * transformed weights are computed by winogradRewrite, once per model's weights, so that
 * onnxruntime has nothing big to fold when it loads the variant.
 */
export function getWinogradModel(modelPath: string, cacheDir: string, opts: WinogradOptions = {}): Promise<RewrittenModel> {
  const keyOptions = { v: WINOGRAD_REWRITE_VERSION, tile: opts.tile ?? 'auto', minChannels: opts.minChannels ?? null };
  return getRewrittenModel(modelPath, cacheDir, 'winograd', keyOptions, (m) => winogradRewrite(m, cacheDir, opts));
}
