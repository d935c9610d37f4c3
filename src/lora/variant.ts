/**
 * The LoRA'd (and embedding-extended) variant of an exported model, cached on disk.
 *
 * ONNX external data is per tensor (a location, an offset and a length each), so a variant needs
 * to hold only what changed: `<cacheDir>/lora/<key>/` gets the graph (`model.onnx`, small), the
 * changed weights (`lora.weights`: a few MB for an SD 1.5 UNet LoRA) and links to the base
 * model's data files (hard link, else symbolic link, else copy: linkOrCopy). A base model with
 * inline weights (a text encoder exported in one file) is linked too, as `base-model.onnx`, and
 * the variant's unchanged initializers point into it by offset — protobuf stores raw tensor bytes
 * contiguously, so an inline tensor is a valid external range of its own file. Either way the
 * variant costs megabytes, not a copy of the model.
 *
 * Everything downstream (ToMe, fused attention, Winograd, onnxruntime's optimized-graph cache)
 * derives from the variant's path as from any model file, so they all see the merged weights.
 *
 * Key: the model file's identity, the target, each active LoRA's SHA-256 and scale (in order),
 * the embeddings' names and SHA-256, sdgen's version. The entry is written under a temporary
 * name and published by rename, so a failure (a bad LoRA, a full disk) leaves nothing half
 * written. A request that changes nothing (every scale 0) is the base model itself.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdir, open, readFile, rm, utimes, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { SdgenError, UsageError } from '../errors.js';
import { loadModel, modelFileIdentity } from '../onnx/model-io.js';
import { encodeModel } from '../onnx/proto.js';
import { DataLocation, type ModelProto, type TensorProto } from '../onnx/types.js';
import { externalLocations, linkOrCopy, publishEntry } from '../optimize/fused-model.js';
import { SDGEN_VERSION } from '../version.js';
import { findTokenEmbedding, maskNewIdsBeforeArgMax, placeEmbeddings, type Embedding, type EncoderSlot, type PlacedEmbedding } from './embeddings.js';
import { safetensorsHashes } from './hash.js';
import { unetLayoutFromConfig, type UnetLayout } from './sgm.js';
import type { LoraTarget } from './keys.js';
import { performance } from 'node:perf_hooks';
import { mergeLoras, openLora, tick, setWeightValues, weightValues, type LoraApplication, type LoraMergeReport, type OpenLora } from './merge.js';

/** A LoRA to apply: file, scale (strength) and the name shown in messages and metadata. */
export interface LoraRef {
  path: string;
  /** strength; the text encoder's, and the UNet's unless unetScale is given (A1111's te/unet multipliers) */
  scale: number;
  unetScale?: number;
  name?: string;
}

/** The scale a LoRA has on a target. */
export function scaleFor(l: LoraRef, target: LoraTarget): number {
  return target === 'unet' ? (l.unetScale ?? l.scale) : l.scale;
}

export interface LoraVariantRequest {
  cacheDir: string;
  /** which modules of the LoRAs apply: the UNet's or one text encoder's */
  target: LoraTarget;
  loras: readonly LoraRef[];
  /** textual-inversion embeddings (text encoders only) */
  embeddings?: readonly Embedding[];
  /** the model in messages ("the UNet") */
  what?: string;
}

export interface LoraVariant {
  /** the model file to load: the variant, or the base model when nothing changes */
  path: string;
  /** initializers changed */
  changed: number;
  reports: LoraMergeReport[];
  /** embeddings added to the token table (text encoders), with their ids */
  placed: PlacedEmbedding[];
  /** embeddings left out and why */
  skipped: string[];
  cached: boolean;
}

/** Name of the variant's file of changed weights. */
export const LORA_WEIGHTS_FILE = 'lora.weights';
/** Name under which a base model with inline weights is linked into its variant. */
export const BASE_MODEL_LINK = 'base-model.onnx';
const ALIGN = 64;
/** Inline tensors smaller than this stay inline in the variant's graph. */
const INLINE_MAX = 1024;

interface VariantMeta {
  source: string;
  count: number;
  reports: LoraMergeReport[];
  placed: PlacedEmbedding[];
  skipped: string[];
}

function baseName(p: string): string {
  return path.basename(p).replace(/\.safetensors$/i, '');
}

/** The cache key of a request (hashes every LoRA and embedding file; memoized per file version). */
export async function loraVariantKey(modelPath: string, req: LoraVariantRequest): Promise<string> {
  const loras = [];
  for (const l of req.loras) {
    const scale = scaleFor(l, req.target);
    if (scale === 0) continue;
    loras.push({ sha256: (await safetensorsHashes(l.path)).sha256, scale });
  }
  const emb = (req.embeddings ?? []).map((e) => ({ name: e.name, sha256: e.hashes.sha256 }));
  const material = JSON.stringify({ v: 2, sdgen: SDGEN_VERSION, id: await modelFileIdentity(modelPath), target: req.target, loras, emb });
  return createHash('sha256').update(material).digest('hex').slice(0, 32);
}

