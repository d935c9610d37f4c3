/**
 * The machine's float32 MatMul and 3×3 convolution rates, measured with onnxruntime itself. MatMul: a chain of square
 * MatMuls (activation × constant weight, like the UNet's projections) timed after a warm-up.
 * The chain keeps the intermediate results inside onnxruntime, so copying the input in and the
 * output out of the session (tens of MB at n = 2048) is spread over `depth` MatMuls instead of
 * lowering the rate of one; the weights keep the activations at unit scale (no overflow, no
 * denormals).
 */
import ort from 'onnxruntime-node';
import { encodeModel } from '../onnx/proto.js';
import { floatTensor } from '../onnx/tensor.js';
import type { ModelProto } from '../onnx/types.js';

/** What a rate probe reports. */
export interface KernelRate {
  /** ops chained in one call */
  depth: number;
  /** FLOPs of one call */
  flops: number;
  /** median over the timed calls, GFLOP/s */
  gflops: number;
  /** best call, GFLOP/s */
  bestGflops: number;
  calls: number;
  threads: number;
}

export interface MatMulRate extends KernelRate {
  /** matrix side (one call: depth · 2·n³ FLOPs) */
  n: number;
}

/** A model computing y = x · W₁ · … · W_depth for x [n, n] and constant W [n, n]. */
export function matmulModel(n: number, depth = 1): ModelProto {
  const scale = Math.sqrt(12 / n); // uniform weights of variance 1/n: each product keeps x's scale
  const vi = (name: string) => ({
    name,
    type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: n }, { dimValue: n }] } } },
  });
  const node = [];
  const initializer = [];
  for (let k = 0; k < depth; k++) {
    const w = new Float32Array(n * n);
    for (let i = 0; i < w.length; i++) w[i] = ((((i + k * 7919) * 2654435761) % 1000) / 1000 - 0.5) * scale;
    initializer.push(floatTensor(`w${k}`, w, [n, n]));
    node.push({ name: `mm${k}`, opType: 'MatMul', input: [k === 0 ? 'x' : `h${k}`, `w${k}`], output: [k === depth - 1 ? 'y' : `h${k + 1}`], attribute: [] });
  }
  return {
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    producerName: 'sdgen-bench',
    graph: { name: 'matmul', node, initializer, input: [vi('x')], output: [vi('y')], valueInfo: [] },
  };
}

export interface ConvRate extends KernelRate {
  /** channels in and out (one call: depth · 2·B·C²·9·size² FLOPs) */
  channels: number;
  /** spatial side */
  size: number;
  batch: number;
}

/**
 * y = conv(…conv(x)) with `depth` 3×3, padding-1 convolutions of constant weights [K, C, 3, 3]
 * (K = `outChannels`, default C; a chain of more than one needs K = C).
 */
export function convModel(channels: number, size: number, batch: number, depth = 2, outChannels = channels): ModelProto {
  const c = channels;
  const k = outChannels;
  if (depth > 1 && k !== c) throw new Error('convModel: a chain of convolutions keeps its channel count');
  const scale = Math.sqrt(12 / (c * 9));
  const w = new Float32Array(k * c * 9);
  for (let i = 0; i < w.length; i++) w[i] = (((i * 2654435761) % 1000) / 1000 - 0.5) * scale;
  const vi = (name: string, ch: number) => ({ name, type: { tensorType: { elemType: 1, shape: { dim: [batch, ch, size, size].map((d) => ({ dimValue: d })) } } } });
  const node = [];
  for (let d = 0; d < depth; d++) {
    node.push({
      name: `conv${d}`, opType: 'Conv', input: [d === 0 ? 'x' : `h${d}`, 'w'], output: [d === depth - 1 ? 'y' : `h${d + 1}`],
      attribute: [{ name: 'pads', type: 7, ints: [1, 1, 1, 1] }],
    });
  }
  return {
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    producerName: 'sdgen-bench',
    graph: { name: 'conv', node, initializer: [floatTensor('w', w, [k, c, 3, 3])], input: [vi('x', c)], output: [vi('y', k)], valueInfo: [] },
  };
}

/** Median and best of `calls` timed runs after one warm-up (ms, sorted). */
async function timeCalls(model: ModelProto, x: Float32Array, dims: number[], calls: number, threads: number): Promise<number[]> {
  const session = await ort.InferenceSession.create(encodeModel(model), {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
  });
  try {
    const feeds = { x: new ort.Tensor('float32', x, dims) };
    await session.run(feeds);
    const ms: number[] = [];
    for (let i = 0; i < calls; i++) {
      const t0 = performance.now();
      await session.run(feeds);
      ms.push(performance.now() - t0);
    }
    return ms.sort((a, b) => a - b);
  } finally {
    await session.release();
  }
}

/** Median and best rate of sorted call times. */
function rateOf(flops: number, sortedMs: number[], depth: number, threads: number): KernelRate {
  const med = sortedMs[Math.floor(sortedMs.length / 2)]!;
  return { depth, flops, gflops: flops / (med * 1e6), bestGflops: flops / (sortedMs[0]! * 1e6), calls: sortedMs.length, threads };
}

const testInput = (n: number): Float32Array => {
  const x = new Float32Array(n);
  for (let i = 0; i < x.length; i++) x[i] = ((i * 40503) % 997) / 997 - 0.5;
  return x;
};

/**
 * The rate of onnxruntime's 3×3 convolution (its NCHWc kernels on x86), the op most of a UNet's
 * FLOPs run in: by default 320 channels at 64², batch 2 (an SD 1.5 full-resolution ResNet conv
 * at 512²).
 */
export async function measureConvRate(opts: { channels?: number; size?: number; batch?: number; depth?: number; calls?: number; threads: number }): Promise<ConvRate> {
  const channels = opts.channels ?? 320;
  const size = opts.size ?? 64;
  const batch = opts.batch ?? 2;
  const depth = opts.depth ?? 2;
  const calls = opts.calls ?? 6;
  const dims = [batch, channels, size, size];
  const ms = await timeCalls(convModel(channels, size, batch, depth), testInput(batch * channels * size * size), dims, calls, opts.threads);
  return { channels, size, batch, ...rateOf(depth * 2 * batch * channels * channels * 9 * size * size, ms, depth, opts.threads) };
}

export async function measureMatMulRate(opts: { n?: number; depth?: number; calls?: number; threads: number }): Promise<MatMulRate> {
  const n = opts.n ?? 2048;
  const depth = opts.depth ?? 4;
  const calls = opts.calls ?? 8;
  const ms = await timeCalls(matmulModel(n, depth), testInput(n * n), [n, n], calls, opts.threads);
  return { n, ...rateOf(depth * 2 * n * n * n, ms, depth, opts.threads) };
}
