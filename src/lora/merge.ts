/**
 * Merging LoRA deltas into the weights of an exported graph:
 *   W ← W + Σ_i scale_i · (alpha_i / rank_i) · (up_i · down_i)
 * in float32, LoRAs in the order given, as diffusers 0.27.2 fuses them
 * (LoRACompatibleLinear/Conv._fuse_lora: (up · alpha/rank) @ down, then · scale, then + W).
 * Convolution LoRAs multiply up [out, r] by down [r, in·kh·kw] and reshape to [out, in, kh, kw];
 * MatMul weights are stored transposed ([in, out]) so the delta is added transposed. A float16
 * weight is widened exactly, merged in float32 and rounded back to float16 (nearest even).
 * A LoRA of scale 0 changes nothing: the weights stay bit for bit the base model's.
 *
 * The products run on onnxruntime (addScaledProduct). The model is one loaded with its external data left lazy (src/onnx/model-io.ts): each weight
 * a LoRA touches is read on its own and becomes an inline tensor; the others are never read.
 */
import ort from 'onnxruntime-node';
import { UsageError } from '../errors.js';
import { valueInfo } from '../onnx/builder.js';
import { encodeModel } from '../onnx/proto.js';
import { readTensorBytes, setExternalSource } from '../onnx/model-io.js';
import { bytesOf, dataTypeName, float32ToFloat16, tensorFloats } from '../onnx/tensor.js';
import { DataType, type GraphProto, type ModelProto, type TensorProto, type ValueInfoProto } from '../onnx/types.js';
import { uniqueName } from '../onnx/graph.js';
import { parseLoraKeys, type LoraModule, type LoraTarget, type ParsedLora } from './keys.js';
import { mapLoraModules, requireMostMatched, WeightSites, type LoraMapping, type WeightLayout, type WeightSite } from './map.js';
import { SafetensorsFile } from './safetensors.js';

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
 * The product kernel: Y = W + (A @ B) · s in float32 for any [m, k] @ [k, n], run by onnxruntime
 * (MatMul, Mul, Add — the order diffusers' _fuse_lora computes in) on a small session made once
 * per process. A LoRA touching an SD 1.5 UNet's attention, feed-forward and ResNet convolutions
 * is about 10¹⁰ multiply-adds at rank 16, which onnxruntime's GEMM does in seconds.
 */
let kernel: Promise<ort.InferenceSession> | undefined;

function kernelModel(): ModelProto {
  const f = (name: string, dims: (number | string)[]): ValueInfoProto => valueInfo(name, DataType.FLOAT, dims);
  return {
    irVersion: 8,
    opsetImport: [{ domain: '', version: 14 }],
    graph: {
      name: 'lora_merge',
      node: [
        { name: 'product', opType: 'MatMul', input: ['A', 'B'], output: ['AB'], attribute: [] },
        { name: 'scaled', opType: 'Mul', input: ['AB', 's'], output: ['sAB'], attribute: [] },
        { name: 'merged', opType: 'Add', input: ['W', 'sAB'], output: ['Y'], attribute: [] },
      ],
      initializer: [],
      input: [f('W', ['m', 'n']), f('A', ['m', 'k']), f('B', ['k', 'n']), f('s', [])],
      output: [f('Y', ['m', 'n'])],
      valueInfo: [],
    },
  };
}

/** w + (a @ b) · scale, float32, with a [m, k] and b [k, n]. */
export async function addScaledProduct(w: Float32Array, a: Float32Array, b: Float32Array, m: number, k: number, n: number, scale: number): Promise<Float32Array> {
  kernel ??= ort.InferenceSession.create(encodeModel(kernelModel()), { graphOptimizationLevel: 'disabled' });
  const s = await kernel;
  const out = await s.run({
    W: new ort.Tensor('float32', w, [m, n]),
    A: new ort.Tensor('float32', a, [m, k]),
    B: new ort.Tensor('float32', b, [k, n]),
    s: new ort.Tensor('float32', Float32Array.of(scale), []),
  });
  return out['Y']!.data as Float32Array;
}

/** The transpose of a row-major [rows, cols] matrix. */
function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = x[r * cols + c]!;
  return t;
}

/**
 * W + scale · ((up · ratio) @ down) with W in its graph layout: [out, inFlat] (Gemm transB,
 * Conv reshaped) or [inFlat, out] (MatMul), where the product is taken transposed.
 */
export async function mergeModule(w: Float32Array, layout: WeightLayout, up: Float32Array, down: Float32Array, out: number, rank: number, inFlat: number, ratio: number, scale: number): Promise<Float32Array> {
  const upS = new Float32Array(up.length);
  for (let i = 0; i < up.length; i++) upS[i] = up[i]! * ratio;
  if (layout === 'in_out') return addScaledProduct(w, transpose(down, rank, inFlat), transpose(upS, out, rank), inFlat, rank, out, scale);
  return addScaledProduct(w, upS, down, out, rank, inFlat, scale);
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
export function mapLoras(graph: GraphProto, apps: readonly LoraApplication[], targets: readonly LoraTarget[], what: string): LoraMapping[] {
  const sites = new WeightSites(graph);
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
): Promise<MergeResult> {
  const graph = model.graph;
  if (graph === undefined) throw new UsageError(`${what} has no graph`);
  // every LoRA is mapped (and so checked) before any weight is read
  const mappings = mapLoras(graph, apps, targets, what);
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
  // one weight at a time: read, merge every module, hand over (memory: one weight)
  const changed: TensorProto[] = [];
  for (const { site, mods } of work.values()) {
    let w = await weightValues(site.initializer);
    for (const { lora, m, scale } of mods) {
      const inFlat = m.inShape.reduce((a, b) => a * b, 1);
      const up = await lora.file.readFloats(m.up);
      const down = await lora.file.readFloats(m.down);
      for (const x of [up, down]) {
        for (const v of x) if (!Number.isFinite(v)) throw new UsageError(`${lora.path}: module ${m.path} has non-finite weights`);
      }
      w = await mergeModule(w, site.layout, up, down, m.out, m.rank, inFlat, await moduleRatio(lora, m), scale);
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
    if (sink) await sink(t);
    changed.push(t);
  }
  return { changed, reports };
}
