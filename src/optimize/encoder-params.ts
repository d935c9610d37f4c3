/**
 * A VAE encoder that outputs its distribution's parameters instead of a sample.
 *
 * diffusers' old ONNX conversion script exported `vae.encode(x).latent_dist.sample()`: the graph
 * ends in diffusers' DiagonalGaussianDistribution,
 *
 *   moments = quant_conv(encoder(x))                 [B, 2C, h, w]
 *   mean, logvar = chunk(moments, 2, dim=1)          two Slice nodes of `moments`
 *   std = exp(0.5 · clamp(logvar, −30, 20))          (Clip →) Mul/Div → Exp
 *   latent_sample = mean + std · RandomNormalLike()  (Cast →) Mul → Add
 *
 * so every run draws different noise inside onnxruntime and no seed reproduces an image.
 * Optimum's exports output `moments` itself as `latent_parameters` (mean|logvar concatenated on
 * channels), and sdgen samples from them with the image's generator, as diffusers does. This
 * rewrite turns the first kind into the second: it finds the RandomNormalLike node, checks that
 * what it feeds is `mean + exp(½·logvar)·noise` with mean and logvar two halves of one tensor,
 * and makes that tensor the graph's only output, `latent_parameters`; the sampling nodes go.
 * The logvar clamp is left to the sampler (sdgen's encode stage clamps like diffusers).
 * Pure graph logic; getEncoderParamsModel caches the result on disk like sdgen's other rewrites.
 */
import { GraphIndex, removeUnused, uniqueName } from '../onnx/graph.js';
import { getAttr } from '../onnx/attributes.js';
import { tensorFloats, tensorInts } from '../onnx/tensor.js';
import type { Dimension, GraphProto, ModelProto, NodeProto, TensorProto } from '../onnx/types.js';
import { getRewrittenModel, type RewriteCount } from './fused-model.js';

/** The output name of Optimum's encoder exports, which this rewrite produces. */
export const LATENT_PARAMETERS = 'latent_parameters';

export interface EncoderParamsResult extends RewriteCount {
  /** the tensor (mean|logvar) now output as `latent_parameters`, when rewritten */
  moments?: string;
}

/** A Constant node's or initializer's tensor, when `name` is one. */
function constantTensor(idx: GraphIndex, name: string): TensorProto | undefined {
  const init = idx.initializer(name);
  if (init) return init;
  const p = idx.producer(name);
  if (p?.opType === 'Constant') return getAttr(p, 'value')?.t;
  return undefined;
}

/** A scalar float constant's value (one element), else undefined. */
function scalarFloat(idx: GraphIndex, name: string): number | undefined {
  const t = constantTensor(idx, name);
  if (!t) return undefined;
  try {
    const v = tensorFloats(t);
    return v.length === 1 ? v[0] : undefined;
  } catch {
    return undefined;
  }
}

/** A scalar integer constant's value (one element), else undefined. */
function scalarInt(idx: GraphIndex, name: string): number | undefined {
  const t = constantTensor(idx, name);
  if (!t) return undefined;
  try {
    const v = tensorInts(t);
    return v.length === 1 ? v[0] : undefined;
  } catch {
    return undefined;
  }
}

/** Skip Cast and Identity nodes upward. */
function through(idx: GraphIndex, name: string): string {
  let cur = name;
  for (let p = idx.producer(cur); p && (p.opType === 'Cast' || p.opType === 'Identity'); p = idx.producer(cur)) cur = p.input[0]!;
  return cur;
}

/** The only consumer of `name`, skipping Cast/Identity nodes downward; undefined when not exactly one. */
function soleConsumer(idx: GraphIndex, name: string): { node: NodeProto; input: string } | undefined {
  let cur = name;
  for (;;) {
    const users = idx.consumers(cur);
    if (users.length !== 1) return undefined;
    const n = users[0]!;
    if (n.opType === 'Cast' || n.opType === 'Identity') {
      cur = n.output[0]!;
      continue;
    }
    return { node: n, input: cur };
  }
}

/** The other input of a two-input node. */
function otherInput(n: NodeProto, one: string): string | undefined {
  if (n.input.length !== 2) return undefined;
  if (n.input[0] === one) return n.input[1];
  if (n.input[1] === one) return n.input[0];
  return undefined;
}

/** A Slice's (data, starts) when `name` is a Slice output. */
function sliceOf(idx: GraphIndex, name: string): { data: string; start: number | undefined; node: NodeProto } | undefined {
  const n = idx.producer(through(idx, name));
  if (n?.opType !== 'Slice') return undefined;
  // opset ≥ 10: starts is an input; opset 1: an attribute
  const start = n.input.length > 1 ? scalarInt(idx, n.input[1]!) : (getAttr(n, 'starts')?.ints?.length === 1 ? Number(getAttr(n, 'starts')!.ints![0]) : undefined);
  return { data: n.input[0]!, start, node: n };
}

/**
 * `std` = exp(½·logvar) (logvar optionally clipped): the Slice that logvar comes from, or why not.
 */
function logvarSlice(idx: GraphIndex, std: string): ReturnType<typeof sliceOf> | string {
  const exp = idx.producer(through(idx, std));
  if (exp?.opType !== 'Exp') return `the noise is scaled by ${exp ? exp.opType : 'a graph input'}, not by exp(½·logvar)`;
  const half = idx.producer(through(idx, exp.input[0]!));
  let logvar: string | undefined;
  if (half?.opType === 'Mul') {
    for (const [a, b] of [[0, 1], [1, 0]] as const) if (scalarFloat(idx, half.input[a]!) === 0.5) logvar = half.input[b];
  } else if (half?.opType === 'Div' && scalarFloat(idx, half.input[1]!) === 2) {
    logvar = half.input[0];
  }
  if (logvar === undefined) return 'the exponent is not ½·logvar';
  const clip = idx.producer(through(idx, logvar));
  if (clip?.opType === 'Clip') logvar = clip.input[0]!;
  const s = sliceOf(idx, logvar);
  return s ?? 'logvar is not a slice of the encoder output';
}

