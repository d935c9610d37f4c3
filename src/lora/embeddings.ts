/**
 * Textual-inversion embeddings, as A1111 uses them: each `.safetensors` file of a directory is
 * an embedding named after its file (without the extension); where that name appears as a word
 * in a prompt, its tokens are replaced by the embedding's vectors.
 *
 * On an ONNX text encoder this is done without touching the graph's structure: the vectors are
 * appended as new rows of the token-embedding initializer (the Gather table of
 * `text_model.embeddings.token_embedding`), and the tokenizer maps the name's token ids to the
 * new rows' ids (withEmbeddings). The text encoder variant holding the extra rows is cached like
 * a LoRA variant (variant.ts).
 *
 * File layouts: A1111's `emb_params` [n, dim], the flattened `string_to_param.*` of its .pt
 * format, SDXL's `clip_l` [n, 768] + `clip_g` [n, 1280] (one per text encoder), or any file with
 * a single tensor. An embedding whose width does not fit the text encoder is left out with a
 * note (an SD 2 embedding in an SD 1.5 run), as A1111 does. On SDXL the `clip_l` rows go into
 * text_encoder's table and tokenizer and the `clip_g` rows into text_encoder_2's and tokenizer_2;
 * an embedding without both sets is left out with a note (sdxlEmbeddings).
 */
import { readdir } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import { UsageError } from '../errors.js';
import type { ClipTokenizer } from '../text/clip-tokenizer.js';
import { SdgenError } from '../errors.js';
import { getInt } from '../onnx/attributes.js';
import { uniqueName } from '../onnx/graph.js';
import { dataTypeName } from '../onnx/tensor.js';
import { DataType, type GraphProto, type NodeProto, type TensorProto } from '../onnx/types.js';
import { modulePathOfNode } from './map.js';
import { a1111EmbeddingShortHash, safetensorsHashes, type FileHashes } from './hash.js';
import { withSafetensors } from './safetensors.js';

export interface EmbeddingVectors {
  /** vectors (tokens) of the embedding */
  count: number;
  dim: number;
  /** [count, dim] float32 */
  values: Float32Array;
}

export interface Embedding {
  name: string;
  path: string;
  hashes: FileHashes;
  /** by tensor role: 'default' (SD 1/2), 'clip_l', 'clip_g' (SDXL) */
  vectors: Map<string, EmbeddingVectors>;
}

/** Which text encoder a vector set is for: SDXL files name it; others fit by width. */
export type EncoderSlot = 'text_encoder' | 'text_encoder_2';

async function readVectors(file: Parameters<Parameters<typeof withSafetensors>[1]>[0], key: string, label: string): Promise<EmbeddingVectors> {
  const e = file.entry(key);
  let count: number;
  let dim: number;
  if (e.shape.length === 1) [count, dim] = [1, e.shape[0]!];
  else if (e.shape.length === 2) [count, dim] = [e.shape[0]!, e.shape[1]!];
  else throw new UsageError(`${label}: tensor "${key}" has shape [${e.shape.join(', ')}]; an embedding is [tokens, width]`);
  if (count === 0 || dim === 0) throw new UsageError(`${label}: tensor "${key}" is empty`);
  return { count, dim, values: await file.readFloats(key) };
}

/** Reads one embedding file. */
export async function loadEmbedding(path: string, name = basename(path, extname(path))): Promise<Embedding> {
  const vectors = await withSafetensors(path, async (f) => {
    const keys = [...f.tensors.keys()];
    const out = new Map<string, EmbeddingVectors>();
    if (f.tensors.has('clip_l') || f.tensors.has('clip_g')) {
      for (const k of ['clip_l', 'clip_g']) if (f.tensors.has(k)) out.set(k, await readVectors(f, k, path));
    } else if (f.tensors.has('emb_params')) {
      out.set('default', await readVectors(f, 'emb_params', path));
    } else {
      const stp = keys.filter((k) => k.startsWith('string_to_param.'));
      if (stp.length === 1) out.set('default', await readVectors(f, stp[0]!, path));
      else if (keys.length === 1) out.set('default', await readVectors(f, keys[0]!, path));
      else throw new UsageError(`${path}: not a textual-inversion embedding (expected emb_params, string_to_param.*, clip_l/clip_g or a single tensor; found ${keys.slice(0, 4).join(', ')}${keys.length > 4 ? ', …' : ''})`);
    }
    return out;
  });
  return { name, path, hashes: await safetensorsHashes(path), vectors };
}

