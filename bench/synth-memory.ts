/**
 * Time and peak RSS of `synthesize` for one architecture (run it in its own process so the peak
 * is this run's), optionally followed by one UNet call on the written model:
 *   node --import tsx bench/synth-memory.ts [--arch sd15] [--out DIR] [--fp16] [--opset 17]
 *     [--run-unet LATENT_SIDE] [--keep]
 * The UNet call feeds sample [2,4,S,S], timestep [2], encoder_hidden_states [2,77,D].
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { synthesize, type Arch } from '../src/synth/index.js';
import { resolveArch } from '../src/synth/index.js';

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const arch = (opt('--arch') ?? 'sd15') as Arch;
const out = opt('--out') ?? mkdtempSync(join(tmpdir(), `sdgen-synth-${arch}-`));
const fp16 = args.includes('--fp16');
const opset = Number(opt('--opset') ?? 14) as 14 | 17;
const runSide = opt('--run-unet');
const gb = (b: number): string => `${(b / 2 ** 30).toFixed(2)} GiB`;

let lastStage = '';
const t0 = performance.now();
const res = await synthesize({
  arch,
  outDir: out,
  fp16,
  opset,
  onProgress: (stage, done, total) => {
    if (stage !== lastStage || done === total) {
      process.stderr.write(`${stage}: ${gb(done)} / ${gb(total)} at ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
      lastStage = stage;
    }
  },
});
const seconds = (performance.now() - t0) / 1000;
console.log(
  JSON.stringify({
    arch,
    fp16,
    opset,
    out,
    params: res.params,
    synthSeconds: Number(seconds.toFixed(1)),
    peakRss: gb(process.resourceUsage().maxRSS * 1024),
  }),
);

if (runSide !== undefined) {
  const ort = await import('onnxruntime-node');
  const side = Number(runSide);
  const d = resolveArch(arch).unet.crossAttentionDim;
  const t1 = performance.now();
  const s = await ort.InferenceSession.create(join(out, 'unet', 'model.onnx'));
  const tLoad = (performance.now() - t1) / 1000;
  const f = (n: number, g: (i: number) => number): Float32Array => Float32Array.from({ length: n }, (_, i) => g(i));
  const t2 = performance.now();
  const r = await s.run({
    sample: new ort.Tensor('float32', f(2 * 4 * side * side, (i) => Math.sin(i)), [2, 4, side, side]),
    timestep: new ort.Tensor('float32', f(2, () => 500), [2]),
    encoder_hidden_states: new ort.Tensor('float32', f(2 * 77 * d, (i) => Math.cos(i) * 0.5), [2, 77, d]),
  });
  const o = r.out_sample!.data as Float32Array;
  let finite = true;
  let s2 = 0;
  for (const v of o) {
    if (!Number.isFinite(v)) finite = false;
    s2 += v * v;
  }
  console.log(
    JSON.stringify({
      unetLoadSeconds: Number(tLoad.toFixed(1)),
      unetRunSeconds: Number(((performance.now() - t2) / 1000).toFixed(1)),
      dims: r.out_sample!.dims,
      finite,
      rms: Math.sqrt(s2 / o.length),
      peakRss: gb(process.resourceUsage().maxRSS * 1024),
    }),
  );
}
if (!args.includes('--keep') && opt('--out') === undefined) rmSync(out, { recursive: true, force: true });
