/**
 * Reading and writing ONNX model files, with external data.
 *
 * loadModel: reads and decodes a model; external tensors (data_location EXTERNAL, with
 * `location`/`offset`/`length` entries relative to the model's directory) are either read
 * ('load': each external file read once; `rawData` become views into it and the tensors become
 * ordinary inline tensors) or left external ('lazy', main-graph initializers only: the absolute
 * source file and range are recorded on the tensor under the EXTERNAL_SOURCE symbol, which
 * object spread copies along, so saveModel can stream the bytes without ever loading them).
 *
 * saveModel: a streaming writer. Protobuf fields may come in any order and a message's length is
 * known from its parts, so the file is written as: model fields before `graph`, the graph's
 * length-prefixed header, graph fields before `initializer`, each initializer on its own (large
 * ones with their bytes appended to one weights file), then the remaining graph and model fields.
 * The whole file is never built in memory; output goes to temp names renamed at the end.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as bufferConstants } from 'node:buffer';
import { mkdir, open, readFile, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, normalize, resolve, sep } from 'node:path';
import { SdgenError } from '../errors.js';
import {
  decodeMessage, decodeModel, encodedSize, encodeMessage, FIELD, lenFieldHeader, lenFieldSize,
  PROTOBUF_MAX_BYTES, splitFields,
} from './proto.js';
import { byteLength } from './tensor.js';
import {
  DataLocation, type AttributeProto, type GraphProto, type ModelProto, type StringStringEntryProto, type TensorProto,
} from './types.js';

// ---------------------------------------------------------------------------------------------
// External data bookkeeping

/** Where the bytes of a lazily loaded external tensor are. */
export interface ExternalSource {
  /** absolute path of the data file */
  path: string;
  offset: number;
  length: number;
}

/** Symbol key on TensorProto objects holding their ExternalSource (lazy loading). */
export const EXTERNAL_SOURCE: unique symbol = Symbol.for('sdgen.onnx.externalSource') as never;

type WithSource = { [EXTERNAL_SOURCE]?: ExternalSource };

export function externalSource(t: TensorProto): ExternalSource | undefined {
  return (t as WithSource)[EXTERNAL_SOURCE];
}

export function setExternalSource(t: TensorProto, src: ExternalSource | undefined): void {
  if (src === undefined) delete (t as WithSource)[EXTERNAL_SOURCE];
  else (t as WithSource)[EXTERNAL_SOURCE] = src;
}

const modelInfo = new WeakMap<ModelProto, { path: string; hadExternalData: boolean }>();

/** True when the model was loaded from a file that kept (some) tensor data externally. */
export function loadedWithExternalData(model: ModelProto): boolean {
  return modelInfo.get(model)?.hadExternalData ?? false;
}

export interface ExternalRef {
  location: string;
  offset: number;
  length: number | undefined;
}

/** A tensor's external data entry (location, offset, length); throws on a malformed one. */
export function parseExternalData(t: TensorProto): ExternalRef {
  let location: string | undefined;
  let offset = 0;
  let length: number | undefined;
  for (const e of t.externalData ?? []) {
    if (e.key === 'location') location = e.value;
    else if (e.key === 'offset') offset = parseIntStrict(e.value, t, 'offset');
    else if (e.key === 'length') length = parseIntStrict(e.value, t, 'length');
  }
  if (location === undefined || location === '') {
    throw new SdgenError(`tensor ${t.name ?? ''}: external data without a location`);
  }
  return { location, offset, length };
}

function parseIntStrict(v: string, t: TensorProto, what: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new SdgenError(`tensor ${t.name ?? ''}: bad external data ${what} '${v}'`);
  return n;
}

/** Resolves an external data location against the model's directory, refusing escapes. */
function resolveLocation(baseDir: string, location: string, t: TensorProto): string {
  const norm = normalize(location);
  if (isAbsolute(location) || norm === '..' || norm.startsWith(`..${sep}`) || norm.startsWith('../')) {
    throw new SdgenError(`tensor ${t.name ?? ''}: external data location '${location}' must be a path inside the model's folder`);
  }
  return join(baseDir, norm);
}

