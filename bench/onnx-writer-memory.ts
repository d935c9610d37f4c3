/**
 * Peak memory of the streaming ONNX writer.
 *
 *   node --import tsx bench/onnx-writer-memory.ts [--gb 3.4] [--fp16-gb 1.7] [--dir DIR] [--keep]
 *
 * 1. Builds (in a child process) an fp32 model of ~--gb GB of initializers in external data, and
 *    an fp16 model of ~--fp16-gb GB with its initializers inline (must stay under 2 GiB).
 * 2. In a fresh child process each, measures loading and re-saving:
 *    - fp32 external, loaded 'lazy', saved with external data (bytes streamed file to file);
 *    - fp32 external, loaded 'lazy', saved to one inline file (when it fits in 2 GiB; otherwise
 *      checks that saving it inline is refused with a clear error);
 *    - fp16 inline, loaded (the file in one Buffer, tensors as views), saved inline.
 *    Each child reports wall time and its peak RSS (VmHWM on Linux, see peakRss; else maxRSS).
 * 3. Prints size, time, peak RSS, peak RSS / model size and (peak RSS − runtime baseline) / model
 *    size (target ≤ 1.5×; at small sizes the ~75 MB node+tsx baseline dominates the raw ratio),
 *    and checks that the re-saved models hold the same bytes (first and last tensor).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, openSync, writeSync, closeSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DataLocation, DataType, type ModelProto, type NodeProto, type TensorProto,
  encodeModel, loadModel, saveModel, setExternalSource, loadTensorData, makeTensor,
} from '../src/onnx/index.js';
import { SdgenError } from '../src/errors.js';

const SELF = fileURLToPath(import.meta.url);
const SIDE = 4096; // tensors are [SIDE, SIDE]

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : dflt;
}

function chainGraph(weights: TensorProto[], elemType: DataType): ModelProto {
  const node: NodeProto[] = weights.map((w, i) => ({
    name: `/layers.${i}/MatMul`, opType: 'MatMul', attribute: [],
    input: [i === 0 ? 'x' : `h${i - 1}`, w.name!], output: [i === weights.length - 1 ? 'y' : `h${i}`],
  }));
  const vi = (name: string) => ({
    name, type: { tensorType: { elemType, shape: { dim: [{ dimParam: 'B' }, { dimValue: SIDE }] } } },
  });
  return {
    irVersion: 8, producerName: 'sdgen-bench', opsetImport: [{ domain: '', version: 14 }],
    graph: { name: 'chain', node, initializer: weights, input: [vi('x')], output: [vi('y')], valueInfo: [] },
  };
}

/** Fills a buffer with cheap pseudo-random bytes, different per tensor index. */
function fill(buf: Buffer, seed: number): void {
  const u = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >>> 2);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < u.length; i += 1024) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    u[i] = s >>> 0;
  }
}

async function build(dir: string, gb: number, fp16gb: number): Promise<void> {
  // fp32, external: write weights.pb directly, then a model whose tensors refer to it
  const bytes32 = SIDE * SIDE * 4;
  const n32 = Math.max(1, Math.round((gb * 1e9) / bytes32));
  mkdirSync(join(dir, 'fp32'), { recursive: true });
  const buf = Buffer.alloc(bytes32);
  const fd = openSync(join(dir, 'fp32', 'weights.pb'), 'w');
  const weights32: TensorProto[] = [];
  for (let i = 0; i < n32; i++) {
    fill(buf, i + 1);
    writeSync(fd, buf, 0, buf.length);
    weights32.push({
      name: `layers.${i}.weight`, dataType: DataType.FLOAT, dims: [SIDE, SIDE], dataLocation: DataLocation.EXTERNAL,
      externalData: [{ key: 'location', value: 'weights.pb' }, { key: 'offset', value: String(i * bytes32) }, { key: 'length', value: String(bytes32) }],
    });
  }
  closeSync(fd);
  writeFileSync(join(dir, 'fp32', 'model.onnx'), encodeModel(chainGraph(weights32, DataType.FLOAT)));

  // fp16, inline: every tensor views one shared buffer (patched per tensor through the lazy
  // path would also work); the streaming writer never concatenates them
  const bytes16 = SIDE * SIDE * 2;
  const n16 = Math.max(1, Math.round((fp16gb * 1e9) / bytes16));
  const bufs: Buffer[] = [];
  for (let i = 0; i < Math.min(n16, 4); i++) {
    const b = Buffer.alloc(bytes16);
    fill(b, 1000 + i);
    bufs.push(b);
  }
  const weights16 = Array.from({ length: n16 }, (_, i) => {
    const b = bufs[i % bufs.length]!;
    return makeTensor(`layers.${i}.weight`, DataType.FLOAT16, [SIDE, SIDE], new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2));
  });
  mkdirSync(join(dir, 'fp16'), { recursive: true });
  await saveModel(chainGraph(weights16, DataType.FLOAT16), join(dir, 'fp16', 'model.onnx'), { externalData: false });
}

async function resave(kind: string, dir: string): Promise<void> {
  const t0 = performance.now();
  if (kind === 'baseline') {
    // same modules loaded, nothing done: the runtime's own RSS
  } else if (kind === 'fp32-external') {
    const m = await loadModel(join(dir, 'fp32', 'model.onnx'), { externalData: 'lazy' });
    await saveModel(m, join(dir, 'out32', 'model.onnx'), { externalData: true, weightsFile: 'weights.pb' });
  } else if (kind === 'fp32-inline') {
    const m = await loadModel(join(dir, 'fp32', 'model.onnx'), { externalData: 'lazy' });
    await saveModel(m, join(dir, 'out32i', 'model.onnx'), { externalData: false });
  } else {
    const m = await loadModel(join(dir, 'fp16', 'model.onnx'));
    await saveModel(m, join(dir, 'out16', 'model.onnx'), { externalData: false });
  }
  const seconds = (performance.now() - t0) / 1000;
  process.stdout.write(JSON.stringify({ seconds, maxRssBytes: peakRss() }) + '\n');
}

