/**
 * The fused-attention variant of a model file, cached on disk: the rewritten graph is small and
 * is written anew; its weights stay in the source's external data files, which the cached
 * folder links to (hard link, else symbolic link, else copy). Works on an exported UNet as on a
 * ToMe-patched one (fusing after ToMe is what sdgen does), and on a VAE decoder.
 *
 * Layout: `<cacheDir>/fused/<key>/model.onnx` (+ linked data files, `meta.json`); the key is the
 * source's identity, sdgen's version and the rewrite's options.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, link, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { loadModel, modelFileIdentity } from '../onnx/model-io.js';
import { encodeModel } from '../onnx/proto.js';
import type { ModelProto } from '../onnx/types.js';
import { SDGEN_VERSION } from '../version.js';
import { fuseAttention, type FuseAttentionOptions } from './fuse-attention.js';

export interface FusedModelOptions extends FuseAttentionOptions {
  cacheDir: string;
}

export type FusedModel =
  | { fused: true; path: string; count: number; skipped: string[]; cached: boolean }
  | { fused: false; reason: string; skipped: string[] };

/** External data file names referenced by a model's initializers. */
export function externalLocations(model: ModelProto): string[] {
  const out = new Set<string>();
  for (const t of model.graph?.initializer ?? []) {
    for (const e of t.externalData ?? []) if (e.key === 'location') out.add(e.value);
  }
  return [...out];
}

/** Makes `dst` have the content of `src` without copying when the filesystem allows. */
export async function linkOrCopy(src: string, dst: string): Promise<void> {
  try {
    await link(src, dst);
    return;
  } catch {
    // another filesystem, or no hard links
  }
  try {
    await symlink(path.resolve(src), dst);
    return;
  } catch {
    // no symbolic links either
  }
  await copyFile(src, dst);
}

/**
 * Writes `model` (loaded from `sourcePath` with external data left lazy, so its initializers
 * still point at the source's data files) as `<dir>/model.onnx`, linking those data files.
 */
export async function writeModelLinkingWeights(model: ModelProto, sourcePath: string, dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, 'model.onnx');
  await writeFile(file, encodeModel(model));
  for (const loc of externalLocations(model)) {
    const target = path.join(dir, loc);
    if (path.relative(dir, target).startsWith('..')) throw new Error(`external data location ${loc} leaves the model folder`);
    await mkdir(path.dirname(target), { recursive: true });
    await linkOrCopy(path.join(path.dirname(sourcePath), loc), target);
  }
  return file;
}

export async function fusedModelKey(modelPath: string, opts: FuseAttentionOptions = {}): Promise<string> {
  const material = JSON.stringify({ v: 1, id: await modelFileIdentity(modelPath), sdgen: SDGEN_VERSION, fp16: !!opts.allowFloat16 });
  return createHash('sha256').update(material).digest('hex').slice(0, 32);
}

/**
 * The fused variant of `modelPath` (from the cache, else written now). `fused: false` with the
 * reason when no attention could be fused (the caller runs the source model).
 */
export async function getFusedModel(modelPath: string, opts: FusedModelOptions): Promise<FusedModel> {
  const key = await fusedModelKey(modelPath, opts);
  const dir = path.join(opts.cacheDir, 'fused', key);
  const metaFile = path.join(dir, 'meta.json');
  if (existsSync(metaFile) && existsSync(path.join(dir, 'model.onnx'))) {
    const meta = JSON.parse(await readFile(metaFile, 'utf8')) as { count: number; skipped: string[] };
    return { fused: true, path: path.join(dir, 'model.onnx'), count: meta.count, skipped: meta.skipped, cached: true };
  }
  const model = await loadModel(modelPath, { externalData: 'lazy' });
  const r = fuseAttention(model, opts);
  if (r.count === 0) return { fused: false, reason: r.skipped[0] ?? 'no attention found', skipped: r.skipped };
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await writeModelLinkingWeights(model, modelPath, tmp);
    await writeFile(path.join(tmp, 'meta.json'), JSON.stringify({ source: path.resolve(modelPath), count: r.count, skipped: r.skipped }, null, 2));
    try {
      await rename(tmp, dir);
    } catch {
      await rm(tmp, { recursive: true, force: true }); // published by a concurrent run
    }
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return { fused: true, path: path.join(dir, 'model.onnx'), count: r.count, skipped: r.skipped, cached: false };
}
