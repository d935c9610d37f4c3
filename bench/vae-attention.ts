/**
 * VAE decoder: exported vs fused mid-block attention, one decode after a warm-up, in this process.
 *   node --import tsx bench/vae-attention.ts standard|fused [latent side, default 64] [vae model.onnx]
 * Run each mode in its own process so the peak memory (VmHWM) is that mode's.
 */
import * as ort from 'onnxruntime-node';
import { readFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { getFusedModel } from '../src/optimize/index.js';

async function main(): Promise<void> {
  const [mode = 'standard', sideArg = '64', model] = process.argv.slice(2);
  const side = Number(sideArg);
  const src = model ?? join(homedir(), '.cache/sdgen/bench-models/sd15/vae_decoder/model.onnx');
  let path = src;
  if (mode === 'fused') {
    const r = await getFusedModel(src, { cacheDir: join(tmpdir(), 'sdgen-bench-vae') });
    if (!r.fused) throw new Error(`nothing fused: ${r.reason}`);
    path = r.path;
  }
  const s = await ort.InferenceSession.create(path);
  const x = new ort.Tensor('float32', new Float32Array(4 * side * side).map((_, i) => Math.sin(i) * 0.5), [1, 4, side, side]);
  await s.run({ [s.inputNames[0]!]: x });
  const t0 = performance.now();
  await s.run({ [s.inputNames[0]!]: x });
  const secs = (performance.now() - t0) / 1000;
  const hwm = Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? 0);
  console.log(`${mode} ${side * 8}x${side * 8}: ${secs.toFixed(2)} s, peak ${(hwm / 1e6).toFixed(2)} GB`);
}

await main();
