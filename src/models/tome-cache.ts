/**
 * ToMe-patched UNet files: `patchModelFile` (for `sdgen tome-patch IN OUT`) and the on-disk cache
 * of patched UNets (`getPatchedUnet`). The model is loaded with its external data left on disk
 * and written back with the streaming writer, so patching a multi-GB UNet holds little more than
 * its graph in memory; weights go to one file beside the patched model. Cache entries are keyed
 * by the source model file's identity, the options that shape the graph and sdgen's version, and
 * written atomically (temp files renamed into place; the entry's meta.json last).
 */
import { createHash } from 'node:crypto';
import { link, mkdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, normalize, resolve, sep } from 'node:path';
import { SdgenError } from '../errors.js';
import { loadedWithExternalData, loadModel, modelFileIdentity, saveModel } from '../onnx/model-io.js';
import { encodeModel } from '../onnx/proto.js';
import { DataLocation, type ModelProto } from '../onnx/types.js';
import { applyToMe, type ApplyResult } from '../tome/rewrite.js';
import type { PatchedBlockInfo, ToMeOptions } from '../tome/types.js';
import { SDGEN_VERSION } from '../version.js';
import { defaultCacheDir } from './cache-dir.js';

export type PatchProgress = (stage: string, done: number, total: number) => void;

export interface PatchedUnet {
  /** The model to run: the patched file, or the original when ToMe could not be applied. */
  path: string;
  patched: boolean;
  /** Why the original is used (one line), when `patched` is false. */
  reason?: string;
  /** The blocks that got merging, in run order; `randInput` names block k's `tome_rand_<k>` input. */
  blocks: PatchedBlockInfo[];
  randInputs: string[];
  fromCache: boolean;
}

/** The ToMe options that change the rewritten graph (not the size thresholds). */
export function graphOptions(o: ToMeOptions): Record<string, number | boolean> {
  return {
    ratio: o.ratio, sx: o.sx, sy: o.sy, maxDownsample: o.maxDownsample, useRand: o.useRand,
    mergeAttn: o.mergeAttn, mergeCrossattn: o.mergeCrossattn, mergeMlp: o.mergeMlp,
  };
}

/** Cache key: source identity + graph options + sdgen version. */
export function tomeCacheKey(identity: string, o: ToMeOptions, version = SDGEN_VERSION): string {
  return createHash('sha256').update(JSON.stringify({ identity, tome: graphOptions(o), version })).digest('hex').slice(0, 32);
}

/**
 * Loads `inPath` (external data left on disk), applies ToMe and writes the result to `outPath`
 * (external data kept in one weights file `<out name>_data` when the source had external data).
 * Throws SdgenError when the graph cannot be patched under `o`.
 */
export async function patchModelFile(inPath: string, outPath: string, o: ToMeOptions, onProgress?: PatchProgress): Promise<ApplyResult> {
  return patchTo(inPath, outPath, o, onProgress, false);
}

async function patchTo(inPath: string, outPath: string, o: ToMeOptions, onProgress: PatchProgress | undefined, linkWeights: boolean): Promise<ApplyResult> {
  onProgress?.('load', 0, 1);
  const model = await loadModel(inPath, { externalData: 'lazy' });
  onProgress?.('load', 1, 1);
  const res = applyToMe(model, o);
  if (!res.patched) throw new SdgenError(`cannot apply ToMe to ${inPath}: ${res.reason ?? 'nothing to patch'}`);
  if (linkWeights && (await writeWithLinkedWeights(model, inPath, outPath))) {
    onProgress?.('write', 1, 1);
    return res;
  }
  await saveModel(model, outPath, {
    externalData: loadedWithExternalData(model) ? true : 'auto',
    onProgress: onProgress ? (done, total) => onProgress('write', done, total) : undefined,
  });
  return res;
}

