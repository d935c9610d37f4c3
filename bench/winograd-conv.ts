/**
 * One 3×3 convolution (padding 1), direct vs its Winograd forms F(2,3) and F(4,3) as
 * src/optimize/winograd.ts writes them, in onnxruntime (level `all`, 2 threads): median of 5 calls
 * after a warm-up, and the largest difference from the direct output.
 *   node --import tsx bench/winograd-conv.ts NxCxKxH ...   (default: SD 1.5 UNet and VAE shapes)
 */
import ort from 'onnxruntime-node';
import { encodeModel } from '../src/onnx/proto.js';
import { convModel } from '../src/bench/matmul-rate.js';
import type { ModelProto } from '../src/onnx/types.js';
import { winogradConvs } from '../src/optimize/winograd.js';

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
  const d = await time(convModel(c, h, n, 1, k), x, dims);
  const row = [`${n}×${c}→${k}×${h}²`, d.ms.toFixed(1), ((2 * n * c * k * 9 * h * h) / d.ms / 1e6).toFixed(0)];
  let diff = 0;
  for (const tile of [2, 4] as const) {
    const m = convModel(c, h, n, 1, k);
    winogradConvs(m, { tile, minChannels: 1 });
    const r = await time(m, x, dims);
    row.push(r.ms.toFixed(1), `${(d.ms / r.ms).toFixed(2)}×`);
    if (tile === 4) for (let i = 0; i < r.y.length; i++) diff = Math.max(diff, Math.abs(r.y[i]! - d.y[i]!));
  }
  row.push(diff.toExponential(1));
  console.log(`| ${row.join(' | ')} |`);
}
