/**
 * The CLIP text model's final layer norm, recovered from the exported graph, so that clip skip
 * can normalise an intermediate hidden state the way A1111 / diffusers do
 * (`final_layer_norm(hidden_states[-N])`). Only needed — and only read — when the export has
 * per-layer `hidden_states.K` outputs: exported so, or added by sdgen's clip-skip rewrite
 * (src/optimize/clip-skip.ts, which also finds the encoder's last layer here: the norm's input).
 *
 * Recognised: a `LayerNormalization` node producing `last_hidden_state` (opset ≥ 17), or the
 * decomposition torch.onnx.export writes at lower opsets:
 * Add(Mul(Div(Sub(x, ReduceMean(x)), Sqrt(Add(ReduceMean(Pow(·, 2)), eps))), weight), bias).
 */
import { loadModel } from '../onnx/model-io.js';
import { tensorFloats, tensorValues } from '../onnx/tensor.js';
import type { GraphProto, NodeProto, TensorProto } from '../onnx/types.js';

export interface LayerNormParams {
  weight: Float32Array;
  bias: Float32Array;
  epsilon: number;
}

/** Layer norm over the last axis of [rows, dim] data, float32 results (new array). */
export function layerNorm(x: Float32Array, dim: number, p: LayerNormParams): Float32Array {
  const out = new Float32Array(x.length);
  const rows = x.length / dim;
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let mean = 0;
    for (let j = 0; j < dim; j++) mean += x[o + j]!;
    mean /= dim;
    let v = 0;
    for (let j = 0; j < dim; j++) {
      const d = x[o + j]! - mean;
      v += d * d;
    }
    v /= dim;
    const inv = 1 / Math.sqrt(v + p.epsilon);
    for (let j = 0; j < dim; j++) out[o + j] = (x[o + j]! - mean) * inv * p.weight[j]! + p.bias[j]!;
  }
  return out;
}

function scalarOf(t: TensorProto): number {
  const v = tensorValues(t);
  const x = v[0];
  return typeof x === 'bigint' ? Number(x) : Number(x);
}

/** A final layer norm found in a graph: its parameters and the tensor it normalizes. */
export interface FinalLayerNorm {
  params: LayerNormParams;
  /** the normalized tensor: the last encoder layer's output (hidden_states[-1]) */
  input: string;
}

/**
 * Find the final layer norm (the node pattern producing `outputName`) in a text-encoder graph:
 * its parameters and its input; null if not recognised.
 */
export function finalLayerNormNode(graph: GraphProto, outputName = 'last_hidden_state'): FinalLayerNorm | null {
  const producer = new Map<string, NodeProto>();
  for (const n of graph.node) for (const o of n.output) producer.set(o, n);
  const inits = new Map<string, TensorProto>();
  for (const t of graph.initializer) if (t.name) inits.set(t.name, t);
  const constant = (name: string): TensorProto | null => {
    const i = inits.get(name);
    if (i) return i;
    const n = producer.get(name);
    if (n?.opType === 'Constant') {
      const a = n.attribute.find((x) => x.name === 'value');
      if (a?.t) return a.t;
      const f = n.attribute.find((x) => x.name === 'value_float');
      if (f?.f !== undefined) return { dims: [], dataType: 1, floatData: [f.f] };
    }
    return null;
  };
  const last = producer.get(outputName);
  if (!last) return null;
  if (last.opType === 'LayerNormalization') {
    const w = constant(last.input[1] ?? '');
    const b = last.input[2] ? constant(last.input[2]) : null;
    if (!w || !last.input[0]) return null;
    const eps = last.attribute.find((a) => a.name === 'epsilon')?.f ?? 1e-5;
    const weight = tensorFloats(w);
    return { params: { weight, bias: b ? tensorFloats(b) : new Float32Array(weight.length), epsilon: eps }, input: last.input[0] };
  }
  // Decomposed form.
  if (last.opType !== 'Add') return null;
  const biasT = constant(last.input[1]!) ?? constant(last.input[0]!);
  const mul = producer.get(constant(last.input[1]!) ? last.input[0]! : last.input[1]!);
  if (!biasT || mul?.opType !== 'Mul') return null;
  const weightT = constant(mul.input[1]!) ?? constant(mul.input[0]!);
  const div = producer.get(constant(mul.input[1]!) ? mul.input[0]! : mul.input[1]!);
  if (!weightT || div?.opType !== 'Div') return null;
  const sqrt = producer.get(div.input[1]!);
  if (sqrt?.opType !== 'Sqrt') return null;
  const addEps = producer.get(sqrt.input[0]!);
  if (addEps?.opType !== 'Add') return null;
  const epsT = constant(addEps.input[1]!) ?? constant(addEps.input[0]!);
  if (!epsT) return null;
  // Sub(x, ReduceMean(x)): x is the normalized tensor
  const sub = producer.get(div.input[0]!);
  if (sub?.opType !== 'Sub' || !sub.input[0]) return null;
  const mean = producer.get(sub.input[1]!);
  if (mean?.opType !== 'ReduceMean' || mean.input[0] !== sub.input[0]) return null;
  return { params: { weight: tensorFloats(weightT), bias: tensorFloats(biasT), epsilon: scalarOf(epsT) }, input: sub.input[0] };
}

/** Find the final layer norm's parameters in a text-encoder graph (null if not recognised). */
export function finalLayerNormOf(graph: GraphProto, outputName = 'last_hidden_state'): LayerNormParams | null {
  return finalLayerNormNode(graph, outputName)?.params ?? null;
}

/**
 * For a text encoder with per-layer hidden-state outputs, a function applying its final layer
 * norm; null when the export has no such outputs (clip skip unavailable) or the norm is not found.
 */
export async function findFinalLayerNorm(
  modelPath: string,
  info: { outputs: readonly { name: string }[] },
): Promise<((hidden: Float32Array, dim: number) => Float32Array) | null> {
  if (!info.outputs.some((o) => /^hidden_states[._]\d+$/.test(o.name))) return null;
  const model = await loadModel(modelPath);
  const p = model.graph ? finalLayerNormOf(model.graph, info.outputs.find((o) => o.name === 'last_hidden_state')?.name) : null;
  if (!p) return null;
  return (hidden, dim) => layerNorm(hidden, dim, p);
}