/** Calls `fn` on every tensor of the model; `top` is true for main-graph initializers. */
function forEachTensor(model: ModelProto, fn: (t: TensorProto, top: boolean) => void): void {
  const visitGraph = (g: GraphProto, top: boolean): void => {
    for (const t of g.initializer) fn(t, top);
    for (const s of g.sparseInitializer ?? []) {
      if (s.values) fn(s.values, false);
      if (s.indices) fn(s.indices, false);
    }
    for (const n of g.node) visitAttrs(n.attribute);
  };
  const visitAttrs = (attrs: AttributeProto[]): void => {
    for (const a of attrs) {
      if (a.t) fn(a.t, false);
      for (const t of a.tensors ?? []) fn(t, false);
      for (const s of [...(a.sparseTensor ? [a.sparseTensor] : []), ...(a.sparseTensors ?? [])]) {
        if (s.values) fn(s.values, false);
        if (s.indices) fn(s.indices, false);
      }
      if (a.g) visitGraph(a.g, false);
      for (const g of a.graphs ?? []) visitGraph(g, false);
    }
  };
  if (model.graph) visitGraph(model.graph, true);
  for (const ti of model.trainingInfo ?? []) {
    if (ti.initialization) visitGraph(ti.initialization, false);
    if (ti.algorithm) visitGraph(ti.algorithm, false);
  }
  for (const f of model.functions ?? []) {
    visitAttrs(f.attributeProto ?? []);
    for (const n of f.node) visitAttrs(n.attribute);
  }
}

// ---------------------------------------------------------------------------------------------
// Loading

export interface LoadOptions {
  /** 'load' (default): read external data into rawData; 'lazy': leave main-graph initializers external. */
  externalData?: 'load' | 'lazy';
}

