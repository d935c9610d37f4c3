/**
 * VAE decoder: counted FLOPs and time per op type of one decode, from onnxruntime's profile
 * (the same counting as `sdgen bench`). The first call, so warm-up costs are included in the time.
 *   node --import tsx bench/vae-flops.ts [image side, default 512] [vae_decoder/model.onnx]
 */
import * as ort from 'onnxruntime-node';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { summarizeProfile, type ProfileEvent } from '../src/bench/profile.js';

async function main(): Promise<void> {
  const size = Number(process.argv[2] ?? 512);
  const model = process.argv[3] ?? join(homedir(), '.cache/sdgen/bench-models/sd15/vae_decoder/model.onnx');
  const prefix = `sdgen-vae-prof-${process.pid}`;
  const session = await ort.InferenceSession.create(model, {
    intraOpNumThreads: 2,
    graphOptimizationLevel: 'all',
    enableProfiling: true,
    profileFilePrefix: join(tmpdir(), prefix),
  });
  const h = size / 8;
  const x = new Float32Array(4 * h * h).map((_, i) => Math.sin(i) * 0.5);
  const t0 = performance.now();
  await session.run({ [session.inputNames[0]!]: new ort.Tensor('float32', x, [1, 4, h, h]) });
  const ms = performance.now() - t0;
  session.endProfiling();
  await session.release();
  const file = readdirSync(tmpdir()).filter((n) => n.startsWith(prefix)).map((n) => join(tmpdir(), n))[0]!;
  const sum = summarizeProfile(JSON.parse(readFileSync(file, 'utf8')) as ProfileEvent[]);
  rmSync(file, { force: true });
  console.log(`VAE decoder ${size}²: ${(ms / 1000).toFixed(2)} s (first call), ${(sum.flops / 1e9).toFixed(0)} GFLOP counted`);
  for (const o of sum.byOp.slice(0, 8)) console.log(`  ${o.op} ×${o.count}: ${(o.ms / 1000).toFixed(2)} s, ${(o.flops / 1e9).toFixed(0)} GFLOP`);
}

await main();
