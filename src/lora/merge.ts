/**
 * Merging LoRA deltas into the weights of an exported graph:
 *   W ← W + Σ_i scale_i · (alpha_i / rank_i) · (up_i · down_i)
 * in float32, LoRAs in the order given, as diffusers 0.27.2 fuses them
 * (LoRACompatibleLinear/Conv._fuse_lora), up to float32 rounding: here one Gemm per module
 * computes W + (s·down)ᵀ·upᵀ (or + (s·up)·down), s = scale · alpha / rank.
 * Convolution LoRAs multiply up [out, r] by down [r, in·kh·kw] and reshape to [out, in, kh, kw];
 * MatMul weights are stored transposed ([in, out]) so the delta is added transposed. A float16
 * weight is widened exactly, merged in float32 and rounded back to float16 (nearest even).
 * A LoRA of scale 0 changes nothing: the weights stay bit for bit the base model's.
 *
 * The products run on onnxruntime (addScaledProduct). The model is one loaded with its external
 * data left lazy (src/onnx/model-io.ts): each weight a LoRA touches is read on its own and becomes
 * an inline tensor (handed to the caller's sink to be written out); the others are never read.
 * Reading the next weight and writing the previous one overlap with each product.
 */
import { performance } from 'node:perf_hooks';
import { open, type FileHandle } from 'node:fs/promises';
import ort from 'onnxruntime-node';
import { SdgenError, UsageError } from '../errors.js';
import { valueInfo } from '../onnx/builder.js';
import { encodeModel } from '../onnx/proto.js';
import { externalSource, readTensorBytes, setExternalSource } from '../onnx/model-io.js';
import { bytesOf, dataTypeName, float32ToFloat16, tensorFloats } from '../onnx/tensor.js';
import { AttributeType, DataType, type GraphProto, type ModelProto, type TensorProto, type ValueInfoProto } from '../onnx/types.js';
import { uniqueName } from '../onnx/graph.js';
import { parseLoraKeys, type LoraModule, type LoraTarget, type ParsedLora } from './keys.js';
import { mapLoraModules, requireMostMatched, WeightSites, type LoraMapping, type WeightLayout, type WeightSite } from './map.js';
import { SafetensorsFile } from './safetensors.js';
import type { UnetLayout } from './sgm.js';

/**
 * Where a LoRA application spends its time, per stage, in seconds (bench/lora-apply.ts reads it):
 * accumulated by every merge and variant write of the process until reset.
 */
const profile: Record<string, number> = {};

export function resetLoraProfile(): void {
  for (const k of Object.keys(profile)) delete profile[k];
}

export function loraProfile(): Readonly<Record<string, number>> {
  return { ...profile };
}

/** Adds the time since `t0` (performance.now()) to a stage; returns now. */
export function tick(stage: string, t0: number): number {
  const now = performance.now();
  profile[stage] = (profile[stage] ?? 0) + (now - t0) / 1000;
  return now;
}

/** A LoRA file opened for reading: header parsed and keys grouped; tensors read on demand. */
export interface OpenLora {
  path: string;
  /** the name shown in messages and metadata (file name without extension) */
  name: string;
  file: SafetensorsFile;
  parsed: ParsedLora;
}

export async function openLora(path: string, name: string): Promise<OpenLora> {
  const file = await SafetensorsFile.open(path);
  try {
    return { path, name, file, parsed: parseLoraKeys(file.tensors, path) };
  } catch (e) {
    await file.close();
    throw e;
  }
}

export interface LoraApplication {
  lora: OpenLora;
  scale: number;
}

export interface LoraMergeReport {
  name: string;
  scale: number;
  /** modules of this LoRA meant for the model's targets */
  total: number;
  matched: number;
  /** module ids that exist in the LoRA but not in the model */
  unmatched: string[];
}

export interface MergeResult {
  /** initializers whose data changed (now inline), in graph order of first change */
  changed: TensorProto[];
  reports: LoraMergeReport[];
}

/** alpha / rank of a module (alpha absent → rank, i.e. 1). */
export async function moduleRatio(lora: OpenLora, m: LoraModule): Promise<number> {
  if (m.alpha === undefined) return 1;
  const a = (await lora.file.readFloats(m.alpha))[0]!;
  if (!Number.isFinite(a)) throw new UsageError(`${lora.path}: module ${m.path} has a non-finite alpha (${a})`);
  return a / m.rank;
}

