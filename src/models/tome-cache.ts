/**
 * ToMe-patched UNet files: `patchModelFile` (for `sdgen tome-patch IN OUT`) and the cached
 * patched UNets runs use (`getPatchedUnet`, on the rewrite cache every graph rewrite shares,
 * src/optimize/fused-model.ts). The model is loaded with its external data left on disk, so
 * patching a multi-GB UNet holds little more than its graph in memory; the weights are linked
 * (or copied by the kernel) rather than rewritten.
 */
import { constants as fsConstants } from 'node:fs';
import { copyFile, link, mkdir, rename, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, normalize, resolve, sep } from 'node:path';
import { SdgenError } from '../errors.js';
import { loadedWithExternalData, loadModel, saveModel } from '../onnx/model-io.js';
import { getRewrittenModel } from '../optimize/fused-model.js';
import { encodeModel } from '../onnx/proto.js';
import { DataLocation, type ModelProto, type StringStringEntryProto } from '../onnx/types.js';
import { applyToMe, type ApplyResult } from '../tome/rewrite.js';
import type { PatchedBlockInfo, ToMeOptions } from '../tome/types.js';
import { tomeGraphOptions, validateToMeOptions } from '../tome/options.js';
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

/**
 * Version of the ToMe rewrite's graph, part of every cache key: bumped when the graph it writes
 * changes within one sdgen version, so that no stale entry is reused.
 */
export const TOME_GRAPH_VERSION = 2;

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

/** What a ToMe cache entry records besides the graph: the blocks that merge, their rand inputs. */
interface ToMeInfo {
  blocks: PatchedBlockInfo[];
  randInputs: string[];
}

/**
 * The ToMe-patched version of a UNet, from the rewrite cache (getRewrittenModel: one directory
 * per source identity + graph-shaping options, the source's weights linked, published
 * atomically) or made now. When the graph cannot be patched (not understood, nothing selected),
 * `path` is the original model and `reason` says why; that outcome is cached too.
 */
export async function getPatchedUnet(
  unetPath: string,
  o: ToMeOptions,
  opts: { cacheDir?: string; onProgress?: PatchProgress } = {},
): Promise<PatchedUnet> {
  validateToMeOptions(o);
  const r = await getRewrittenModel(unetPath, opts.cacheDir ?? defaultCacheDir(), 'tome', { graph: TOME_GRAPH_VERSION, tome: tomeGraphOptions(o) }, (model) => {
    opts.onProgress?.('rewrite', 0, 1);
    const res = applyToMe(model, o);
    opts.onProgress?.('rewrite', 1, 1);
    const blocks = res.blocks.filter((b) => b.merged.attn || b.merged.crossattn || b.merged.mlp);
    const info: ToMeInfo = { blocks, randInputs: res.randInputs };
    return res.patched ? { count: blocks.length, skipped: [], info } : { count: 0, skipped: [res.reason ?? 'nothing to patch'], info };
  });
  const info = (r.info ?? { blocks: [], randInputs: [] }) as ToMeInfo;
  if (!r.rewritten) return { path: unetPath, patched: false, reason: r.skipped[0] ?? 'nothing to patch', blocks: [], randInputs: [], fromCache: r.cached };
  return { path: r.path, patched: true, blocks: info.blocks, randInputs: info.randInputs, fromCache: r.cached };
}
