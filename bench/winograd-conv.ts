/**
 * One 3×3 convolution (padding 1), direct vs its Winograd forms F(2,3) and F(4,3) as
 * src/optimize/winograd.ts writes them, in onnxruntime (level `all`, 2 threads): median of 5 calls
 * after a warm-up, and the largest difference from the direct output.
 *   node --import tsx bench/winograd-conv.ts NxCxKxH ...   (default: SD 1.5 UNet and VAE shapes)
 */
import ort from 'onnxruntime-node';
import { encodeModel } from '../src/onnx/proto.js';
import { floatTensor } from '../src/onnx/tensor.js';
import type { ModelProto } from '../src/onnx/types.js';
import { winogradConvs } from '../src/optimize/winograd.js';

function convModel(n: number, c: number, k: number, h: number): ModelProto {
  const w = new Float32Array(k * c * 9);
  const s = Math.sqrt(12 / (c * 9));
  for (let i = 0; i < w.length; i++) w[i] = ((((i * 2654435761) % 1000) / 1000) - 0.5) * s;
  const vi = (name: string, ch: number) => ({ name, type: { tensorType: { elemType: 1, shape: { dim: [n, ch, h, h].map((d) => ({ dimValue: d })) } } } });
  return {
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    producerName: 'sdgen-bench',
    graph: {
      name: 'conv',
      node: [{ name: 'conv', opType: 'Conv', domain: '', input: ['x', 'w'], output: ['y'], attribute: [{ name: 'pads', type: 7, ints: [1, 1, 1, 1] }] }],
      initializer: [floatTensor('w', w, [k, c, 3, 3])],
      input: [vi('x', c)],
      output: [vi('y', k)],
      valueInfo: [],
    },
  };
}

async function time(m: ModelProto, x: Float32Array, dims: number[]): Promise<{ ms: number; y: Float32Array }> {
  const s = await ort.InferenceSession.create(encodeModel(m), { intraOpNumThreads: 2, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  const feeds = { x: new ort.Tensor('float32', x, dims) };
  const y = (await s.run(feeds))['y']!.data as Float32Array;
  const ms: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    await s.run(feeds);
    ms.push(performance.now() - t);
  }
  await s.release();
  return { ms: ms.sort((a, b) => a - b)[2]!, y };
}

const shapes = process.argv.length > 2 ? process.argv.slice(2) : ['2x320x320x64', '2x640x640x32', '2x1280x1280x16', '2x1280x1280x8', '1x512x512x128', '1x256x256x256', '1x128x128x512'];
console.log('| N×C→K×H² | direct ms | GFLOP/s | F(2,3) ms | × | F(4,3) ms | × | max diff F(4,3) |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
for (const shape of shapes) {
  const [n, c, k, h] = shape.split('x').map(Number) as [number, number, number, number];
  const x = new Float32Array(n * c * h * h);
  for (let i = 0; i < x.length; i++) x[i] = ((i * 40503) % 997) / 997 - 0.5;
  const dims = [n, c, h, h];
  const d = await time(convModel(n, c, k, h), x, dims);
  const row = [`${n}×${c}→${k}×${h}²`, d.ms.toFixed(1), ((2 * n * c * k * 9 * h * h) / d.ms / 1e6).toFixed(0)];
  let diff = 0;
  for (const tile of [2, 4] as const) {
    const m = convModel(n, c, k, h);
    winogradConvs(m, { tile, minChannels: 1 });
    const r = await time(m, x, dims);
    row.push(r.ms.toFixed(1), `${(d.ms / r.ms).toFixed(2)}×`);
    if (tile === 4) for (let i = 0; i < r.y.length; i++) diff = Math.max(diff, Math.abs(r.y[i]! - d.y[i]!));
  }
  row.push(diff.toExponential(1));
  console.log(`| ${row.join(' | ')} |`);
}