/**
 * The product kernel: Y = W + s · (A · B) in float32, one Gemm (alpha = s, beta = 1, C = W) run by
 * onnxruntime on a small session made once per process, with A and B each optionally transposed
 * (transA/transB), so that neither LoRA factor is transposed in JS. A LoRA on an SD 1.5 UNet's
 * attention and feed-forward layers is about 4·10⁹ multiply-adds at rank 16, which onnxruntime's
 * GEMM does in a second or two; one Gemm instead of MatMul, Mul and Add makes one pass over each
 * weight instead of three. The rounding differs from diffusers' `_fuse_lora` (which
 * rounds up·ratio, the product, its scaling and the sum one after another) by a few float32 ulps.
 */
const kernels = new Map<string, Promise<ort.InferenceSession>>();

function kernelModel(transA: boolean, transB: boolean): ModelProto {
  const f = (name: string, dims: (number | string)[]): ValueInfoProto => valueInfo(name, DataType.FLOAT, dims);
  return {
    irVersion: 8,
    opsetImport: [{ domain: '', version: 13 }],
    graph: {
      name: 'lora_merge',
      node: [
        {
          name: 'merge', opType: 'Gemm', input: ['A', 'B', 'W'], output: ['Y'],
          attribute: [
            { name: 'transA', type: AttributeType.INT, i: transA ? 1 : 0 },
            { name: 'transB', type: AttributeType.INT, i: transB ? 1 : 0 },
          ],
        },
      ],
      initializer: [],
      input: [f('W', ['m', 'n']), f('A', transA ? ['k', 'm'] : ['m', 'k']), f('B', transB ? ['n', 'k'] : ['k', 'n'])],
      output: [f('Y', ['m', 'n'])],
      valueInfo: [],
    },
  };
}

/**
 * w + scale · (op(a) · op(b)), float32, op(a) [m, k] and op(b) [k, n]; `transA` means a is
 * stored [k, m], `transB` that b is stored [n, k].
 */
export async function addScaledProduct(w: Float32Array, a: Float32Array, b: Float32Array, m: number, k: number, n: number, scale: number, transA = false, transB = false, into?: Float32Array): Promise<Float32Array> {
  const id = `${transA ? 1 : 0}${transB ? 1 : 0}`;
  let kernel = kernels.get(id);
  if (kernel === undefined) {
    // one thread: the product of a rank-16 LoRA is bound by memory traffic, and the reads and
    // writes of the weights it overlaps with need the other cores
    kernel = ort.InferenceSession.create(encodeModel(kernelModel(transA, transB)), { graphOptimizationLevel: 'disabled', intraOpNumThreads: 1 });
    kernels.set(id, kernel);
  }
  const s = await kernel;
  // the scale rides in A (k·m values, small): the Gemm's alpha is fixed in its graph
  const as = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) as[i] = a[i]! * scale;
  const feeds = {
    W: new ort.Tensor('float32', w, [m, n]),
    A: new ort.Tensor('float32', as, transA ? [k, m] : [m, k]),
    B: new ort.Tensor('float32', b, transB ? [n, k] : [k, n]),
  };
  if (into !== undefined) {
    // a pre-allocated output: the result lands in a buffer the caller reuses
    await s.run(feeds, { Y: new ort.Tensor('float32', into, [m, n]) });
    return into;
  }
  const out = await s.run(feeds);
  return out['Y']!.data as Float32Array;
}

/**
 * W + scale · ((up · ratio) @ down) with W in its graph layout: [out, inFlat] (Gemm transB,
 * Conv reshaped) or [inFlat, out] (MatMul), where the product is taken transposed:
 * downᵀ · upᵀ, read straight from the stored factors (transA, transB).
 */
export async function mergeModule(w: Float32Array, layout: WeightLayout, up: Float32Array, down: Float32Array, out: number, rank: number, inFlat: number, ratio: number, scale: number, into?: Float32Array): Promise<Float32Array> {
  if (layout === 'in_out') return addScaledProduct(w, down, up, inFlat, rank, out, scale * ratio, true, true, into);
  return addScaledProduct(w, up, down, out, rank, inFlat, scale * ratio, false, false, into);
}