/**
 * Peak RSS of this process. On Linux, getrusage's maxRSS (process.resourceUsage().maxRSS) keeps
 * the high-water mark across fork+exec, so a child spawned by a big parent reports the parent's
 * peak; /proc/self/status VmHWM is the peak of this process image alone. Elsewhere: maxRSS.
 */
function peakRss(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS * 1024;
}

function dirSize(d: string): number {
  return readdirSync(d).reduce((s, f) => s + statSync(join(d, f)).size, 0);
}

function child(args: string[]): string {
  const r = spawnSync(process.execPath, [...process.execArgv, SELF, ...args], { encoding: 'utf8', maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`child ${args.join(' ')} failed:\n${r.stderr}`);
  return r.stdout;
}

async function sameBytes(a: string, b: string): Promise<boolean> {
  const ma = await loadModel(a, { externalData: 'lazy' });
  const mb = await loadModel(b, { externalData: 'lazy' });
  const ia = ma.graph!.initializer;
  const ib = mb.graph!.initializer;
  if (ia.length !== ib.length) return false;
  for (const k of [0, ia.length - 1]) {
    const x = await loadTensorData(ia[k]!);
    const y = await loadTensorData(ib[k]!);
    if (!Buffer.from(x).equals(Buffer.from(y))) return false;
  }
  return true;
}

async function main(): Promise<void> {
  if (process.argv.includes('--child')) {
    const phase = arg('--child', '');
    const dir = arg('--dir', '');
    if (phase === 'build') await build(dir, Number(arg('--gb', '3.4')), Number(arg('--fp16-gb', '1.7')));
    else await resave(phase, dir);
    return;
  }
  const gb = Number(arg('--gb', '3.4'));
  const fp16gb = Number(arg('--fp16-gb', String(gb / 2)));
  if (!(gb > 0) || !(fp16gb > 0)) throw new Error('--gb and --fp16-gb must be positive');
  const base = arg('--dir', '');
  const dir = base ? mkdtempSync(join(base, 'onnx-bench-')) : mkdtempSync(join(tmpdir(), 'onnx-bench-'));
  try {
    let t = performance.now();
    child(['--child', 'build', '--dir', dir, '--gb', String(gb), '--fp16-gb', String(fp16gb)]);
    console.log(`built test models in ${((performance.now() - t) / 1000).toFixed(1)} s under ${dir}`);
    const size32 = dirSize(join(dir, 'fp32'));
    const size16 = dirSize(join(dir, 'fp16'));
    const runs: { kind: string; size: number; out: string; src: string }[] = [
      { kind: 'fp32-external', size: size32, out: 'out32', src: 'fp32' },
      ...(size32 < 2 ** 31 - 2 ** 20 ? [{ kind: 'fp32-inline', size: size32, out: 'out32i', src: 'fp32' }] : []),
      { kind: 'fp16-inline', size: size16, out: 'out16', src: 'fp16' },
    ];
    const baseline = (JSON.parse(child(['--child', 'baseline', '--dir', dir]).trim().split('\n').pop()!) as { maxRssBytes: number }).maxRssBytes;
    console.log(`runtime baseline (node + tsx + modules, no work): ${(baseline / 1e6).toFixed(0)} MB peak RSS`);
    console.log('case            model size   time      peak RSS   RSS/size  (RSS-baseline)/size  same bytes');
    let ok = true;
    for (const r of runs) {
      t = performance.now();
      const res = JSON.parse(child(['--child', r.kind, '--dir', dir]).trim().split('\n').pop()!) as { seconds: number; maxRssBytes: number };
      const ratio = res.maxRssBytes / r.size;
      const net = (res.maxRssBytes - baseline) / r.size;
      const same = await sameBytes(join(dir, r.src, 'model.onnx'), join(dir, r.out, 'model.onnx'));
      const outSize = dirSize(join(dir, r.out));
      ok &&= same && net <= 1.5;
      console.log(
        `${r.kind.padEnd(15)} ${(r.size / 1e9).toFixed(3).padStart(7)} GB ${res.seconds.toFixed(2).padStart(7)} s ` +
          `${(res.maxRssBytes / 1e6).toFixed(0).padStart(7)} MB ${ratio.toFixed(2).padStart(8)}×  ${net.toFixed(2).padStart(14)}×       ${same ? 'yes' : 'NO'}` +
          `  (written ${(outSize / 1e9).toFixed(3)} GB)`,
      );
      if (!process.argv.includes('--keep')) rmSync(join(dir, r.out), { recursive: true, force: true });
    }
    if (size32 >= 2 ** 31) {
      // a > 2 GiB model cannot be one protobuf: saving it inline must be refused up front
      const m = await loadModel(join(dir, 'fp32', 'model.onnx'), { externalData: 'lazy' });
      const target = join(dir, 'refused', 'model.onnx');
      const refused = await saveModel(m, target, { externalData: false }).then(
        () => false,
        (e: unknown) => e instanceof SdgenError && /2 GiB/.test((e as Error).message),
      );
      console.log(`fp32 inline save of ${(size32 / 1e9).toFixed(2)} GB refused with a clear error: ${refused ? 'yes' : 'NO'}`);
      ok &&= refused;
    }
    console.log(ok ? 'OK: peak RSS above the runtime baseline ≤ 1.5× model size, bytes preserved' : 'FAILED');
    if (!ok) process.exitCode = 1;
  } finally {
    if (!process.argv.includes('--keep')) rmSync(dir, { recursive: true, force: true });
  }
}

await main();