/**
 * Cache fast path: the rewrite adds no initializers, so the patched graph can keep reading the
 * source's external data files unchanged. They are hard-linked beside the patched model (no copy,
 * no extra disk space) and only the graph is written. False (nothing left behind) when the model
 * has no external data or a file cannot be linked (other filesystem, no permission): the caller
 * then writes a full copy.
 */
async function writeWithLinkedWeights(model: ModelProto, inPath: string, outPath: string): Promise<boolean> {
  const locations = new Set<string>();
  for (const t of model.graph!.initializer) {
    if (t.dataLocation !== DataLocation.EXTERNAL) continue;
    if (t.rawData) return false;
    const loc = t.externalData?.find((e) => e.key === 'location')?.value;
    if (!loc) return false;
    const norm = normalize(loc);
    if (isAbsolute(loc) || norm === '..' || norm.startsWith(`..${sep}`) || norm.startsWith('../')) return false;
    locations.add(norm);
  }
  if (locations.size === 0) return false;
  const srcDir = dirname(resolve(inPath));
  const outDir = dirname(resolve(outPath));
  const tag = `.${process.pid}.${Date.now()}.tmp`;
  const linked: string[] = [];
  try {
    for (const loc of locations) {
      const dst = join(outDir, loc);
      if (resolve(dst) === resolve(outPath)) return false;
      await mkdir(dirname(dst), { recursive: true });
      await link(join(srcDir, loc), dst + tag);
      linked.push(dst);
    }
    for (const dst of linked) await rename(dst + tag, dst);
    await writeFile(outPath + tag, encodeModel(model));
    await rename(outPath + tag, outPath);
    return true;
  } catch {
    for (const dst of linked) await unlink(dst + tag).catch(() => undefined);
    return false;
  }
}

interface Meta {
  version: string;
  key: string;
  source: string;
  patched: boolean;
  reason?: string;
  blocks: PatchedBlockInfo[];
  randInputs: string[];
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * The ToMe-patched version of a UNet, from the cache or made now. When the graph cannot be
 * patched (not understood, nothing selected), `path` is the original model and `reason` says
 * why; that outcome is cached too.
 */
export async function getPatchedUnet(
  unetPath: string,
  o: ToMeOptions,
  opts: { cacheDir?: string; onProgress?: PatchProgress } = {},
): Promise<PatchedUnet> {
  const identity = await modelFileIdentity(unetPath);
  const key = tomeCacheKey(identity, o);
  const dir = join(opts.cacheDir ?? defaultCacheDir(), 'tome', key);
  const modelPath = join(dir, 'unet.onnx');
  const metaPath = join(dir, 'meta.json');
  try {
    const meta = JSON.parse(await readFile(metaPath, 'utf8')) as Meta;
    if (meta.key === key && (!meta.patched || (await exists(modelPath)))) {
      return {
        path: meta.patched ? modelPath : unetPath, patched: meta.patched, reason: meta.reason,
        blocks: meta.blocks, randInputs: meta.randInputs, fromCache: true,
      };
    }
  } catch {
    // no usable entry: make it
  }
  await mkdir(dir, { recursive: true });
  let res: ApplyResult;
  let patched = true;
  try {
    res = await patchTo(unetPath, modelPath, o, opts.onProgress, true);
  } catch (e) {
    if (!(e instanceof SdgenError) || !/^cannot apply ToMe/.test(e.message)) throw e;
    patched = false;
    res = { patched: false, reason: e.message.replace(/^cannot apply ToMe to .*?: /, ''), blocks: [], randInputs: [] };
  }
  const blocks = res.blocks.filter((b) => b.merged.attn || b.merged.crossattn || b.merged.mlp);
  const meta: Meta = { version: SDGEN_VERSION, key, source: unetPath, patched, reason: res.reason, blocks, randInputs: res.randInputs };
  const tmp = `${metaPath}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(meta, null, 1));
  await rename(tmp, metaPath);
  return { path: patched ? modelPath : unetPath, patched, reason: res.reason, blocks, randInputs: res.randInputs, fromCache: false };
}
