/** Helpers shared by the test files (not a test file itself). */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import ort from 'onnxruntime-node';
import { xorshiftFill } from '../src/bench/inputs.js';
import { encodeModel } from '../src/onnx/proto.js';
import type { ModelProto } from '../src/onnx/types.js';

import { generationParams } from '../src/pipeline/params.js';
import { defaultSchedulerFor } from '../src/schedulers/index.js';
import type { GenerationParams } from '../src/pipeline/types.js';

export { generationParams };

/** The reference data the tests read, copied into the repository (test/fixtures/README.md). */
export const FIXTURES_URL = new URL('./fixtures/', import.meta.url);
/** FIXTURES_URL as a path, with a trailing separator. */
export const FIXTURES_DIR = FIXTURES_URL.pathname;
/** Path of a file or folder under test/fixtures/. */
export function fx(p: string): string {
  return new URL(p, FIXTURES_URL).pathname;
}

/** Largest |a[i] − b[i]| (Infinity when any difference is NaN); the lengths must agree. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'length');
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

export interface Ran {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `node ...nodeArgs ...args` (the CLI: the built bin, or the sources through tsx) in `cwd`
 * with an isolated HOME / XDG config and no colour; resolves when it exits.
 */
export function spawnCli(nodeArgs: string[], args: string[], opts: { cwd: string; home: string }): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...nodeArgs, ...args], {
      cwd: opts.cwd,
      env: { ...process.env, HOME: opts.home, XDG_CONFIG_HOME: path.join(opts.home, '.config'), NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** Runs a model (proto or encoded bytes) once on one thread and returns its first output. */
export async function runFeeds(m: ModelProto | Uint8Array, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(m instanceof Uint8Array ? m : encodeModel(m), { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
  try {
    const out = await s.run(feeds);
    return out[s.outputNames[0]!]!.data as Float32Array;
  } finally {
    await s.release();
  }
}

/** Where a fixture's manifest.json places one tensor in its .bin file (little-endian, packed). */
export interface TensorEntry {
  dtype: string;
  shape: number[];
  offset: number;
  nbytes: number;
}

/**
 * One fixture tensor read from the bytes of its .bin file: float32, float64, int64 or uint8,
 * copied into an aligned buffer of its own.
 */
export function readTensor(buf: Uint8Array, e: TensorEntry): Float32Array | Float64Array | BigInt64Array | Uint8Array {
  const bytes = Uint8Array.prototype.slice.call(buf, e.offset, e.offset + e.nbytes);
  switch (e.dtype) {
    case 'float32':
      return new Float32Array(bytes.buffer);
    case 'float64':
      return new Float64Array(bytes.buffer);
    case 'int64':
      return new BigInt64Array(bytes.buffer);
    case 'uint8':
      return bytes;
    default:
      throw new Error(`fixture tensor of unsupported dtype ${e.dtype}`);
  }
}

/**
 * Inputs of the tiny UNets (4 latent channels, 32-wide text states): `sample` [b, 4, h, w]
 * (given, or xorshift noise from `seed`, default 3), `timestep` per batch item (`timestep` for
 * all, or 981, 731, … by default) and `encoder_hidden_states` [b, seq (77), 32] from `textSeed`
 * (default `seed` + 1).
 */
export function unetFeeds(
  b: number,
  h: number,
  w: number,
  o: { seq?: number; seed?: number; textSeed?: number; sample?: Float32Array; timestep?: number } = {},
): Record<string, ort.Tensor> {
  const seed = o.seed ?? 3;
  const seq = o.seq ?? 77;
  return {
    sample: new ort.Tensor('float32', o.sample ?? xorshiftFill(b * 4 * h * w, seed), [b, 4, h, w]),
    timestep: new ort.Tensor('float32', Float32Array.from({ length: b }, (_, i) => o.timestep ?? 981 - 250 * i), [b]),
    encoder_hidden_states: new ort.Tensor('float32', xorshiftFill(b * seq * 32, o.textSeed ?? seed + 1), [b, seq, 32]),
  };
}

const ROOT_DIR = fileURLToPath(new URL('../', import.meta.url));

/** Is every src .ts file older than its compiled dist .js file? */
function distIsFresh(): boolean {
  const walk = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
  try {
    for (const src of walk(path.join(ROOT_DIR, 'src'))) {
      const js = path.join(ROOT_DIR, 'dist', path.relative(path.join(ROOT_DIR, 'src'), src).replace(/\.ts$/, '.js'));
      if (!existsSync(js) || statSync(js).mtimeMs < statSync(src).mtimeMs) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/** Whether the CLI tests run the built bin (SDGEN_TEST_CLI=tsx or =bin forces one). */
export const CLI_IS_BIN = process.env['SDGEN_TEST_CLI'] === 'bin' || (process.env['SDGEN_TEST_CLI'] !== 'tsx' && distIsFresh());

/**
 * Node arguments that run the CLI: the built bin (bin/sdgen.js → dist/, what `npm ci` builds)
 * when dist/ is up to date with src/, else the TypeScript sources through tsx (resolved from the
 * project, so any working directory works).
 */
export const CLI: string[] = CLI_IS_BIN
  ? [path.join(ROOT_DIR, 'bin', 'sdgen.js')]
  : ['--import', import.meta.resolve('tsx'), path.join(ROOT_DIR, 'src/cli/main.ts')];

/**
 * A temporary folder with an isolated HOME for one test file's CLI runs: made before its tests,
 * removed after. `run` spawns the CLI there (or in `cwd`).
 */
export function cliSandbox(prefix: string): { readonly tmp: string; readonly home: string; run(args: string[], cwd?: string): Promise<Ran> } {
  let tmp = '';
  let home = '';
  before(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), `sdgen-${prefix}-`));
    home = path.join(tmp, 'home');
    mkdirSync(home);
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));
  return {
    get tmp() {
      return tmp;
    },
    get home() {
      return home;
    },
    run: (args, cwd) => spawnCli(CLI, args, { cwd: cwd ?? tmp, home }),
  };
}

/** Exit code `code`, exactly one line on stderr matching `re`, and no stack trace or bug marker. */
export function assertOneErrorLine(r: Ran, code: number, re: RegExp): void {
  assert.equal(r.status, code, `exit ${r.status}, stderr: ${r.stderr}`);
  const lines = r.stderr.replace(/\n$/, '').split('\n');
  assert.equal(lines.length, 1, `one line expected, got: ${r.stderr}`);
  assert.match(lines[0]!, re);
  assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
  assert.doesNotMatch(r.stderr, /this is a bug|internal error/);
}

/**
 * Final latents against a reference: the largest difference within `rel` of the reference's
 * largest magnitude (at least 1); returns both numbers for the test's diagnostics.
 */
export function assertLatentsClose(got: ArrayLike<number>, ref: ArrayLike<number>, rel = 1e-4): { diff: number; absmax: number } {
  const diff = maxAbsDiff(got, ref);
  let absmax = 0;
  for (let i = 0; i < ref.length; i++) absmax = Math.max(absmax, Math.abs(ref[i]!));
  assert.ok(diff <= rel * Math.max(1, absmax), `final_latents max diff ${diff} (absmax ${absmax})`);
  return { diff, absmax };
}

/** The `args` of a diffusers reference run in the fixtures (e2e/, sdxl/: the pipeline call). */
export interface DiffusersRunArgs {
  scheduler: string;
  prompt: string;
  /** null: no classifier-free guidance */
  negative_prompt: string | null;
  guidance_scale: number;
  height: number;
  width: number;
  num_inference_steps: number;
  seed: number;
}

/**
 * sdgen's GenerationParams for a diffusers reference run: its prompt, guidance, size, steps and
 * seed, the sampler of its scheduler class built from `schedulerConfig`, and diffusers'
 * `negative_prompt=None` as an empty negative prompt.
 */
export function diffusersRunParams(a: DiffusersRunArgs, schedulerConfig: Record<string, unknown>): GenerationParams {
  return generationParams({
    prompt: a.prompt,
    negativePrompt: a.negative_prompt ?? '',
    cfg: a.guidance_scale,
    width: a.width,
    height: a.height,
    steps: a.num_inference_steps,
    seed: a.seed,
    scheduler: defaultSchedulerFor({ ...schedulerConfig, _class_name: a.scheduler }),
  });
}

// ---- safetensors files written by tests (LoRAs, embeddings) ----

export type WTensor = { dtype: string; shape: number[]; data: Uint8Array };
/** Writes a safetensors file (test-side writer). */
export function writeSafetensors(file: string, tensors: Record<string, WTensor>, metadata?: Record<string, string>): void {
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  let off = 0;
  for (const [k, t] of Object.entries(tensors)) {
    header[k] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.length] };
    off += t.data.length;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, json, ...Object.values(tensors).map((t) => Buffer.from(t.data))]));
}
export const f32 = (shape: number[], values: ArrayLike<number>): WTensor => ({ dtype: 'F32', shape, data: new Uint8Array(Float32Array.from(values).buffer) });
