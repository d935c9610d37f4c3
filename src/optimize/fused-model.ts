/**
 * Rewritten variants of a model file, cached on disk (fused attention, Winograd convolutions):
 * the rewritten graph is small and is written anew; its weights stay in the source's external
 * data files, which the cached folder links to (hard link, else symbolic link, else copy).
 * Works on an exported UNet as on a ToMe-patched one (fusing after ToMe is what sdgen does), and
 * on a VAE decoder.
 *
 * Layout: `<cacheDir>/<kind>/<key>/model.onnx` (+ linked data files, `meta.json`); the key is
 * the source's identity, sdgen's version, the rewrite's kind and options.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, link, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { loadModel, modelFileIdentity } from '../onnx/model-io.js';
import { encodeModel } from '../onnx/proto.js';
import type { ModelProto } from '../onnx/types.js';
import { SDGEN_VERSION } from '../version.js';
import { fuseAttention, type FuseAttentionOptions, type FuseAttentionResult } from './fuse-attention.js';
import { splitGeglu } from './geglu.js';

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
 * still point at the source's data files) as `<dir>/model.onnx`, linking those data files;
 * a location named in `files` links that file instead (data the rewrite wrote itself).
 */
export async function writeModelLinkingWeights(model: ModelProto, sourcePath: string, dir: string, files: Readonly<Record<string, string>> = {}): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, 'model.onnx');
  await writeFile(file, encodeModel(model));
  for (const loc of externalLocations(model)) {
    const target = path.join(dir, loc);
    if (path.relative(dir, target).startsWith('..')) throw new Error(`external data location ${loc} leaves the model folder`);
    await mkdir(path.dirname(target), { recursive: true });
    await linkOrCopy(files[loc] ?? path.join(path.dirname(sourcePath), loc), target);
  }
  return file;
}

/**
 * Publishes a finished cache entry: the directory `tmp` (with its meta.json) becomes `dir` in one
 * rename. A published entry is never replaced, since a concurrent run may be loading it: when
 * another run published `dir` first, `tmp` goes. A directory without meta.json is not an entry
 * (one left incomplete by an older sdgen) and is replaced.
 */
export async function publishEntry(tmp: string, dir: string): Promise<void> {
  if (existsSync(dir) && !existsSync(path.join(dir, 'meta.json'))) await rm(dir, { recursive: true, force: true });
  try {
    await rename(tmp, dir);
  } catch {
    await rm(tmp, { recursive: true, force: true });
  }
}

async function rewriteKey(modelPath: string, options: Record<string, unknown>): Promise<string> {
  const material = JSON.stringify({ ...options, id: await modelFileIdentity(modelPath), sdgen: SDGEN_VERSION });
  return createHash('sha256').update(material).digest('hex').slice(0, 32);
}

/** What a graph rewrite reports: how many places it changed, and what it left and why. */
export interface RewriteCount {
  count: number;
  skipped: string[];
  /** external data files the rewrite wrote itself: location in the model → file to link */
  files?: Record<string, string>;
  /** what the rewrite reports about the graph it made (JSON), kept in the entry's meta.json */
  info?: unknown;
}

export type RewrittenModel =
  | { rewritten: true; path: string; count: number; skipped: string[]; cached: boolean; info?: unknown }
  | { rewritten: false; skipped: string[]; cached: boolean; info?: unknown };

/**
 * A rewritten variant of `modelPath`, cached on disk under `<cacheDir>/<kind>/<key>/`: the
 * rewrite runs on the graph loaded with its external data left lazy, and the new graph is
 * written with links to the source's data files. A rewrite that changes nothing is remembered
 * too (`meta.json` with count 0, no model), so the model is not read again next time.
 * Published by atomic rename; a concurrent run publishing the same entry first wins.
 */
export async function getRewrittenModel(
  modelPath: string,
  cacheDir: string,
  kind: string,
  keyOptions: Record<string, unknown>,
  rewrite: (model: ModelProto) => RewriteCount | Promise<RewriteCount>,
): Promise<RewrittenModel> {
  const key = await rewriteKey(modelPath, { kind, ...keyOptions });
  const dir = path.join(cacheDir, kind, key);
  const metaFile = path.join(dir, 'meta.json');
  const modelFile = path.join(dir, 'model.onnx');
  if (existsSync(metaFile)) {
    const meta = JSON.parse(await readFile(metaFile, 'utf8')) as RewriteCount;
    if (meta.count === 0) return { rewritten: false, skipped: meta.skipped, cached: true, info: meta.info };
    if (existsSync(modelFile)) return { rewritten: true, path: modelFile, count: meta.count, skipped: meta.skipped, cached: true, info: meta.info };
  }
  const model = await loadModel(modelPath, { externalData: 'lazy' });
  const r = await rewrite(model);
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    if (r.count > 0) await writeModelLinkingWeights(model, modelPath, tmp, r.files);
    else await mkdir(tmp, { recursive: true });
    // files: the data files the rewrite wrote (pruneDerived keeps them while this entry exists)
    const files = r.files ? Object.fromEntries(Object.entries(r.files).map(([k, f]) => [k, path.resolve(f)])) : undefined;
    await writeFile(path.join(tmp, 'meta.json'), JSON.stringify({ source: path.resolve(modelPath), count: r.count, skipped: r.skipped, ...(files ? { files } : {}), ...(r.info !== undefined ? { info: r.info } : {}) }, null, 2));
    await publishEntry(tmp, dir);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return r.count > 0
    ? { rewritten: true, path: modelFile, count: r.count, skipped: r.skipped, cached: false, info: r.info }
    : { rewritten: false, skipped: r.skipped, cached: false, info: r.info };
}

/**
 * The rewrite behind sdgen's fused graphs: attention into MultiHeadAttention nodes, then (where
 * any attention was fused) each GEGLU projection split in two (geglu.ts). `geglu` counts those.
 */
export function fuseModel(model: ModelProto, opts: FuseAttentionOptions = {}): FuseAttentionResult & { geglu: number } {
  const r = fuseAttention(model, opts);
  return { ...r, geglu: r.count > 0 ? splitGeglu(model).count : 0 };
}

/**
 * The fused variant of `modelPath` (from the cache, else written now). `fused: false` with the
 * reason when no attention could be fused (the caller runs the source model).
 */
export async function getFusedModel(modelPath: string, opts: FusedModelOptions): Promise<FusedModel> {
  const r = await getRewrittenModel(modelPath, opts.cacheDir, 'fused', { v: 2, fp16: !!opts.allowFloat16 }, (m) => fuseModel(m, opts));
  if (!r.rewritten) return { fused: false, reason: r.skipped[0] ?? 'no attention found', skipped: r.skipped };
  return { fused: true, path: r.path, count: r.count, skipped: r.skipped, cached: r.cached };
}