/**
 * A few buffers reused in turn. Allocating a fresh buffer for each weight (tens of MB: its pages
 * faulted in and zeroed) costs more than merging it on small machines, so with a sink (which
 * writes each changed weight out and drops it) reads and products go to reused buffers.
 */
class Ring {
  private readonly bufs: ArrayBuffer[] = [];
  private i = 0;
  constructor(private readonly n: number, private readonly bytes: number) {}

  next(values: number): Float32Array {
    const j = this.i++ % this.n;
    this.bufs[j] ??= new ArrayBuffer(this.bytes);
    return new Float32Array(this.bufs[j]!, 0, values);
  }
}

/** A float32 external weight read into `ring`'s next buffer (others as weightValues reads them). */
async function readWeight(t: TensorProto, ring: Ring | undefined, files: Map<string, Promise<FileHandle>>): Promise<Float32Array> {
  const src = externalSource(t);
  if (ring === undefined || src === undefined || t.dataType !== DataType.FLOAT || t.rawData !== undefined) return weightValues(t);
  const out = ring.next(src.length / 4);
  const bytes = new Uint8Array(out.buffer, 0, src.length);
  let fh = files.get(src.path);
  if (fh === undefined) {
    fh = open(src.path, 'r');
    files.set(src.path, fh);
  }
  let handle: FileHandle;
  try {
    handle = await fh;
  } catch (e) {
    throw new SdgenError(`cannot read the external data file ${src.path}: ${(e as Error).message}`, { cause: e });
  }
  for (let done = 0; done < src.length; ) {
    const { bytesRead } = await handle.read(bytes, done, src.length - done, src.offset + done);
    if (bytesRead === 0) throw new SdgenError(`${src.path}: unexpected end of file reading ${t.name ?? 'a weight'}`);
    done += bytesRead;
  }
  return out;
}

function allFinite(x: Float32Array): boolean {
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) return false;
  return true;
}

/** A float32/float16 weight's values as float32, inline or external (read-only: may view the tensor's bytes). */
export async function weightValues(t: TensorProto): Promise<Float32Array> {
  if (t.dataType !== DataType.FLOAT && t.dataType !== DataType.FLOAT16) {
    throw new UsageError(`weight ${t.name ?? ''} is ${dataTypeName(t.dataType)}; LoRAs merge into float32 and float16 weights only`);
  }
  const bytes = await readTensorBytes(t);
  // a view where the bytes allow (merging never writes into it: each product returns a new array)
  return tensorFloats(bytes === undefined ? t : { name: t.name, dims: t.dims, dataType: t.dataType, rawData: bytes });
}

/** Replaces a tensor's data with `values` in its own type, as inline data. */
export function setWeightValues(t: TensorProto, values: Float32Array): void {
  const data = t.dataType === DataType.FLOAT16 ? float32ToFloat16(values) : values;
  t.rawData = bytesOf(data);
  delete t.floatData;
  delete t.int32Data;
  delete t.dataLocation;
  delete t.externalData;
  setExternalSource(t, undefined);
}

/** Maps each LoRA onto the graph (errors for another architecture or a shape mismatch). */
export function mapLoras(graph: GraphProto, apps: readonly LoraApplication[], targets: readonly LoraTarget[], what: string, layout?: UnetLayout): LoraMapping[] {
  const sites = new WeightSites(graph, layout);
  return apps.map((a) => {
    const mapping = mapLoraModules(graph, a.lora.parsed.modules, targets, a.lora.path, sites);
    requireMostMatched(mapping, a.lora.path, what);
    return mapping;
  });
}

/**
 * Merges the LoRAs (in order) into the weights of `model` for `targets` (the UNet's modules, or
 * one text encoder's). A weight the graph shares with other nodes gets a copy of its own for the
 * changed node. `what` names the model in errors ("the UNet").
 */