/** Appends the embeddings' rows to the token table; returns where they went. */
async function extendTokenTable(model: ModelProto, embeddings: readonly Embedding[], slot: EncoderSlot, what: string): Promise<{ placed: PlacedEmbedding[]; skipped: string[]; table?: TensorProto }> {
  const table = findTokenEmbedding(model.graph!);
  if (table === undefined) throw new SdgenError(`${what} has no token-embedding table to add textual-inversion embeddings to`);
  const [vocab, dim] = table.dims.map(Number) as [number, number];
  const { placed, rows, skipped } = placeEmbeddings(embeddings, slot, vocab, dim);
  if (placed.length === 0) return { placed, skipped };
  const base = await weightValues(table);
  const extra = rows.reduce((s, r) => s + r.length, 0);
  const all = new Float32Array(base.length + extra);
  all.set(base);
  let off = base.length;
  for (const r of rows) {
    all.set(r, off);
    off += r.length;
  }
  table.dims = [vocab + extra / dim, dim];
  setWeightValues(table, all);
  // the pooled output (SDXL's text_embeds) stays at the end token (embeddings.ts)
  maskNewIdsBeforeArgMax(model.graph!, vocab);
  return { placed, skipped, table };
}

/**
 * Points inline initializers of at least INLINE_MAX bytes at their own bytes in the base model
 * file (linked as BASE_MODEL_LINK). Only possible when the decoded model's tensors are views of
 * one buffer holding exactly the file; returns false (nothing changed) otherwise.
 */
function referenceInlineWeights(model: ModelProto, fileSize: number, keep: ReadonlySet<TensorProto>): boolean {
  const inline = model.graph!.initializer.filter((t) => !keep.has(t) && t.rawData !== undefined && t.rawData.length >= INLINE_MAX);
  if (inline.length === 0) return false;
  if (!inline.every((t) => t.rawData!.buffer.byteLength === fileSize)) return false;
  for (const t of inline) {
    const raw = t.rawData!;
    t.externalData = [
      { key: 'location', value: BASE_MODEL_LINK },
      { key: 'offset', value: String(raw.byteOffset) },
      { key: 'length', value: String(raw.length) },
    ];
    t.dataLocation = DataLocation.EXTERNAL;
    delete t.rawData;
  }
  return true;
}

/** Writes tensors one by one to a data file of the variant and points each at its range there. */
class ChangedWriter {
  private offset = 0;
  private constructor(private readonly fh: FileHandle) {}

  static async create(file: string): Promise<ChangedWriter> {
    return new ChangedWriter(await open(file, 'wx'));
  }

