/**
 * The op patterns `torch.onnx.export` emits for the modules Stable Diffusion is made of, written
 * against a SynthContext: Conv2d, Linear (MatMul on a transposed weight, or Gemm on 2-D input),
 * GroupNorm (Reshape → InstanceNormalization → Reshape → Mul → Add), LayerNorm (decomposed at
 * opset < 17, `LayerNormalization` from 17), SiLU (Sigmoid·x), GELU (Erf form), and the shape
 * arithmetic torch records around `view`/`reshape` calls. Pure logic, no I/O.
 */
import { DataType } from '../onnx/types.js';
import { constTensor, float, int, ints, str } from '../onnx/builder.js';
import type { SynthContext } from './context.js';

export const ONE: { kind: 'fill'; value: number } = { kind: 'fill', value: 1 };
export const ZERO: { kind: 'fill'; value: number } = { kind: 'fill', value: 0 };

export function fanInUniform(fanIn: number): { kind: 'uniform'; bound: number } {
  return { kind: 'uniform', bound: 1 / Math.sqrt(fanIn) };
}

/** `dim`-th entry of `x`'s shape as an int64 scalar (Shape → Constant → Gather). */
export function dimOf(c: SynthContext, x: string, dim: number): string {
  const s = c.b.op('Shape', [x]);
  const k = c.b.constInt64(dim);
  return c.b.op('Gather', [s, k], { axis: int(0) });
}

/** Unsqueeze of a shape scalar to a 1-element vector, with torch's anonymous axes constant. */
export function unsq0(c: SynthContext, scalar: string): string {
  const axes = c.b.anonConstant(constTensor(DataType.INT64, [1], [0]), 'Unsqueeze');
  return c.b.op('Unsqueeze', [scalar, axes]);
}

/** Unsqueeze with a scoped axes constant (as for `x[:, :, None]` indexing). */
export function unsqueezeScoped(c: SynthContext, x: string, axis: number): string {
  const axes = c.b.constInt64([axis]);
  return c.b.op('Unsqueeze', [x, axes]);
}

export function reshape(c: SynthContext, x: string, shape: string): string {
  return c.b.op('Reshape', [x, shape], { allowzero: int(0) });
}

export function transpose(c: SynthContext, x: string, perm: number[]): string {
  return c.b.op('Transpose', [x], { perm: ints(perm) });
}

/** 2-D convolution module (weight [out, in, k, k] + bias) in scope `name`. */
export function conv2d(
  c: SynthContext,
  name: string,
  x: string,
  cin: number,
  cout: number,
  k: number,
  stride = 1,
  /** symmetric padding, or ONNX's [top, left, bottom, right] */
  pad: number | readonly [number, number, number, number] = k === 3 ? 1 : 0,
  outputName?: string,
): string {
  return c.mod(name, () => {
    const fan = cin * k * k;
    const w = c.param('weight', [cout, cin, k, k], fanInUniform(fan));
    const bias = c.param('bias', [cout], fanInUniform(fan));
    return c.b.op(
      'Conv',
      [x, w, bias],
      {
        dilations: ints([1, 1]),
        group: int(1),
        kernel_shape: ints([k, k]),
        pads: ints(typeof pad === 'number' ? [pad, pad, pad, pad] : [...pad]),
        strides: ints([stride, stride]),
      },
      outputName ? { outputs: [outputName] } : undefined,
    );
  });
}

/** Linear on ≥3-D input: MatMul with the transposed weight (`onnx::MatMul_n`) then Add(bias, ·). */
export function linear(c: SynthContext, name: string, x: string, fin: number, fout: number, bias = true): string {
  return c.mod(name, () => {
    const w = c.derivedParam('MatMul', [fin, fout], fanInUniform(fin), 'weight');
    const mm = c.b.op('MatMul', [x, w]);
    if (!bias) return mm;
    const b = c.param('bias', [fout], fanInUniform(fin));
    return c.b.op('Add', [b, mm]);
  });
}

/** Linear on 2-D input: a single Gemm with transB=1 on the named weight. */
export function linearGemm(c: SynthContext, name: string, x: string, fin: number, fout: number): string {
  return c.mod(name, () => {
    const w = c.param('weight', [fout, fin], fanInUniform(fin));
    const b = c.param('bias', [fout], fanInUniform(fin));
    return c.b.op('Gemm', [x, w, b], { alpha: float(1), beta: float(1), transB: int(1) });
  });
}

/** SiLU as torch exports it: Sigmoid then Mul(x, sigmoid) in the activation module's scope. */
export function silu(c: SynthContext, scopeName: string, x: string): string {
  return c.mod(
    scopeName,
    () => {
      const s = c.b.op('Sigmoid', [x]);
      return c.b.op('Mul', [x, s]);
    },
    null,
  );
}

