/**
 * ToMe-patched UNet files: `patchModelFile` (for `sdgen tome-patch IN OUT`) and the on-disk cache
 * of patched UNets (`getPatchedUnet`). The model is loaded with its external data left on disk
 * and written back with the streaming writer, so patching a multi-GB UNet holds little more than
 * its graph in memory; weights go to one file beside the patched model. Cache entries are keyed
 * by the source model file's identity, the options that shape the graph and sdgen's version, and
 * written atomically (temp files renamed into place; the entry's meta.json last).
 */
import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { copyFile, link, mkdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, normalize, resolve, sep } from 'node:path';
import { SdgenError } from '../errors.js';
import { loadedWithExternalData, loadModel, modelFileIdentity, saveModel } from '../onnx/model-io.js';
import { encodeModel } from '../onnx/proto.js';
import { DataLocation, type ModelProto, type StringStringEntryProto } from '../onnx/types.js';
import { applyToMe, type ApplyResult } from '../tome/rewrite.js';
import type { PatchedBlockInfo, ToMeOptions } from '../tome/types.js';
import { SDGEN_VERSION } from '../version.js';
import { defaultCacheDir } from './cache-dir.js';
import { exists } from './exists.js';

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

/**
 * Bumped whenever the rewrite's graph changes within one sdgen version (2: merges sum with
 * ScatterElements instead of ScatterND, for run-to-run identical results).
 */
export const TOME_GRAPH_VERSION = 2;

/** Cache key: source identity + graph options + sdgen version + the rewrite's graph version. */
export function tomeCacheKey(identity: string, o: ToMeOptions, version = SDGEN_VERSION): string {
  return createHash('sha256').update(JSON.stringify({ identity, tome: graphOptions(o), version, graph: TOME_GRAPH_VERSION })).digest('hex').slice(0, 32);
}

/**
 * Loads `inPath` (external data left on disk), applies ToMe and writes the result to `outPath`
 * (external data kept in one weights file `<out name>_data` when the source had external data).
 * Throws SdgenError when the graph cannot be patched under `o`.
 */
export async function patchModelFile(
  inPath: string,
  outPath: string,
  o: ToMeOptions,
  onProgress?: PatchProgress,
  opts: { copyWeights?: boolean } = {},
): Promise<ApplyResult> {
  return patchTo(inPath, outPath, o, onProgress, opts.copyWeights ? 'copy' : 'link-own-names');
}

async function patchTo(inPath: string, outPath: string, o: ToMeOptions, onProgress: PatchProgress | undefined, weights: WeightsMode): Promise<ApplyResult> {
  onProgress?.('load', 0, 1);
  const model = await loadModel(inPath, { externalData: 'lazy' });
  onProgress?.('load', 1, 1);
  const res = applyToMe(model, o);
  if (!res.patched) throw new SdgenError(`cannot apply ToMe to ${inPath}: ${res.reason ?? 'nothing to patch'}`);
  if (await writeKeepingWeights(model, inPath, outPath, weights)) {
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
 * How the source's external data files reach the patched model: 'link' keeps their names and
 * hard-links them (cache entries, one directory each); 'link-own-names' hard-links them under the
 * output's own names (<file>_data, ...) and copies where linking is impossible (`tome-patch`);
 * 'copy' always copies under the output's own names (`tome-patch --copy-weights`).
 */
type WeightsMode = 'link' | 'link-own-names' | 'copy';

/**
 * Fast path: the rewrite adds no initializers, so the patched graph can keep reading the source's
 * external data files unchanged, byte for byte. They are hard-linked (no copy, no extra disk
 * space) or copied by the kernel (copy_file_range / reflink where the filesystem has it, far
 * faster than re-serialising) beside the patched model, and only the graph is written; a file
 * that already is the source's is left as it is.
 * False (nothing left behind) when the model has no external data or a file cannot be linked or
 * copied: the caller then writes through the streaming writer.
 */
async function writeKeepingWeights(model: ModelProto, inPath: string, outPath: string, mode: WeightsMode): Promise<boolean> {
  const entries: StringStringEntryProto[] = [];
  const locations = new Map<string, string>(); // source location -> location beside the output
  for (const t of model.graph!.initializer) {
    if (t.dataLocation !== DataLocation.EXTERNAL) continue;
    if (t.rawData) return false;
    const entry = t.externalData?.find((e) => e.key === 'location');
    if (!entry) return false;
    const norm = normalize(entry.value);
    if (isAbsolute(entry.value) || norm === '..' || norm.startsWith(`..${sep}`) || norm.startsWith('../')) return false;
    entries.push(entry);
    if (!locations.has(norm)) {
      // The cache keeps the source's names (one directory per entry); a user's output gets names
      // of its own (<file>_data, <file>_data.1, ...) so it never replaces another model's weights.
      const i = locations.size;
      locations.set(norm, mode === 'link' ? norm : `${basename(outPath)}_data${i === 0 ? '' : `.${i}`}`);
    }
  }
  if (locations.size === 0) return false;
  const srcDir = dirname(resolve(inPath));
  const outDir = dirname(resolve(outPath));
  const tag = `.${process.pid}.${Date.now()}.tmp`;
  const placed: string[] = [];
  const original = entries.map((e) => e.value);
  try {
    for (const [loc, target] of locations) {
      const src = join(srcDir, loc);
      const dst = join(outDir, target);
      if (resolve(dst) === resolve(outPath)) return false;
      if (resolve(dst) === resolve(src)) continue;
      await mkdir(dirname(dst), { recursive: true });
      if (mode === 'copy') await copyFile(src, dst + tag, fsConstants.COPYFILE_FICLONE);
      else if (mode === 'link') await link(src, dst + tag);
      else await link(src, dst + tag).catch(() => copyFile(src, dst + tag, fsConstants.COPYFILE_FICLONE));
      placed.push(dst);
    }
    for (const e of entries) e.value = locations.get(normalize(e.value))!;
    for (const dst of placed) await rename(dst + tag, dst);
    await writeFile(outPath + tag, encodeModel(model));
    await rename(outPath + tag, outPath);
    return true;
  } catch {
    entries.forEach((e, i) => (e.value = original[i]!));
    for (const dst of placed) await unlink(dst + tag).catch(() => undefined);
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
    res = await patchTo(unetPath, modelPath, o, opts.onProgress, 'link');
  } catch (e) {
    if (!(e instanceof SdgenError) || !/^cannot apply ToMe/.test(e.message)) throw e;
    patched = false;
    res = { patched: false, reason: e.message.replace(/^cannot apply ToMe to .*?: /, ''), blocks: [], randInputs: [] };
  }
  const blocks = res.blocks.filter((b) => b.merged.attn || b.merged.crossattn || b.merged.mlp);
  const meta: Meta = { version: SDGEN_VERSION, key, source: resolve(unetPath), patched, reason: res.reason, blocks, randInputs: res.randInputs };
  const tmp = `${metaPath}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(meta, null, 1));
  await rename(tmp, metaPath);
  return { path: patched ? modelPath : unetPath, patched, reason: res.reason, blocks, randInputs: res.randInputs, fromCache: false };
}