/** Every `.safetensors` embedding of a directory, sorted by name. */
export async function loadEmbeddingsDir(dir: string): Promise<Embedding[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    throw new UsageError(`embeddings directory not found or unreadable: ${dir}`, { cause: e });
  }
  const files = names.filter((n) => n.toLowerCase().endsWith('.safetensors')).sort();
  const out: Embedding[] = [];
  for (const f of files) out.push(await loadEmbedding(join(dir, f), f.slice(0, -'.safetensors'.length)));
  return out;
}

/** The vectors of an embedding for a text encoder of width `dim` (undefined when none fits). */
export function vectorsFor(e: Embedding, slot: EncoderSlot, dim: number): EmbeddingVectors | undefined {
  const named = e.vectors.get(slot === 'text_encoder_2' ? 'clip_g' : 'clip_l');
  const v = named ?? e.vectors.get('default');
  return v !== undefined && v.dim === dim ? v : undefined;
}

/**
 * SDXL: the embeddings both text encoders can take — a `clip_l` set (text_encoder) and a
 * `clip_g` set (text_encoder_2) of one token count, as A1111's SDXL embeddings have — and one
 * line for each other file: an SD 1.x/2.x embedding (a single vector set, for one encoder of
 * its width), a file with only one of the two sets, or sets of different lengths (the two
 * encoders' token sequences would no longer line up). Pure.
 */
export function sdxlEmbeddings(embeddings: readonly Embedding[]): { usable: Embedding[]; skipped: string[] } {
  const usable: Embedding[] = [];
  const skipped: string[] = [];
  for (const e of embeddings) {
    const l = e.vectors.get('clip_l');
    const g = e.vectors.get('clip_g');
    const d = e.vectors.get('default');
    if (l === undefined && g === undefined) {
      skipped.push(`${e.name}: an SD 1.x/2.x embedding (width ${d?.dim ?? '?'}) does not fit SDXL, whose embeddings have clip_l and clip_g vectors (one set per text encoder); not used`);
    } else if (l === undefined || g === undefined) {
      skipped.push(`${e.name}: has ${l ? 'clip_l' : 'clip_g'} vectors but no ${l ? 'clip_g' : 'clip_l'}; SDXL needs both (one set per text encoder); not used`);
    } else if (l.count !== g.count) {
      skipped.push(`${e.name}: clip_l has ${l.count} vectors and clip_g ${g.count}; SDXL needs as many for each text encoder; not used`);
    } else {
      usable.push(e);
    }
  }
  return { usable, skipped };
}

/**
 * SDXL: of the embeddings placed in each text encoder, those placed in both (an embedding one
 * encoder had to leave out, for its width, is left out of the other's tokenizer too). Pure.
 */
export function placedInBoth(first: readonly PlacedEmbedding[], second: readonly PlacedEmbedding[]): { first: PlacedEmbedding[]; second: PlacedEmbedding[] } {
  const a = new Set(first.map((p) => p.name));
  const b = new Set(second.map((p) => p.name));
  return { first: first.filter((p) => b.has(p.name)), second: second.filter((p) => a.has(p.name)) };
}

