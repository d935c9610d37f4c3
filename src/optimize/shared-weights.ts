/**
 * Weights shared between optimized-graph cache entries.
 *
 * onnxruntime writes every initializer of the graph it optimized into the entry's
 * `model.weights`, so each variant of one model (ToMe ratio, attention, convolution mode) used
 * to hold a whole copy: 4.7 GB per SD 1.5 UNet variant, 12–14 GB per SDXL one. The variants'
 * weights are almost all byte-identical (ToMe adds nodes, not weights), so before an entry is
 * published its initializers are matched, by SHA-256 of their bytes and their length, against
 * the `weights-index.json` of the entries already published. A matched initializer is read from
 * the other entry's weights file, hard-linked into this entry as `shared-<n>.weights` (a hard
 * link keeps the data alive when the other entry is evicted) when at least half of that file is
 * what this entry needs (so another model's equal LayerNorm ones never pin its whole file);
 * only the unmatched ones stay in
 * this entry's own `model.weights`, rewritten without the rest. Where hard links are not
 * possible (FAT, some network shares) the entry keeps its full copy, as before.
 *
 * Every entry gets an index, including the first of its kind, so that later ones can share it.
 */
import { createHash } from 'node:crypto';
import { link, open, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { subgraphsOf } from '../onnx/attributes.js';
import { parseExternalData } from '../onnx/model-io.js';
import { decodeModel, encodeModel } from '../onnx/proto.js';
import type { GraphProto, TensorProto } from '../onnx/types.js';

export const WEIGHTS_INDEX_FILE = 'weights-index.json';
const INDEX_FORMAT = 1;
/** offsets of the rewritten own weights file are multiples of this */
const ALIGN = 64;
/** another entry's file is linked only if at least this fraction of it is used */
const MIN_USEFUL_FRACTION = 0.5;

/** One external initializer as an entry stores it. */
export interface IndexedTensor {
  /** hex SHA-256 of its bytes */
  hash: string;
  length: number;
  /** file in the entry's directory (`model.weights` or `shared-<n>.weights`) */
  file: string;
  offset: number;
}

export interface WeightsIndex {
  format: number;
  /** size of each file the tensors are in, to notice a file that changed under the index */
  files: Record<string, number>;
  tensors: IndexedTensor[];
}

export interface ShareResult {
  /** bytes read from other entries' files */
  sharedBytes: number;
  /** bytes left in this entry's own weights file */
  ownBytes: number;
  /** other entries' files linked in */
  linkedFiles: number;
}

interface ExternalTensor {
  tensor: TensorProto;
  location: string;
  offset: number;
  length: number;
}

/** The external initializers of a graph and its subgraphs; false when one has no length. */
function externalRefs(g: GraphProto, out: ExternalTensor[]): boolean {
  for (const t of g.initializer) {
    if (!t.externalData?.length) continue;
    const { location, offset, length } = parseExternalData(t);
    if (length === undefined || length === 0) return false;
    out.push({ tensor: t, location, offset, length });
  }
  for (const n of g.node) for (const sg of subgraphsOf(n)) if (!externalRefs(sg, out)) return false;
  return true;
}

function setExternal(t: TensorProto, location: string, offset: number, length: number): void {
  t.externalData = [
    { key: 'location', value: location },
    { key: 'offset', value: String(offset) },
    { key: 'length', value: String(length) },
  ];
}

async function readAt(fh: FileHandle, buf: Buffer, offset: number, length: number): Promise<Buffer> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
    if (bytesRead === 0) throw new Error('external data shorter than its initializers say');
    done += bytesRead;
  }
  return buf.subarray(0, length);
}

/** The indexes of the published entries beside `entryDir` (unreadable ones are skipped). */
async function siblingIndexes(root: string, self: string): Promise<{ dir: string; index: WeightsIndex }[]> {
  const out: { dir: string; index: WeightsIndex }[] = [];
  for (const name of await readdir(root).catch(() => [] as string[])) {
    if (name.includes('.tmp-') || name === self) continue;
    const dir = path.join(root, name);
    try {
      const index = JSON.parse(await readFile(path.join(dir, WEIGHTS_INDEX_FILE), 'utf8')) as WeightsIndex;
      if (index.format === INDEX_FORMAT && Array.isArray(index.tensors)) out.push({ dir, index });
    } catch {
      // an entry from before indexes, or being removed
    }
  }
  return out;
}

const matchKey = (hash: string, length: number): string => `${hash}:${length}`;

/**
 * Rewrites the (not yet published) entry in `entryDir` so that initializers another published
 * entry under `root` already holds are read from its file, and writes the entry's index.
 * `weightsFile` is the file onnxruntime wrote. Leaves the entry as it was (with an index) where
 * it cannot link; throws only on a broken entry (its model file or weights unreadable).
 */
