/** Helpers shared by the test files (not a test file itself). */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { xorshiftFill } from '../src/bench/inputs.js';
import { encodeModel } from '../src/onnx/proto.js';
import type { ModelProto } from '../src/onnx/types.js';

export { generationParams } from '../src/pipeline/params.js';

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