/** The token-embedding table of a CLIP text encoder graph: the Gather of `…token_embedding`. */
export function findTokenEmbedding(graph: GraphProto): TensorProto | undefined {
  const inits = new Map<string, TensorProto>();
  for (const t of graph.initializer) if (t.name !== undefined) inits.set(t.name, t);
  let best: TensorProto | undefined;
  for (const n of graph.node) {
    if (n.opType !== 'Gather') continue;
    const t = inits.get(n.input[0] ?? '');
    if (t === undefined || t.dims.length !== 2) continue;
    const path = modulePathOfNode(n.name) ?? t.name ?? '';
    if (path.includes('token_embedding')) return t;
    if (best === undefined || Number(t.dims[0]) > Number(best.dims[0])) best = t;
  }
  return best;
}

const ID_PATH_OPS = new Set(['Cast', 'Reshape', 'Squeeze', 'Unsqueeze', 'Flatten', 'Identity']);

/**
 * Keeps a CLIP text encoder's pooled output where it was once ids beyond the original vocabulary
 * exist: transformers' CLIPTextTransformer (with the `eos_token_id: 2` of the original CLIP and
 * SDXL configs) pools the hidden state at `input_ids.argmax(-1)`, meant to be the end token, the
 * highest id. An embedding's rows have higher ids still, so the export's ArgMax over the ids would
 * pool at the embedding instead — SDXL's `text_embeds`. Each ArgMax fed by the ids (through
 * casts and reshapes) gets `Where(ids < vocab, ids, 0)` in front of it, so it sees the embedding's
 * positions as id 0, as A1111 does (its prompt chunks hold 0 where an embedding's vectors go).
 * Returns how many ArgMax nodes were changed. Pure (edits `graph`).
 */
export function maskNewIdsBeforeArgMax(graph: GraphProto, vocab: number): number {
  const producer = new Map<string, NodeProto>();
  for (const n of graph.node) for (const o of n.output) producer.set(o, n);
  const inputs = new Map(graph.input.map((i) => [i.name, i]));
  // the element type of a value on the ids' path (a Cast's `to`, else the graph input's)
  const idsType = (name: string, depth = 0): number | undefined => {
    const i = inputs.get(name);
    if (i !== undefined) return i.type?.tensorType?.elemType;
    const p = producer.get(name);
    if (p === undefined || depth > 8 || !ID_PATH_OPS.has(p.opType) || p.input[0] === undefined) return undefined;
    const t = idsType(p.input[0], depth + 1);
    return t === undefined ? undefined : p.opType === 'Cast' ? Number(getInt(p, 'to', 0)) : t;
  };
  const scalar = (name: string, type: number, v: number): TensorProto => {
    if (type === DataType.INT64) return { name, dims: [], dataType: type, rawData: new Uint8Array(BigInt64Array.of(BigInt(v)).buffer) };
    if (type === DataType.INT32) return { name, dims: [], dataType: type, rawData: new Uint8Array(Int32Array.of(v).buffer) };
    if (type === DataType.FLOAT) return { name, dims: [], dataType: type, rawData: new Uint8Array(Float32Array.of(v).buffer) };
    throw new SdgenError(`text encoder: the token ids reach ArgMax as ${dataTypeName(type)}; cannot keep embeddings out of its pooled output`);
  };
  let changed = 0;
  for (const node of [...graph.node]) {
    const x = node.input[0];
    if (node.opType !== 'ArgMax' || x === undefined) continue;
    const type = idsType(x);
    if (type === undefined) continue;
    const limit = uniqueName(graph, `${x}_vocab_size`);
    graph.initializer.push(scalar(limit, type, vocab));
    const zero = uniqueName(graph, `${x}_zero`);
    graph.initializer.push(scalar(zero, type, 0));
    const known = uniqueName(graph, `${x}_in_vocab`);
    const masked = uniqueName(graph, `${x}_embeddings_masked`);
    graph.node.splice(graph.node.indexOf(node), 0,
      { name: `${node.name ?? 'ArgMax'}_embedding_ids_less`, opType: 'Less', input: [x, limit], output: [known], attribute: [] },
      { name: `${node.name ?? 'ArgMax'}_embedding_ids_where`, opType: 'Where', input: [known, x, zero], output: [masked], attribute: [] },
    );
    node.input[0] = masked;
    changed++;
  }
  return changed;
}