/**
 * Rewrites an encoder graph that samples with RandomNormalLike into one whose only output is
 * `latent_parameters` (mean|logvar). count 1 when rewritten; else count 0 and the reason in
 * `skipped` (also when the graph already outputs latent_parameters).
 */
export function encoderParamsRewrite(model: ModelProto): EncoderParamsResult {
  const g = model.graph as GraphProto | undefined;
  if (!g) return { count: 0, skipped: ['the model has no graph'] };
  if (g.output.some((o) => o.name === LATENT_PARAMETERS)) {
    return { count: 0, skipped: [`the encoder already outputs ${LATENT_PARAMETERS}`], info: { params: true } };
  }
  const idx = new GraphIndex(g);
  const randoms = [...idx.nodesByOp('RandomNormalLike'), ...idx.nodesByOp('RandomNormal')];
  if (randoms.length === 0) return { count: 0, skipped: ['no RandomNormalLike node: the encoder does not sample inside the graph'] };
  if (randoms.length > 1) return { count: 0, skipped: [`${randoms.length} random nodes; expected the one of the latent sample`] };
  const rnd = randoms[0]!;
  const skip = (why: string): EncoderParamsResult => ({ count: 0, skipped: [`not a diffusers latent sample (${why})`] });

  // noise · std
  const mulUse = soleConsumer(idx, rnd.output[0]!);
  if (mulUse?.node.opType !== 'Mul') return skip('the noise is not multiplied by a standard deviation');
  const std = otherInput(mulUse.node, mulUse.input);
  if (std === undefined) return skip('the noise multiplication has an unexpected form');
  const lv = logvarSlice(idx, std);
  if (typeof lv === 'string' || lv === undefined) return skip(lv ?? 'logvar is not a slice of the encoder output');

  // mean + noise · std, the graph's output
  const addUse = soleConsumer(idx, mulUse.node.output[0]!);
  if (addUse?.node.opType !== 'Add') return skip('the scaled noise is not added to a mean');
  const meanName = otherInput(addUse.node, addUse.input);
  if (meanName === undefined) return skip('the addition has an unexpected form');
  const mean = sliceOf(idx, meanName);
  if (!mean) return skip('the mean is not a slice of the encoder output');
  if (mean.data !== lv.data) return skip('mean and logvar are slices of different tensors');
  if (mean.node === lv.node) return skip('mean and logvar are the same slice');
  // diffusers' chunk(2, dim=1): mean is the first half. A start that is known must say so.
  if (mean.start !== undefined && mean.start !== 0) return skip('the mean is not the first half of the encoder output');
  const outName = addUse.node.output[0]!;
  const outIndex = g.output.findIndex((o) => o.name === outName);
  if (outIndex < 0) return skip('the sample is not a graph output');
  if (g.output.length !== 1) return skip(`${g.output.length} graph outputs; expected the latent sample alone`);

  const moments = mean.data;
  // the new output: Identity(moments) named latent_parameters, typed like the old one with the channel count doubled
  if (idx.producer(LATENT_PARAMETERS) || idx.isGraphInput(LATENT_PARAMETERS)) return skip(`a tensor is already named ${LATENT_PARAMETERS}`);
  const old = g.output[outIndex]!;
  const dims: Dimension[] | undefined = old.type?.tensorType?.shape?.dim.map((d, i) =>
    i === 1 && d.dimValue !== undefined ? { dimValue: Number(d.dimValue) * 2 } : i === 1 ? { dimParam: 'channels' } : { ...d },
  );
  g.node.push({ opType: 'Identity', name: uniqueName(g, 'latent_parameters_identity'), input: [moments], output: [LATENT_PARAMETERS], attribute: [] });
  g.output[outIndex] = {
    name: LATENT_PARAMETERS,
    type: {
      tensorType: {
        ...(old.type?.tensorType?.elemType !== undefined ? { elemType: old.type.tensorType.elemType } : {}),
        ...(dims ? { shape: { dim: dims } } : {}),
      },
    },
  };
  removeUnused(g);
  return { count: 1, skipped: [], moments, info: { moments } };
}

export type EncoderParamsModel =
  /** the file outputs latent_parameters (as exported, or rewritten: `rewritten`) */
  | { params: true; path: string; rewritten: boolean }
  /** the file stays as it is (it samples inside the graph, or is of an unknown kind): why */
  | { params: false; path: string; reason: string };

/**
 * The encoder file sdgen should load for `modelPath`: the file itself when it outputs
 * latent_parameters, its rewritten variant (cached under `<cacheDir>/encoder-params/`, like
 * the answer for the other two kinds) when it samples inside the graph in diffusers' form, else
 * the file itself with the reason (the caller says once that its images are not reproducible
 * by seed).
 */
export async function getEncoderParamsModel(modelPath: string, cacheDir: string): Promise<EncoderParamsModel> {
  const r = await getRewrittenModel(modelPath, cacheDir, 'encoder-params', { v: 1 }, (m) => encoderParamsRewrite(m));
  if (r.rewritten) return { params: true, path: r.path, rewritten: true };
  if ((r.info as { params?: boolean } | undefined)?.params) return { params: true, path: modelPath, rewritten: false };
  return { params: false, path: modelPath, reason: r.skipped[0] ?? 'the encoder graph has an unknown form' };
}