export async function mergeLoras(
  model: ModelProto,
  apps: readonly LoraApplication[],
  targets: readonly LoraTarget[],
  what: string,
  /** called with each changed tensor as soon as it is final (e.g. to write it out and drop its data) */
  sink?: (t: TensorProto) => Promise<void>,
  /** the UNet's topology for kohya's SGM names (its config.json); absent: read off the graph */
  layout?: UnetLayout,
): Promise<MergeResult> {
  const graph = model.graph;
  if (graph === undefined) throw new UsageError(`${what} has no graph`);
  // every LoRA is mapped (and so checked) before any weight is read
  const mappings = mapLoras(graph, apps, targets, what, layout);
  const reports: LoraMergeReport[] = [];
  // per weight, the modules that change it, LoRAs in the order given
  const work = new Map<TensorProto, { site: WeightSite; mods: { lora: OpenLora; m: LoraModule; scale: number }[] }>();
  for (let li = 0; li < apps.length; li++) {
    const { lora, scale } = apps[li]!;
    const mapping = mappings[li]!;
    reports.push({
      name: lora.name, scale, total: mapping.matched.length + mapping.unmatched.length,
      matched: mapping.matched.length, unmatched: mapping.unmatched.map((m) => m.id),
    });
    if (scale === 0) continue;
    if (!Number.isFinite(scale)) throw new UsageError(`${lora.path}: LoRA scale must be a finite number, got ${scale}`);
    for (const { module: m, site } of mapping.matched) {
      let entry = work.get(site.initializer);
      if (entry === undefined) {
        entry = { site, mods: [] };
        work.set(site.initializer, entry);
      }
      entry.mods.push({ lora, m, scale });
    }
  }
  // One weight at a time, as a pipeline: the next weight's read and the previous one's write
  // (the sink) run while this one is merged, so disk and product overlap. Memory: three weights.
  const items = [...work.values()];
  const changed: TensorProto[] = [];
  // a LoRA's tensors are read whole, once, rather than one read per tensor
  for (const l of new Set(items.flatMap((it) => it.mods.map((x) => x.lora)))) await l.file.preload();
  const quiet = <T>(p: Promise<T>): Promise<T> => {
    p.catch(() => {}); // awaited below; a failure must not surface as unhandled before then
    return p;
  };
  // reused buffers (Ring) when each weight is written out and dropped: two for reads (this one,
  // the next), two for products (this one, the one being written)
  const maxBytes = Math.max(0, ...items.map((it) => it.site.initializer.dims.reduce<number>((a, d) => a * Number(d), 4)));
  const reads = sink ? new Ring(2, maxBytes) : undefined;
  const products = sink ? new Ring(2, maxBytes) : undefined;
  const files = new Map<string, Promise<FileHandle>>();
  let next = items.length > 0 ? quiet(readWeight(items[0]!.site.initializer, reads, files)) : undefined;
  let writing: Promise<void> = Promise.resolve();
  try {
    for (let k = 0; k < items.length; k++) {
      const { site, mods } = items[k]!;
      let t0 = performance.now();
      let w = await next!;
      next = k + 1 < items.length ? quiet(readWeight(items[k + 1]!.site.initializer, reads, files)) : undefined;
      t0 = tick('read base', t0);
      // the product buffer used two weights ago is free once that weight's write is done
      await writing;
      t0 = tick('write (waited)', t0);
      for (const [j, { lora, m, scale }] of mods.entries()) {
        const inFlat = m.inShape.reduce((a, b) => a * b, 1);
        const up = await lora.file.readFloats(m.up);
        const down = await lora.file.readFloats(m.down);
        if (!allFinite(up) || !allFinite(down)) throw new UsageError(`${lora.path}: module ${m.path} has non-finite weights`);
        const ratio = await moduleRatio(lora, m);
        t0 = tick('read lora', t0);
        const into = j === 0 && products !== undefined ? products.next(w.length) : undefined;
        w = await mergeModule(w, site.layout, up, down, m.out, m.rank, inFlat, ratio, scale, into);
        t0 = tick('product', t0);
      }
      let t = site.initializer;
      if (site.shared) {
        // the node gets its own copy; the other consumers keep the base weight
        const copy: TensorProto = { name: uniqueName(graph, `${t.name ?? 'weight'}_lora`), dims: [...t.dims], dataType: t.dataType };
        graph.initializer.push(copy);
        site.node.input[1] = copy.name!;
        t = copy;
      }
      setWeightValues(t, w);
      t0 = tick('to bytes', t0);
      if (sink) writing = quiet(sink(t)); // one write in flight: the sink appends in order
      changed.push(t);
    }
    const t0 = performance.now();
    await writing;
    tick('write (waited)', t0);
  } finally {
    await next?.catch(() => {});
    await writing.catch(() => {});
    for (const fh of files.values()) await fh.then((h) => h.close(), () => {});
  }
  return { changed, reports };
}