function fsError(e: unknown, what: string, path: string): SdgenError {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT') return new SdgenError(`${what} not found: ${path}`, { cause: e });
  if (code === 'EISDIR') return new SdgenError(`${what} is a directory, not a file: ${path}`, { cause: e });
  if (code === 'EACCES' || code === 'EPERM') return new SdgenError(`${what} is not readable (permission denied): ${path}`, { cause: e });
  if (code === 'ERR_FS_FILE_TOO_LARGE') {
    return new SdgenError(`${what} is larger than 2 GiB, which a single ONNX protobuf cannot be: ${path}`, { cause: e });
  }
  return new SdgenError(`cannot read ${what} ${path}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
}

/** Reads [offset, offset+length) of an open file into one Buffer (handles > 2 GiB). */
async function readRange(fh: FileHandle, offset: number, length: number, into?: Buffer): Promise<Buffer> {
  const buf = into ?? Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const n = Math.min(length - done, 1 << 30);
    const { bytesRead } = await fh.read(buf, done, n, offset + done);
    if (bytesRead === 0) throw new SdgenError(`unexpected end of file while reading ${length} bytes at ${offset}`);
    done += bytesRead;
  }
  return buf;
}

/** Reads and decodes an ONNX model file, resolving its external data (see LoadOptions). */
export async function loadModel(path: string, opts: LoadOptions = {}): Promise<ModelProto> {
  const mode = opts.externalData ?? 'load';
  const abs = resolve(path);
  let buf: Buffer;
  try {
    buf = await readFile(abs);
  } catch (e) {
    throw fsError(e, 'model file', path);
  }
  let model: ModelProto;
  try {
    model = decodeModel(buf);
  } catch (e) {
    if (e instanceof SdgenError) throw new SdgenError(`${path}: ${e.message}`, { cause: e });
    throw e;
  }
  const baseDir = dirname(abs);
  const pending: { t: TensorProto; file: string; ref: ExternalRef; lazy: boolean }[] = [];
  forEachTensor(model, (t, top) => {
    if (t.dataLocation !== DataLocation.EXTERNAL) return;
    const ref = parseExternalData(t);
    pending.push({ t, file: resolveLocation(baseDir, ref.location, t), ref, lazy: mode === 'lazy' && top });
  });
  modelInfo.set(model, { path: abs, hadExternalData: pending.length > 0 });
  if (pending.length === 0) return model;

  const byFile = new Map<string, typeof pending>();
  for (const p of pending) {
    const l = byFile.get(p.file);
    if (l === undefined) byFile.set(p.file, [p]);
    else l.push(p);
  }
  for (const [file, items] of byFile) {
    let fh: FileHandle;
    try {
      fh = await open(file, 'r');
    } catch (e) {
      throw fsError(e, `external data file of ${path}`, file);
    }
    try {
      const size = (await fh.stat()).size;
      for (const p of items) {
        const len = p.ref.length ?? byteLength(p.t.dataType, p.t.dims);
        p.ref.length = len;
        if (p.ref.offset + len > size) {
          throw new SdgenError(
            `tensor ${p.t.name ?? ''}: external data [${p.ref.offset}, +${len}) is past the end of ${file} (${size} bytes)`,
          );
        }
      }
      const toLoad = items.filter((p) => !p.lazy);
      for (const p of items) if (p.lazy) setExternalSource(p.t, { path: file, offset: p.ref.offset, length: p.ref.length! });
      if (toLoad.length === 0) continue;
      // one read of the whole file (tensors as views) when it is mostly used, else one per tensor
      const used = toLoad.reduce((sum, p) => sum + p.ref.length!, 0);
      let whole: Buffer | undefined;
      if (size <= bufferConstants.MAX_LENGTH && toLoad.length > 1 && used >= size / 2) whole = await readRange(fh, 0, size);
      for (const p of toLoad) {
        const { offset } = p.ref;
        const len = p.ref.length!;
        p.t.rawData = whole ? whole.subarray(offset, offset + len) : await readRange(fh, offset, len);
        delete p.t.dataLocation;
        delete p.t.externalData;
      }
    } finally {
      await fh.close();
    }
  }
  return model;
}

/**
 * The raw bytes of a tensor stored as rawData, inline or external (lazily loaded), without
 * making it inline; undefined for data in the typed fields (float_data, ...).
 */
export async function readTensorBytes(t: TensorProto): Promise<Uint8Array | undefined> {
  if (t.rawData !== undefined) return t.rawData;
  const src = externalSource(t);
  if (src === undefined) return undefined;
  let fh: FileHandle;
  try {
    fh = await open(src.path, 'r');
  } catch (e) {
    throw fsError(e, 'external data file', src.path);
  }
  try {
    return await readRange(fh, src.offset, src.length);
  } finally {
    await fh.close();
  }
}

/** Reads the bytes of a lazily loaded external tensor into its rawData (makes it inline). */
export async function loadTensorData(t: TensorProto): Promise<Uint8Array> {
  if (t.rawData !== undefined) return t.rawData;
  const bytes = await readTensorBytes(t);
  if (bytes === undefined) throw new SdgenError(`tensor ${t.name ?? ''} has no data to load`);
  t.rawData = bytes;
  delete t.dataLocation;
  delete t.externalData;
  setExternalSource(t, undefined);
  return t.rawData;
}

// ---------------------------------------------------------------------------------------------
// Saving

export interface SaveOptions {
  /**
   * true: tensors of ≥ threshold bytes go to the weights file; false: everything inline (error
   * over 2 GiB); 'auto' (default): external when the model was loaded with external data or
   * would exceed ~1.9 GB.
   */
  externalData?: boolean | 'auto';
  /** weights file name, beside the model (default: `<model file name>_data`, e.g. model.onnx_data) */
  weightsFile?: string;
  /** minimum tensor data size in bytes to go external (default 1024) */
  threshold?: number;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

/** Size above which 'auto' switches to external data. */
export const AUTO_EXTERNAL_BYTES = 1.9e9;

type Piece =
  | { kind: 'buf'; buf: Uint8Array }
  | { kind: 'src'; src: ExternalSource };

interface PlannedTensor {
  /** encoded size of the initializer message */
  size: number;
  /** pieces of the message body, in order */
  body: Piece[];
  /** bytes going to the weights file, if external */
  external?: { offset: number; data: Piece; t: TensorProto; lazy: boolean };
}

function alignFor(len: number): number {
  return len >= 65536 ? 4096 : 64;
}

/** Buffered sequential writer on a file handle. */
class Sink {
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  /** bytes written to the file so far */
  written = 0;

  /** file position after everything queued so far */
  get position(): number {
    return this.written + this.pendingBytes;
  }

  constructor(private fh: FileHandle, private progress: (n: number) => void) {}

  async write(b: Uint8Array): Promise<void> {
    if (b.length === 0) return;
    if (b.length >= 1 << 20) {
      await this.flush();
      await this.writeAll(b);
    } else {
      this.pending.push(b);
      this.pendingBytes += b.length;
      if (this.pendingBytes >= 8 << 20) await this.flush();
    }
  }

  async zeros(n: number): Promise<void> {
    if (n > 0) await this.write(Buffer.alloc(n));
  }

  async flush(): Promise<void> {
    if (this.pending.length === 0) return;
    const all = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    // writev may write partially; fall back to writing the remainder piece by piece
    const total = all.reduce((s, b) => s + b.length, 0);
    const { bytesWritten } = await this.fh.writev(all);
    if (bytesWritten === total) {
      this.written += total;
      this.progress(total);
      return;
    }
    let skip = bytesWritten;
    this.written += bytesWritten;
    this.progress(bytesWritten);
    for (const b of all) {
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      await this.writeAll(b.subarray(skip));
      skip = 0;
    }
  }

  private async writeAll(b: Uint8Array): Promise<void> {
    let off = 0;
    while (off < b.length) {
      const n = Math.min(b.length - off, 1 << 30);
      const { bytesWritten } = await this.fh.write(b, off, n);
      off += bytesWritten;
      this.written += bytesWritten;
      this.progress(bytesWritten);
    }
  }
}

/** Copies a range of a source file into a sink through one reusable buffer. */
class SourceReader {
  private handles = new Map<string, FileHandle>();
  private chunk: Buffer | undefined;

  async copy(src: ExternalSource, sink: Sink): Promise<void> {
    let fh = this.handles.get(src.path);
    if (fh === undefined) {
      try {
        fh = await open(src.path, 'r');
      } catch (e) {
        throw fsError(e, 'external data file', src.path);
      }
      this.handles.set(src.path, fh);
    }
    const chunkSize = 16 << 20;
    this.chunk ??= Buffer.allocUnsafe(chunkSize);
    let done = 0;
    while (done < src.length) {
      const n = Math.min(chunkSize, src.length - done);
      const { bytesRead } = await fh.read(this.chunk, 0, n, src.offset + done);
      if (bytesRead === 0) throw new SdgenError(`external data file ${src.path} is shorter than expected`);
      // the chunk is reused: flush queued bytes and write it synchronously with respect to us
      await sink.flush();
      await sink.write(bytesRead >= 1 << 20 ? this.chunk.subarray(0, bytesRead) : Buffer.from(this.chunk.subarray(0, bytesRead)));
      done += bytesRead;
    }
  }

  async close(): Promise<void> {
    for (const fh of this.handles.values()) await fh.close();
    this.handles.clear();
  }
}

function tensorDataLength(t: TensorProto): { len: number; piece: Piece } | undefined {
  if (t.rawData !== undefined) return { len: t.rawData.length, piece: { kind: 'buf', buf: t.rawData } };
  if (t.dataLocation === DataLocation.EXTERNAL) {
    const src = externalSource(t);
    if (src === undefined) {
      throw new SdgenError(
        `tensor ${t.name ?? ''}: its data is external but its source file is unknown (load the model with loadModel first)`,
      );
    }
    return { len: src.length, piece: { kind: 'src', src } };
  }
  return undefined;
}

/**
 * Writes a model (see the module comment). Large tensors go to one weights file beside the model
 * when external data is on; everything is written to temp files renamed into place at the end.
 * The model's folder is created if needed.
 */
export async function saveModel(model: ModelProto, path: string, opts: SaveOptions = {}): Promise<void> {
  const graph = model.graph;
  if (graph === undefined) throw new SdgenError('cannot save a model without a graph');
  const abs = resolve(path);
  const dir = dirname(abs);
  const weightsName = opts.weightsFile ?? `${basename(abs)}_data`;
  const threshold = opts.threshold ?? 1024;
  const weightsPath = resolveLocation(dir, weightsName, { name: 'weights file', dims: [], dataType: 0 });
  if (weightsPath === abs) throw new SdgenError(`the weights file cannot be the model file itself: ${abs}`);

  // sizes of everything but the initializers
  const [modelA, modelB] = splitFields('ModelProto', model, FIELD.MODEL_GRAPH);
  const [graphA, graphB] = splitFields('GraphProto', graph, FIELD.GRAPH_INITIALIZER);
  const data = graph.initializer.map((t) => tensorDataLength(t));
  let dataTotal = 0;
  for (const d of data) if (d) dataTotal += d.len;

  let useExternal: boolean;
  const mode = opts.externalData ?? 'auto';
  if (mode === 'auto') useExternal = loadedWithExternalData(model) || dataTotal > AUTO_EXTERNAL_BYTES;
  else useExternal = mode;

  // plan each initializer
  let weightsSize = 0;
  const planned: PlannedTensor[] = graph.initializer.map((t, i) => {
    const d = data[i];
    if (d === undefined) {
      const buf = encodeMessage('TensorProto', t, `tensor ${t.name ?? ''}`);
      return { size: buf.length, body: [{ kind: 'buf', buf }] };
    }
    if (useExternal && d.len >= threshold) {
      const align = alignFor(d.len);
      const offset = Math.ceil(weightsSize / align) * align;
      weightsSize = offset + d.len;
      const externalData: StringStringEntryProto[] = [
        { key: 'location', value: weightsName.split(sep).join('/') },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(d.len) },
      ];
      const header: TensorProto = { ...t, rawData: undefined, dataLocation: DataLocation.EXTERNAL, externalData };
      const buf = encodeMessage('TensorProto', header, `tensor ${t.name ?? ''}`);
      return { size: buf.length, body: [{ kind: 'buf', buf }], external: { offset, data: d.piece, t, lazy: d.piece.kind === 'src' } };
    }
    // inline: fields before raw_data, raw_data, fields after it
    const inline: TensorProto = { ...t, dataLocation: undefined, externalData: undefined };
    const [a, b] = splitFields('TensorProto', inline, FIELD.TENSOR_RAW_DATA);
    const bufA = encodeMessage('TensorProto', a);
    const bufB = encodeMessage('TensorProto', b);
    const head = lenFieldHeader(FIELD.TENSOR_RAW_DATA, d.len);
    return {
      size: bufA.length + head.length + d.len + bufB.length,
      body: [{ kind: 'buf', buf: bufA }, { kind: 'buf', buf: head }, d.piece, { kind: 'buf', buf: bufB }],
    };
  });

  const graphASize = encodedSize('GraphProto', graphA);
  const graphBSize = encodedSize('GraphProto', graphB);
  let graphSize = graphASize + graphBSize;
  for (const p of planned) graphSize += lenFieldSize(FIELD.GRAPH_INITIALIZER, p.size);
  const modelASize = encodedSize('ModelProto', modelA);
  const modelBSize = encodedSize('ModelProto', modelB);
  const modelSize = modelASize + lenFieldSize(FIELD.MODEL_GRAPH, graphSize) + modelBSize;
  if (modelSize > PROTOBUF_MAX_BYTES) {
    throw new SdgenError(
      `the model would be ${modelSize} bytes, over protobuf's 2 GiB limit: save it with external data` +
        (useExternal ? ` and a lower threshold (now ${threshold} bytes)` : ' (externalData: true)'),
    );
  }

  const total = modelSize + weightsSize;
  let done = 0;
  const onProgress = opts.onProgress;
  const progress = (n: number): void => {
    done += n;
    onProgress?.(done, total);
  };

  const tag = `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const tmpModel = `${abs}${tag}`;
  const tmpWeights = `${weightsPath}${tag}`;
  const externals = planned.filter((p) => p.external !== undefined);
  const reader = new SourceReader();
  const created: string[] = [];
  try {
    await mkdir(dir, { recursive: true });
    // weights file
    if (externals.length > 0) {
      await mkdir(dirname(weightsPath), { recursive: true });
      const fh = await open(tmpWeights, 'wx');
      created.push(tmpWeights);
      try {
        const sink = new Sink(fh, progress);
        for (const p of externals) {
          const ext = p.external!;
          await sink.zeros(ext.offset - sink.position);
          await writePiece(ext.data, sink, reader);
        }
        await sink.flush();
        if (sink.written !== weightsSize) throw new Error(`internal error: wrote ${sink.written} of ${weightsSize} weight bytes`);
      } finally {
        await fh.close();
      }
    }
    // model file
    const fh = await open(tmpModel, 'wx');
    created.push(tmpModel);
    try {
      const sink = new Sink(fh, progress);
      await sink.write(encodeMessage('ModelProto', modelA));
      await sink.write(lenFieldHeader(FIELD.MODEL_GRAPH, graphSize));
      await sink.write(encodeMessage('GraphProto', graphA));
      for (const p of planned) {
        await sink.write(lenFieldHeader(FIELD.GRAPH_INITIALIZER, p.size));
        for (const piece of p.body) await writePiece(piece, sink, reader);
      }
      await sink.write(encodeMessage('GraphProto', graphB));
      await sink.write(encodeMessage('ModelProto', modelB));
      await sink.flush();
      if (sink.written !== modelSize) throw new Error(`internal error: wrote ${sink.written} of ${modelSize} model bytes`);
    } finally {
      await fh.close();
    }
    await reader.close();
    if (externals.length > 0) await rename(tmpWeights, weightsPath);
    await rename(tmpModel, abs);
  } catch (e) {
    await reader.close().catch(() => undefined);
    for (const f of created) await unlink(f).catch(() => undefined);
    if (e instanceof SdgenError) throw e;
    const code = (e as NodeJS.ErrnoException)?.code;
    if (code !== undefined) throw new SdgenError(`cannot write model ${path}: ${(e as Error).message}`, { cause: e });
    throw e;
  }
  // lazily loaded tensors now live in the new weights file (the old one may have been replaced)
  for (const p of externals) {
    const ext = p.external!;
    if (ext.lazy) setExternalSource(ext.t, { path: weightsPath, offset: ext.offset, length: externalSource(ext.t)!.length });
  }
}

async function writePiece(piece: Piece, sink: Sink, reader: SourceReader): Promise<void> {
  if (piece.kind === 'buf') await sink.write(piece.buf);
  else await reader.copy(piece.src, sink);
}

// ---------------------------------------------------------------------------------------------
// Identity (cache keys)

const MIB = 1 << 20;

async function fileFingerprint(path: string, what: string): Promise<string> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw fsError(e, what, path);
  }
  try {
    const st = await fh.stat();
    const h = createHash('sha256');
    h.update(`${st.size}:${st.mtimeMs}:`);
    const headLen = Math.min(st.size, MIB);
    h.update(await readRange(fh, 0, headLen));
    if (st.size > MIB) {
      const tailLen = Math.min(MIB, st.size - MIB);
      h.update(await readRange(fh, st.size - tailLen, tailLen));
    }
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}

/**
 * Walks a model file's protobuf structure with positioned reads to list the external data
 * locations of its main-graph initializers, without reading tensor bytes.
 */
async function externalLocations(path: string): Promise<string[]> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const win = Buffer.allocUnsafe(64 * 1024);
    let winStart = 0;
    let winLen = 0;
    /** Makes [pos, pos + 20) available in the window when the file has those bytes. */
    const ensure = async (pos: number): Promise<void> => {
      const winEnd = winStart + winLen;
      if (pos >= winStart && (pos + 20 <= winEnd || winEnd >= size)) return;
      winStart = pos;
      winLen = (await fh.read(win, 0, win.length, pos)).bytesRead;
    };
    const varint = (pos: number): [number, number] => {
      let v = 0;
      let mul = 1;
      for (let i = 0; i < 10; i++) {
        const k = pos - winStart;
        if (k < 0 || k >= winLen) throw new SdgenError(`${path}: not an ONNX model (truncated)`);
        const b = win[k]!;
        pos++;
        v += (b & 0x7f) * mul;
        if (b < 0x80) return [v, pos];
        mul *= 128;
      }
      throw new SdgenError(`${path}: not an ONNX model (bad varint)`);
    };
    const bytes = async (s: number, e: number): Promise<Uint8Array> =>
      s >= winStart && e <= winStart + winLen ? win.subarray(s - winStart, e - winStart) : readRange(fh, s, e - s);
    /** Iterates the fields of a message in [start, end): calls fn(fieldNo, wireType, payloadStart, payloadEnd). */
    const fields = async (start: number, end: number, fn: (no: number, wt: number, s: number, e: number) => Promise<void>): Promise<void> => {
      let pos = start;
      while (pos < end) {
        await ensure(pos);
        const [tag, p1] = varint(pos);
        const wt = tag & 7;
        const no = Math.floor(tag / 8);
        let s = p1;
        let e: number;
        if (wt === 0) e = varint(p1)[1];
        else if (wt === 1) e = p1 + 8;
        else if (wt === 5) e = p1 + 4;
        else if (wt === 2) {
          const [len, p2] = varint(p1);
          s = p2;
          e = p2 + len;
        } else throw new SdgenError(`${path}: not an ONNX model (unsupported wire type ${wt})`);
        if (e > end || no === 0) throw new SdgenError(`${path}: not an ONNX model (malformed field at ${pos})`);
        await fn(no, wt, s, e);
        pos = e;
      }
    };
    const locations = new Set<string>();
    await fields(0, size, async (no, wt, s, e) => {
      if (no !== FIELD.MODEL_GRAPH || wt !== 2) return;
      await fields(s, e, async (gno, gwt, gs, ge) => {
        if (gno !== FIELD.GRAPH_INITIALIZER || gwt !== 2) return;
        await fields(gs, ge, async (tno, twt, ts, te) => {
          if (tno !== 13 || twt !== 2 || te - ts > 1 << 20) return;
          const entry = decodeMessage<StringStringEntryProto>('StringStringEntryProto', await bytes(ts, te));
          if (entry.key === 'location') locations.add(entry.value);
        });
      });
    });
    return [...locations].sort();
  } finally {
    await fh.close();
  }
}

/**
 * A cache key for a model file: sha256 over size, mtime and the first/last MiB of the file and
 * of each external data file its main-graph initializers reference. Cheap for any model size.
 */
export async function modelFileIdentity(path: string): Promise<string> {
  const abs = resolve(path);
  const h = createHash('sha256');
  h.update(await fileFingerprint(abs, 'model file'));
  let locs: string[];
  try {
    locs = await externalLocations(abs);
  } catch (e) {
    if (e instanceof SdgenError) throw e;
    throw fsError(e, 'model file', path);
  }
  const dir = dirname(abs);
  for (const loc of locs) {
    h.update(`\u0000${loc}\u0000`);
    h.update(await fileFingerprint(resolveLocation(dir, loc, { name: loc, dims: [], dataType: 0 }), 'external data file'));
  }
  return h.digest('hex');
}

/** Bytes of a model file and of the external data files its main graph references (missing ones count 0). */
export async function modelBytesOnDisk(path: string): Promise<number> {
  const abs = resolve(path);
  let total = (await stat(abs)).size;
  const dir = dirname(abs);
  for (const loc of await externalLocations(abs)) {
    try {
      total += (await stat(resolveLocation(dir, loc, { name: loc, dims: [], dataType: 0 }))).size;
    } catch {
      // reported when the model is loaded
    }
  }
  return total;
}