/** Exact GELU in the current scope: x·0.5·(1 + erf(x/√2)). */
export function geluErf(c: SynthContext, x: string): string {
  const sqrt2 = c.b.constScalar(Math.SQRT2, c.ft);
  const d = c.b.op('Div', [x, sqrt2]);
  const e = c.b.op('Erf', [d]);
  const one = c.b.constScalar(1, c.ft);
  const a = c.b.op('Add', [e, one]);
  const m = c.b.op('Mul', [x, a]);
  const half = c.b.constScalar(0.5, c.ft);
  return c.b.op('Mul', [m, half]);
}

/**
 * GroupNorm (module scope `name`): Reshape to [N, G, -1] → InstanceNormalization (unit scale,
 * zero bias constants) → Reshape back → Mul/Add with the affine parameters, which torch exports
 * as derived initializers of shape [C, 1, 1] (or [C, 1] for 3-D input).
 */
export function groupNorm(
  c: SynthContext,
  name: string,
  x: string,
  channels: number,
  groups: number,
  eps: number,
  rank = 4,
  outputName?: string,
): string {
  return c.mod(name, () => {
    const shape = c.b.constInt64([0, groups, -1]);
    const r = reshape(c, x, shape);
    const ones = c.b.constant(constTensor(c.ft, [groups], new Array<number>(groups).fill(1)));
    const zeros = c.b.constant(constTensor(c.ft, [groups], new Array<number>(groups).fill(0)));
    const inorm = c.b.op('InstanceNormalization', [r, ones, zeros], { epsilon: float(eps) });
    const s = c.b.op('Shape', [x]);
    const back = reshape(c, inorm, s);
    const affineDims = rank === 4 ? [channels, 1, 1] : [channels, 1];
    const w = c.derivedParam('Mul', affineDims, ONE, 'weight');
    const m = c.b.op('Mul', [back, w]);
    const b = c.derivedParam('Add', affineDims, ZERO, 'bias');
    return c.b.op('Add', [m, b], undefined, outputName ? { outputs: [outputName] } : undefined);
  });
}

/**
 * LayerNorm over the last axis (module scope `name`). Opset ≥ 17: one LayerNormalization node;
 * before that torch's decomposition ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add.
 */
export function layerNorm(
  c: SynthContext,
  name: string,
  x: string,
  channels: number,
  eps: number,
  outputName?: string,
): string {
  return c.mod(name, () => {
    const outOpt = outputName ? { outputs: [outputName] } : undefined;
    if (c.opset >= 17) {
      const w = c.param('weight', [channels], ONE);
      const b = c.param('bias', [channels], ZERO);
      return c.b.op('LayerNormalization', [x, w, b], { axis: int(-1), epsilon: float(eps) }, outOpt);
    }
    const mean = c.b.op('ReduceMean', [x], { axes: ints([-1]) });
    const sub = c.b.op('Sub', [x, mean]);
    const two = c.b.constScalar(2, c.ft);
    const pow = c.b.op('Pow', [sub, two]);
    const variance = c.b.op('ReduceMean', [pow], { axes: ints([-1]) });
    const e = c.b.constScalar(eps, c.ft);
    const add = c.b.op('Add', [variance, e]);
    const sq = c.b.op('Sqrt', [add]);
    const div = c.b.op('Div', [sub, sq]);
    const w = c.param('weight', [channels], ONE);
    const mul = c.b.op('Mul', [div, w]);
    const b = c.param('bias', [channels], ZERO);
    return c.b.op('Add', [mul, b], undefined, outOpt);
  });
}

/** Nearest ×2 upsampling as exported by F.interpolate(scale_factor=2): Resize with scales. */
export function resizeNearest2x(c: SynthContext, x: string): string {
  const scales = c.b.constant(constTensor(DataType.FLOAT, [4], [1, 1, 2, 2]));
  return c.b.op('Resize', [x, '', scales], {
    coordinate_transformation_mode: str('asymmetric'),
    cubic_coeff_a: float(-0.75),
    mode: str('nearest'),
    nearest_mode: str('floor'),
  });
}

/** int64 division of a shape scalar followed by the two Casts torch records for `//`-like ops. */
export function divCastCast(c: SynthContext, x: string, by: number): string {
  const k = c.b.constInt64(by);
  const d = c.b.op('Div', [x, k]);
  const c1 = c.b.op('Cast', [d], { to: int(DataType.INT64) });
  return c.b.op('Cast', [c1], { to: int(DataType.INT64) });
}

/** A 1-element int64 constant vector in scope. */
export function constVec(c: SynthContext, v: number): string {
  return c.b.constInt64([v]);
}
