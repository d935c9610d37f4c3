import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { TorchGenerator } from '../src/random/torch-generator.js';
import { MT19937 } from '../src/random/mt19937.js';
import { fmaf } from '../src/random/float32-math.js';
import { readTensor, FIXTURES_URL as FIXTURES, type TensorEntry } from './helpers.js';



function assertBitsEqual(got: Float32Array, exp: Float32Array, label: string): void {
  assert.equal(got.length, exp.length, `${label}: length`);
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const e = new Uint32Array(exp.buffer, exp.byteOffset, exp.length);
  let bad = 0;
  let first = -1;
  for (let i = 0; i < e.length; i++) if (g[i] !== e[i]) { bad++; if (first < 0) first = i; }
  assert.equal(bad, 0, `${label}: ${bad} of ${e.length} differ, first at ${first}: ${got[first]} vs ${exp[first]}`);
}

test('MT19937 matches the reference sequence for the default seed 5489', () => {
  const mt = new MT19937(5489);
  assert.equal(mt.nextUint32(), 3499211612);
  for (let i = 1; i < 9999; i++) mt.nextUint32();
  // The C++ standard specifies the 10000th output of default-seeded mt19937.
  assert.equal(mt.nextUint32(), 4123659995);
});

test('fmaf rounds once (differs from two roundings where it must)', () => {
  const a = Math.fround(1 + 2 ** -12);
  // a*a = 1 + 2^-11 + 2^-24; minus 1 - 2^-11: exact result 2^-24 survives only when fused.
  assert.equal(fmaf(a, a, -Math.fround(1 + 2 ** -11)), 2 ** -24);
  assert.equal(Math.fround(Math.fround(a * a) - Math.fround(1 + 2 ** -11)), 0);
  // a*a = 1 + 2^-11 + 2^-24 is exactly halfway between two float32 values; a tiny addend that a
  // float64 sum loses must still break the tie (up for +2^-80, down for −2^-80).
  assert.equal(fmaf(a, a, 2 ** -80), 1 + 2 ** -11 + 2 ** -23);
  assert.equal(fmaf(a, a, -(2 ** -80)), 1 + 2 ** -11);
  assert.equal(fmaf(a, a, 0), 1 + 2 ** -11); // exact tie: to even
  assert.equal(fmaf(-a, a, -(2 ** -80)), -(1 + 2 ** -11 + 2 ** -23));
});

const rngDir = new URL('rng/', FIXTURES);
const rngManifest = JSON.parse(readFileSync(new URL('manifest.json', rngDir), 'utf8')) as {
  file: string;
  cases: { shape: number[]; seed: number; tensors: { first: TensorEntry; second: TensorEntry } }[];
};
const rngBin = readFileSync(new URL(rngManifest.file, rngDir));
test('the rng fixture lists its 4 cases', () => assert.ok(rngManifest.cases.length >= 4, `${rngManifest.cases.length} cases`));

for (const c of rngManifest.cases) {
  test(`randn ${JSON.stringify(c.shape)} seed ${c.seed}: first and second draw bit-identical to torch`, () => {
    const g = new TorchGenerator(c.seed);
    assertBitsEqual(g.randn(c.shape), readTensor(rngBin, c.tensors.first) as Float32Array, 'first');
    assertBitsEqual(g.randn(c.shape), readTensor(rngBin, c.tensors.second) as Float32Array, 'second');
  });
}

test('randnInto gives the same values as randn, and bigint seeds equal number seeds', () => {
  const a = new TorchGenerator(42).randn([1, 4, 8, 8]);
  const out = new Float32Array(256);
  const g = new TorchGenerator(42n);
  assert.equal(g.randnInto(out), out);
  assertBitsEqual(out, a, 'randnInto');
  // manual_seed resets the state (including the scalar path's cached value).
  g.randn([3]);
  g.manualSeed(42);
  assertBitsEqual(g.randn([1, 4, 8, 8]), a, 'after manualSeed');
});

test('seeds use the low 32 bits of the 64-bit seed, as torch\'s mt19937 does', () => {
  const a = new TorchGenerator(7).randn([20]);
  const b = new TorchGenerator((1n << 32n) + 7n).randn([20]);
  assertBitsEqual(b, a, 'seed 2^32 + 7');
});

const tomeDir = new URL('tome-merge/', FIXTURES);
const tomeManifest = JSON.parse(readFileSync(new URL('manifest.json', tomeDir), 'utf8')) as {
  cases: { name: string; file: string; params: { no_rand: boolean; rand_seed?: number; data_seed: number; sx: number; sy: number; batch: number; N: number; channels: number; metric_channels: number }; tensors: Record<string, TensorEntry> }[];
};

const randCases = tomeManifest.cases.filter((k) => !k.params.no_rand);
test('the tome-merge fixture lists its 2 cases with random destinations', () => assert.ok(randCases.length >= 2, `${randCases.length} cases`));
for (const c of randCases) {
  test(`randint reproduces tomesd's rand_idx (${c.name})`, () => {
    const bin = readFileSync(new URL(c.file, tomeDir));
    const ref = c.tensors['rand_idx']!;
    const exp = readTensor(bin, ref) as BigInt64Array;
    const got = new TorchGenerator(c.params.rand_seed!).randint(c.params.sx * c.params.sy, ref.shape);
    assert.deepEqual(Array.from(got), Array.from(exp));
  });
  test(`randn reproduces the seeded metric and x tensors (${c.name})`, () => {
    const bin = readFileSync(new URL(c.file, tomeDir));
    const g = new TorchGenerator(c.params.data_seed);
    const metric = c.tensors['metric']!;
    const x = c.tensors['x']!;
    assertBitsEqual(g.randn(metric.shape), readTensor(bin, metric) as Float32Array, 'metric');
    assertBitsEqual(g.randn(x.shape), readTensor(bin, x) as Float32Array, 'x');
  });
}