export async function shareEntryWeights(entryDir: string, root: string, modelFile: string, weightsFile: string): Promise<ShareResult> {
  const modelPath = path.join(entryDir, modelFile);
  const model = decodeModel(await readFile(modelPath));
  const refs: ExternalTensor[] = [];
  const result: ShareResult = { sharedBytes: 0, ownBytes: 0, linkedFiles: 0 };
  if (!model.graph || !externalRefs(model.graph, refs) || refs.length === 0) return result;
  if (refs.some((r) => r.location !== weightsFile)) return result; // not what onnxruntime writes: leave it

  const weightsPath = path.join(entryDir, weightsFile);
  const hashes: string[] = [];
  const fh = await open(weightsPath, 'r');
  const maxLen = Math.max(...refs.map((r) => r.length));
  const buf = Buffer.allocUnsafe(maxLen);
  try {
    for (const r of refs) hashes.push(createHash('sha256').update(await readAt(fh, buf, r.offset, r.length)).digest('hex'));
  } finally {
    await fh.close();
  }

  // where each initializer could come from: every published entry's file holding the same bytes
  interface Source { dir: string; file: string; offset: number; size: number }
  const known = new Map<string, Source[]>();
  for (const { dir, index } of await siblingIndexes(root, path.basename(entryDir))) {
    for (const t of index.tensors) {
      const size = index.files?.[t.file];
      if (typeof size !== 'number' || !/^[\w.-]+$/.test(t.file)) continue;
      const k = matchKey(t.hash, t.length);
      const list = known.get(k) ?? [];
      if (!list.some((c) => c.dir === dir && c.file === t.file)) list.push({ dir, file: t.file, offset: t.offset, size });
      known.set(k, list);
    }
  }

  // Another entry's file is worth linking when at least half of it is what this entry needs:
  // small tensors that happen to be equal (a LayerNorm's ones, zero biases) in another model's
  // entry are not worth keeping that model's whole file alive for.
  const fileOf = (c: Source): string => path.join(c.dir, c.file);
  const candidates = refs.map((r, i) => known.get(matchKey(hashes[i]!, r.length)) ?? []);
  const useful = new Map<string, number>();
  for (let i = 0; i < refs.length; i++) for (const c of candidates[i]!) useful.set(fileOf(c), (useful.get(fileOf(c)) ?? 0) + refs[i]!.length);
  const worth = (c: Source): boolean => useful.get(fileOf(c))! >= MIN_USEFUL_FRACTION * c.size;

  // link the files worth it (the most useful first); one that cannot be linked is not used
  const linked = new Map<string, string>(); // other file → its name in this entry ('' = could not link)
  const files: Record<string, number> = {};
  const placement: ({ file: string; offset: number } | undefined)[] = [];
  for (let i = 0; i < refs.length; i++) {
    const options = candidates[i]!.filter(worth).sort((a, b) => useful.get(fileOf(b))! - useful.get(fileOf(a))!);
    const src = options.find((c) => linked.get(fileOf(c)) !== '');
    if (!src) {
      placement.push(undefined);
      continue;
    }
    const from = fileOf(src);
    let as = linked.get(from);
    if (as === undefined) {
      const name = `shared-${linked.size}.weights`;
      try {
        await link(from, path.join(entryDir, name));
        const st = await stat(path.join(entryDir, name));
        if (st.size !== src.size) throw new Error('changed under its index');
        as = name;
        files[name] = st.size;
      } catch {
        await rm(path.join(entryDir, name), { force: true });
        as = '';
      }
      linked.set(from, as);
    }
    placement.push(as ? { file: as, offset: src.offset } : undefined);
  }

  const tensors: IndexedTensor[] = [];
  if (placement.some((p) => p !== undefined)) {
    // this entry's own file keeps only what no other entry had
    const ownTmp = `${weightsPath}.own`;
    const inFh = await open(weightsPath, 'r');
    const outFh = await open(ownTmp, 'w');
    let pos = 0;
    try {
      for (let i = 0; i < refs.length; i++) {
        const r = refs[i]!;
        const p = placement[i];
        if (p) {
          setExternal(r.tensor, p.file, p.offset, r.length);
          tensors.push({ hash: hashes[i]!, length: r.length, file: p.file, offset: p.offset });
          result.sharedBytes += r.length;
          continue;
        }
        pos = Math.ceil(pos / ALIGN) * ALIGN;
        const bytes = await readAt(inFh, buf, r.offset, r.length);
        let done = 0;
        while (done < bytes.length) done += (await outFh.write(bytes, done, bytes.length - done, pos + done)).bytesWritten;
        setExternal(r.tensor, weightsFile, pos, r.length);
        tensors.push({ hash: hashes[i]!, length: r.length, file: weightsFile, offset: pos });
        result.ownBytes += r.length;
        pos += r.length;
      }
      await outFh.sync();
    } finally {
      await inFh.close();
      await outFh.close();
    }
    await rename(ownTmp, weightsPath);
    await writeFile(modelPath, encodeModel(model));
    files[weightsFile] = pos;
  } else {
    for (let i = 0; i < refs.length; i++) {
      const r = refs[i]!;
      tensors.push({ hash: hashes[i]!, length: r.length, file: weightsFile, offset: r.offset });
      result.ownBytes += r.length;
    }
    files[weightsFile] = (await stat(weightsPath)).size;
  }
  result.linkedFiles = Object.keys(files).filter((f) => f !== weightsFile).length;
  const index: WeightsIndex = { format: INDEX_FORMAT, files, tensors };
  await writeFile(path.join(entryDir, WEIGHTS_INDEX_FILE), JSON.stringify(index));
  return result;
}