/** An embedding placed in a text encoder: its name and the ids of its new rows. */
export interface PlacedEmbedding {
  name: string;
  firstId: number;
  count: number;
}

/**
 * Which embeddings fit an encoder of `vocab` rows and width `dim`, and the ids their rows get
 * when appended in this order. Pure.
 */
export function placeEmbeddings(embeddings: readonly Embedding[], slot: EncoderSlot, vocab: number, dim: number): { placed: PlacedEmbedding[]; rows: Float32Array[]; skipped: string[] } {
  const placed: PlacedEmbedding[] = [];
  const rows: Float32Array[] = [];
  const skipped: string[] = [];
  let next = vocab;
  for (const e of embeddings) {
    const v = vectorsFor(e, slot, dim);
    if (v === undefined) {
      const widths = [...e.vectors.values()].map((x) => x.dim).join('/');
      skipped.push(`${e.name}: width ${widths} does not fit this text encoder (${dim})`);
      continue;
    }
    placed.push({ name: e.name, firstId: next, count: v.count });
    rows.push(v.values);
    next += v.count;
  }
  return { placed, rows, skipped };
}

/** Replaces every run of `pattern` in `ids` by `replacement`, longest patterns first. Pure. */
export function replaceIdRuns(ids: readonly number[], table: readonly { pattern: readonly number[]; replacement: readonly number[] }[]): number[] {
  const sorted = [...table].filter((t) => t.pattern.length > 0).sort((a, b) => b.pattern.length - a.pattern.length);
  const out: number[] = [];
  for (let i = 0; i < ids.length; ) {
    const hit = sorted.find((t) => t.pattern.every((p, k) => ids[i + k] === p));
    if (hit !== undefined) {
      out.push(...hit.replacement);
      i += hit.pattern.length;
    } else {
      out.push(ids[i]!);
      i++;
    }
  }
  return out;
}

/**
 * A tokenizer that encodes each placed embedding's name as its rows' ids (as A1111 finds
 * embeddings by the token ids of their names). The base tokenizer is untouched; the result
 * behaves like it otherwise (chunking, padding, comma lookup).
 */
export function withEmbeddings<T extends ClipTokenizer>(tok: T, placed: readonly PlacedEmbedding[]): T {
  if (placed.length === 0) return tok;
  const table = placed.map((p) => ({ pattern: tok.encode(p.name), replacement: Array.from({ length: p.count }, (_, k) => p.firstId + k) }));
  const wrapped = Object.create(tok) as T;
  Object.defineProperty(wrapped, 'encode', {
    value: (text: string): number[] => replaceIdRuns(tok.encode(text), table),
  });
  return wrapped;
}

/** An embedding a run's prompts used (what the image's metadata records). */
export interface UsedEmbedding {
  name: string;
  path: string;
  sha256: string;
  /** A1111's short hash (`TI hashes`) */
  shortHash: string;
}

/** The embeddings of `all` that any of `texts` uses, with their hashes. */
export function usedEmbeddings(tok: ClipTokenizer, placed: readonly PlacedEmbedding[], all: readonly Embedding[], texts: readonly string[]): UsedEmbedding[] {
  const names = new Set(texts.flatMap((t) => embeddingsUsed(tok, placed, t)));
  return all.filter((e) => names.has(e.name)).map((e) => ({ name: e.name, path: e.path, sha256: e.hashes.sha256, shortHash: a1111EmbeddingShortHash(e.hashes) }));
}

/** Names of the placed embeddings a prompt uses (for the TI hashes of its metadata). */
export function embeddingsUsed(tok: ClipTokenizer, placed: readonly PlacedEmbedding[], text: string): string[] {
  const ids = tok.encode(text);
  return placed.filter((p) => {
    const pat = tok.encode(p.name);
    if (pat.length === 0) return false;
    for (let i = 0; i + pat.length <= ids.length; i++) if (pat.every((x, k) => ids[i + k] === x)) return true;
    return false;
  }).map((p) => p.name);
}