  /** Appends the tensor's bytes and makes it external (its inline data is dropped). */
  async add(t: TensorProto): Promise<void> {
    const raw = t.rawData!;
    const offset = Math.ceil(this.offset / ALIGN) * ALIGN;
    let done = 0;
    while (done < raw.length) done += (await this.fh.write(raw, done, raw.length - done, offset + done)).bytesWritten;
    t.externalData = [
      { key: 'location', value: LORA_WEIGHTS_FILE },
      { key: 'offset', value: String(offset) },
      { key: 'length', value: String(raw.length) },
    ];
    t.dataLocation = DataLocation.EXTERNAL;
    delete t.rawData;
    this.offset = offset + raw.length;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/**
 * The UNet's layout (sgm.ts) from the diffusers config.json beside its model file; undefined
 * when there is none or it does not say (the mapping then reads the layout off the graph).
 */
export async function unetLayoutBeside(modelPath: string): Promise<UnetLayout | undefined> {
  try {
    return unetLayoutFromConfig(JSON.parse(await readFile(path.join(path.dirname(modelPath), 'config.json'), 'utf8')));
  } catch {
    return undefined;
  }
}

function targetName(t: LoraTarget): string {
  return t === 'unet' ? 'the UNet' : t === 'text_encoder' ? 'the text encoder' : 'the second text encoder';
}

/**
 * The variant of `modelPath` with the LoRAs (and, for a text encoder, the embeddings) applied:
 * from the cache, else written now. See the module comment.
 */
export async function getLoraVariant(modelPath: string, req: LoraVariantRequest): Promise<LoraVariant> {
  const what = req.what ?? targetName(req.target);
  for (const l of req.loras) {
    const s = scaleFor(l, req.target);
    if (!Number.isFinite(s)) throw new UsageError(`LoRA ${l.path}: the scale must be a number, got ${s}`);
  }
  const active = req.loras.filter((l) => scaleFor(l, req.target) !== 0);
  const embeddings = req.target === 'unet' ? [] : (req.embeddings ?? []);
  if (active.length === 0 && embeddings.length === 0) {
    return { path: modelPath, changed: 0, reports: [], placed: [], skipped: [], cached: true };
  }
  let t0 = performance.now();
  const key = await loraVariantKey(modelPath, { ...req, embeddings });
  t0 = tick('key', t0);
  const dir = path.join(req.cacheDir, 'lora', key);
  const metaFile = path.join(dir, 'meta.json');
  const modelFile = path.join(dir, 'model.onnx');
  if (existsSync(metaFile)) {
    try {
      const meta = JSON.parse(await readFile(metaFile, 'utf8')) as VariantMeta;
      const now = new Date();
      await utimes(metaFile, now, now).catch(() => {});
      if (meta.count === 0) return { path: modelPath, changed: 0, reports: meta.reports, placed: [], skipped: meta.skipped, cached: true };
      if (existsSync(modelFile)) return { path: modelFile, changed: meta.count, reports: meta.reports, placed: meta.placed, skipped: meta.skipped, cached: true };
    } catch {
      // unreadable entry: written anew below
    }
  }

  const opened: OpenLora[] = [];
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    const apps: LoraApplication[] = [];
    for (const l of req.loras) {
      const lora = await openLora(l.path, l.name ?? baseName(l.path));
      opened.push(lora);
      apps.push({ lora, scale: scaleFor(l, req.target) });
    }
    const model = await loadModel(modelPath, { externalData: 'lazy' });
    if (model.graph === undefined) throw new SdgenError(`${modelPath}: the model has no graph`);
    t0 = tick('load graph', t0);
    const locations = externalLocations(model);
    for (const reserved of [LORA_WEIGHTS_FILE, BASE_MODEL_LINK]) {
      if (locations.includes(reserved)) throw new SdgenError(`${modelPath}: an external data file is named ${reserved}, which sdgen's LoRA variants reserve`);
    }
    await mkdir(tmp, { recursive: true });
    // changed weights stream to the variant's data file as each is merged
    const writer = await ChangedWriter.create(path.join(tmp, LORA_WEIGHTS_FILE));
    let changed: TensorProto[];
    let reports: LoraMergeReport[];
    let ext: { placed: PlacedEmbedding[]; skipped: string[] };
    try {
      const layout = req.target === 'unet' ? await unetLayoutBeside(modelPath) : undefined;
      ({ changed, reports } = await mergeLoras(model, apps, [req.target], what, (t) => writer.add(t), layout));
      const slot: EncoderSlot = req.target === 'text_encoder_2' ? 'text_encoder_2' : 'text_encoder';
      const e = embeddings.length > 0 ? await extendTokenTable(model, embeddings, slot, what) : { placed: [], skipped: [] };
      ext = { placed: e.placed, skipped: e.skipped };
      if (e.table !== undefined) {
        await writer.add(e.table);
        if (!changed.includes(e.table)) changed.push(e.table);
      }
    } finally {
      await writer.close();
    }
    t0 = performance.now();
    const meta: VariantMeta = { source: path.resolve(modelPath), count: changed.length, reports, placed: ext.placed, skipped: ext.skipped };
    if (changed.length > 0) {
      // unchanged inline weights: referenced in the (linked) base file; changed ones are external now
      const linkBase = referenceInlineWeights(model, statSync(modelPath).size, new Set(changed));
      for (const loc of locations) {
        const target = path.join(tmp, loc);
        if (path.relative(tmp, target).startsWith('..')) throw new SdgenError(`external data location ${loc} leaves the model folder`);
        await mkdir(path.dirname(target), { recursive: true });
        await linkOrCopy(path.join(path.dirname(modelPath), loc), target);
      }
      if (linkBase) await linkOrCopy(modelPath, path.join(tmp, BASE_MODEL_LINK));
      await writeFile(path.join(tmp, 'model.onnx'), encodeModel(model));
    } else {
      await rm(path.join(tmp, LORA_WEIGHTS_FILE), { force: true });
    }
    await writeFile(path.join(tmp, 'meta.json'), JSON.stringify(meta, null, 2));
    await publishEntry(tmp, dir);
    tick('graph, links, publish', t0);
    return changed.length > 0
      ? { path: modelFile, changed: changed.length, reports, placed: ext.placed, skipped: ext.skipped, cached: false }
      : { path: modelPath, changed: 0, reports, placed: [], skipped: ext.skipped, cached: false };
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  } finally {
    for (const l of opened) await l.file.close();
  }
}

