/**
 * The machine's float32 MatMul rate, measured with onnxruntime itself: one square MatMul
 * (activation × constant weight, like the UNet's projections) timed after a warm-up.
 */
import ort from 'onnxruntime-node';
import { encodeModel } from '../onnx/proto.js';
import { floatTensor } from '../onnx/tensor.js';
import type { ModelProto } from '../onnx/types.js';

export interface MatMulRate {
  /** matrix side */
  n: number;
  /** FLOPs of one call (2·n³) */
  flops: number;
  /** median over the timed calls, GFLOP/s */
  gflops: number;
  /** best call, GFLOP/s */
  bestGflops: number;
  calls: number;
  threads: number;
}

/** A model computing y = x · W for x [n, n] and a constant W [n, n]. */
export function matmulModel(n: number): ModelProto {
  const w = new Float32Array(n * n);
  for (let i = 0; i < w.length; i++) w[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
  const vi = (name: string) => ({
    name,
    type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: n }, { dimValue: n }] } } },
  });
  return {
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    producerName: 'sdgen-bench',
    graph: {
      name: 'matmul',
      node: [{ name: 'mm', opType: 'MatMul', input: ['x', 'w'], output: ['y'], attribute: [] }],
      initializer: [floatTensor('w', w, [n, n])],
      input: [vi('x')],
      output: [vi('y')],
      valueInfo: [],
    },
  };
}

export async function measureMatMulRate(opts: { n?: number; calls?: number; threads: number }): Promise<MatMulRate> {
  const n = opts.n ?? 2048;
  const calls = opts.calls ?? 8;
  const session = await ort.InferenceSession.create(encodeModel(matmulModel(n)), {
    intraOpNumThreads: opts.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
  });
  try {
    const x = new Float32Array(n * n);
    for (let i = 0; i < x.length; i++) x[i] = ((i * 40503) % 997) / 997 - 0.5;
    const feeds = { x: new ort.Tensor('float32', x, [n, n]) };
    await session.run(feeds);
    const ms: number[] = [];
    for (let i = 0; i < calls; i++) {
      const t0 = performance.now();
      await session.run(feeds);
      ms.push(performance.now() - t0);
    }
    ms.sort((a, b) => a - b);
    const flops = 2 * n * n * n;
    const med = ms[Math.floor(ms.length / 2)]!;
    return { n, flops, gflops: flops / (med * 1e6), bestGflops: flops / (ms[0]! * 1e6), calls, threads: opts.threads };
  } finally {
    await session.release();
  }
}
