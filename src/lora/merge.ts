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
 * The model is one loaded with its external data left lazy (src/onnx/model-io.ts): each weight
 * a LoRA touches is read on its own and becomes an inline tensor; the others are never read.
 */
import { UsageError } from '../errors.js';
import { readTensorBytes, setExternalSource } from '../onnx/model-io.js';
import { bytesOf, dataTypeName, float32ToFloat16, tensorFloats } from '../onnx/tensor.js';
import { DataType, type GraphProto, type ModelProto, type TensorProto } from '../onnx/types.js';
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
 * scale · ((up · ratio) @ down) as float32 [out, inFlat], each stage rounded to float32 as
 * diffusers' float32 tensors are (the dot products accumulate in double). Pure.
 */
export function loraDelta(up: Float32Array, down: Float32Array, out: number, rank: number, inFlat: number, ratio: number, scale: number): Float32Array {
  const upS = new Float32Array(out * rank);
  for (let i = 0; i < upS.length; i++) upS[i] = up[i]! * ratio;
  const delta = new Float32Array(out * inFlat);
  const row = new Float64Array(inFlat);
  for (let o = 0; o < out; o++) {
    row.fill(0);
    for (let r = 0; r < rank; r++) {
      const u = upS[o * rank + r]!;
      if (u === 0) continue;
      const base = r * inFlat;
      for (let i = 0; i < inFlat; i++) row[i]! += u * down[base + i]!;
    }
    for (let i = 0; i < inFlat; i++) delta[o * inFlat + i] = Math.fround(row[i]!) * scale;
  }
  return delta;
}

/** w += delta, with w in the weight's own layout (delta is [out, inFlat]). Pure. */
export function addDelta(w: Float32Array, delta: Float32Array, layout: WeightLayout, out: number, inFlat: number): void {
  if (layout === 'in_out') {
    for (let o = 0; o < out; o++) for (let i = 0; i < inFlat; i++) w[i * out + o] = w[i * out + o]! + delta[o * inFlat + i]!;
  } else {
    for (let k = 0; k < delta.length; k++) w[k] = w[k]! + delta[k]!;
  }
}

/** A float32/float16 weight's values (a copy), inline or external. */
export async function weightValues(t: TensorProto): Promise<Float32Array> {
  if (t.dataType !== DataType.FLOAT && t.dataType !== DataType.FLOAT16) {
    throw new UsageError(`weight ${t.name ?? ''} is ${dataTypeName(t.dataType)}; LoRAs merge into float32 and float16 weights only`);
  }
  const bytes = await readTensorBytes(t);
  const v = tensorFloats(bytes === undefined ? t : { name: t.name, dims: t.dims, dataType: t.dataType, rawData: bytes });
  return t.dataType === DataType.FLOAT ? Float32Array.from(v) : v; // float16 already widened into a new array
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
export async function mergeLoras(model: ModelProto, apps: readonly LoraApplication[], targets: readonly LoraTarget[], what: string): Promise<MergeResult> {
  const graph = model.graph;
  if (graph === undefined) throw new UsageError(`${what} has no graph`);
  const mappings = mapLoras(graph, apps, targets, what);
  const work = new Map<TensorProto, { site: WeightSite; w: Float32Array }>();
  const reports: LoraMergeReport[] = [];
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
        entry = { site, w: await weightValues(site.initializer) };
        work.set(site.initializer, entry);
      }
      const inFlat = m.inShape.reduce((a, b) => a * b, 1);
      const up = await lora.file.readFloats(m.up);
      const down = await lora.file.readFloats(m.down);
      const delta = loraDelta(up, down, m.out, m.rank, inFlat, await moduleRatio(lora, m), scale);
      for (const v of delta) {
        if (!Number.isFinite(v)) throw new UsageError(`${lora.path}: module ${m.path} has non-finite weights`);
      }
      addDelta(entry.w, delta, site.layout, m.out, inFlat);
    }
  }
  const changed: TensorProto[] = [];
  for (const { site, w } of work.values()) {
    let t = site.initializer;
    if (site.shared) {
      // the node gets its own copy; the other consumers keep the base weight
      const copy: TensorProto = { name: uniqueName(graph, `${t.name ?? 'weight'}_lora`), dims: [...t.dims], dataType: t.dataType };
      graph.initializer.push(copy);
      site.node.input[1] = copy.name!;
      t = copy;
    }
    setWeightValues(t, w);
    changed.push(t);
  }
  return { changed, reports };
}
