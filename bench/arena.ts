/**
 * Effect of onnxruntime's CPU memory arena and memory-pattern planning on UNet call time and
 * peak RSS, each setting in its own process, settings interleaved over rounds:
 *   node --import tsx bench/arena.ts [model.onnx] [--size PX] [--batch N] [--calls N] [--rounds N] [--settings on-on,on-off] [--cache-dir DIR]
 * Default model: the tiny-sd1 UNet fixture at 256². --cache-dir loads through the optimized-graph
 * cache there (as sdgen does; a Winograd variant from the bench's cache needs it to load fast).
 */
import { runInChild } from '../src/bench/child.js';
import { availableMemory, fmtGB } from '../src/bench/memory.js';
import { median } from '../src/bench/report.js';
import { defaultThreadCount } from '../src/models/session.js';

const args = process.argv.slice(2);
const opt = (name: string, d: number): number => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : d;
};
const model = args.find((a) => a.endsWith('.onnx')) ?? new URL('../test/fixtures/tiny-sd1/unet/model.onnx', import.meta.url).pathname;
const size = opt('--size', 256);
const batch = opt('--batch', 2);
const calls = opt('--calls', 3);
const rounds = opt('--rounds', 2);
const threads = defaultThreadCount();
const cacheDir = args.includes('--cache-dir') ? args[args.indexOf('--cache-dir') + 1] : undefined;
const all = [
  { memArena: true, memPattern: true },
  { memArena: true, memPattern: false },
  { memArena: false, memPattern: true },
  { memArena: false, memPattern: false },
];
// --settings on-on,on-off,…  (arena-pattern) picks a subset
const pick = args.includes('--settings') ? args[args.indexOf('--settings') + 1]!.split(',') : null;
const settings = pick ? all.filter((s) => pick.includes(`${s.memArena ? 'on' : 'off'}-${s.memPattern ? 'on' : 'off'}`)) : all;
const samples = settings.map(() => [] as number[]);
const peaks = settings.map(() => 0);
console.log(`model ${model}, ${size}² batch ${batch}, ${calls} calls × ${rounds} rounds, ${threads} threads`);
for (let r = 0; r < rounds; r++) {
  const order = r % 2 === 0 ? settings.map((_, i) => i) : settings.map((_, i) => settings.length - 1 - i);
  for (const i of order) {
    const out = await runInChild(
      { kind: 'unet', modelPath: model, size, batch, seqLen: 77, calls, threads, ...settings[i]!, ...(cacheDir ? { cacheDir } : {}) },
      { memoryLimit: availableMemory() - 1e9 },
    );
    if (!out.ok || out.result.kind !== 'unet') {
      console.log(`arena=${settings[i]!.memArena} pattern=${settings[i]!.memPattern}: ${out.ok ? 'bad result' : out.error}`);
      continue;
    }
    samples[i]!.push(...out.result.samplesMs);
    peaks[i] = Math.max(peaks[i]!, out.peakRss);
  }
}
console.log('| arena | mem pattern | s/call (median) | peak RSS GB |\n|---|---|---:|---:|');
settings.forEach((s, i) => {
  const m = median(samples[i]!);
  console.log(`| ${s.memArena ? 'on' : 'off'} | ${s.memPattern ? 'on' : 'off'} | ${m === undefined ? '–' : (m / 1000).toFixed(3)} | ${fmtGB(peaks[i])} |`);
});
