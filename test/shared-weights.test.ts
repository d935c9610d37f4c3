import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { createCachedSession, optimizedEntryDir } from '../src/optimize/session-cache.js';
import { pruneCacheDir } from '../src/optimize/cache-prune.js';
import { WEIGHTS_INDEX_FILE, type WeightsIndex } from '../src/optimize/shared-weights.js';
import { FIXTURES_URL as FIXTURES } from './helpers.js';

const UNET = new URL('tiny-sd1/unet/model.onnx', FIXTURES).pathname;
const BASE: ort.InferenceSession.SessionOptions = { executionProviders: ['cpu'], intraOpNumThreads: 1, logSeverityLevel: 3 };

function feeds(): Record<string, ort.Tensor> {
  const b = 2, h = 8, w = 8;
  return {
    sample: new ort.Tensor('float32', Float32Array.from({ length: b * 4 * h * w }, (_, i) => Math.sin(i * 0.37)), [b, 4, h, w]),
    timestep: new ort.Tensor('float32', Float32Array.from([999, 500]), [b]),
    encoder_hidden_states: new ort.Tensor('float32', Float32Array.from({ length: b * 77 * 32 }, (_, i) => Math.cos(i * 0.11)), [b, 77, 32]),
  };
}

async function output(s: ort.InferenceSession): Promise<Float32Array> {
  return (await s.run(feeds()))['out_sample']!.data as Float32Array;
}

const inode = (f: string): string => {
  const st = statSync(f);
  return `${st.dev}:${st.ino}`;
};

/** Bytes the files under `dir` take, each inode once. */
function diskBytes(dir: string, seen = new Set<string>()): number {
  let total = 0;
  for (const d of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, d.name);
    if (d.isDirectory()) total += diskBytes(p, seen);
    else if (!seen.has(inode(p))) {
      seen.add(inode(p));
      total += statSync(p).size;
    }
  }
  return total;
}

/** The tiny UNet with ToMe 0.5 applied, written beside the cache (its weights linked, as sdgen's ToMe cache does). */
async function tomeVariant(dir: string): Promise<string> {
  const { applyToMe } = await import('../src/tome/index.js');
  const { DEFAULT_TOME } = await import('../src/tome/options.js');
  const { loadModel } = await import('../src/onnx/model-io.js');
  const { writeModelLinkingWeights } = await import('../src/optimize/fused-model.js');
  const m = await loadModel(UNET, { externalData: 'lazy' });
  assert.ok(applyToMe(m, { ...DEFAULT_TOME, ratio: 0.5 }).patched);
  return writeModelLinkingWeights(m, UNET, path.join(dir, 'tome'));
}

test('a second variant of a model links the weights an earlier entry holds instead of storing them again', async () => {
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-shared-'));
  try {
    const opts = { cacheDir, provider: 'cpu' };
    const first = await createCachedSession(UNET, BASE, opts);
    const plainOut = await output(first.session);
    await first.session.release();
    const dirA = optimizedEntryDir(cacheDir, first.key);
    const indexA = JSON.parse(readFileSync(path.join(dirA, WEIGHTS_INDEX_FILE), 'utf8')) as WeightsIndex;
    assert.ok(indexA.tensors.length > 20, `the first entry is indexed (${indexA.tensors.length} tensors)`);
    assert.ok(indexA.tensors.every((t) => t.file === 'model.weights' && /^[0-9a-f]{64}$/.test(t.hash)));
    assert.deepEqual(readdirSync(dirA).filter((f) => f.startsWith('shared-')), [], 'nothing to share with yet');

    const tome = await tomeVariant(cacheDir);
    const second = await createCachedSession(tome, BASE, opts);
    assert.equal(second.cached, false);
    const tomeOut = await output(second.session);
    await second.session.release();
    const dirB = optimizedEntryDir(cacheDir, second.key);
    assert.equal(inode(path.join(dirB, 'shared-0.weights')), inode(path.join(dirA, 'model.weights')), 'the first entry’s weights are linked, not copied');
    const meta = JSON.parse(readFileSync(path.join(dirB, 'meta.json'), 'utf8')) as { weights: { ownBytes: number; sharedBytes: number } };
    const total = meta.weights.ownBytes + meta.weights.sharedBytes;
    assert.ok(meta.weights.sharedBytes >= 0.95 * total, `shared ${meta.weights.sharedBytes} of ${total} bytes`);
    assert.ok(statSync(path.join(dirB, 'model.weights')).size < 0.05 * statSync(path.join(dirA, 'model.weights')).size, 'the own file holds only what differs');

    // the shared entry loads from the cache and computes what the uncached session computed,
    // also after the entry it shares with is gone (evicted)
    rmSync(dirA, { recursive: true, force: true });
    const again = await createCachedSession(tome, BASE, opts);
    assert.equal(again.cached, true);
    const cachedOut = await output(again.session);
    await again.session.release();
    let d = 0;
    for (let i = 0; i < tomeOut.length; i++) d = Math.max(d, Math.abs(tomeOut[i]! - cachedOut[i]!));
    assert.ok(d <= 1e-5, `${d}`);
    assert.notDeepEqual(Array.from(tomeOut.slice(0, 64)), Array.from(plainOut.slice(0, 64)), 'the ToMe variant is a different graph');

    // the plain model again: its new entry links what the ToMe entry holds
    const third = await createCachedSession(UNET, BASE, opts);
    assert.equal(third.cached, false);
    await third.session.release();
    const dirC = optimizedEntryDir(cacheDir, third.key);
    const metaC = JSON.parse(readFileSync(path.join(dirC, 'meta.json'), 'utf8')) as { weights: { ownBytes: number; sharedBytes: number } };
    assert.ok(metaC.weights.sharedBytes > 0.95 * (metaC.weights.ownBytes + metaC.weights.sharedBytes));
    const reload = await createCachedSession(UNET, BASE, opts);
    assert.equal(reload.cached, true);
    const reloadOut = await output(reload.session);
    await reload.session.release();
    d = 0;
    for (let i = 0; i < plainOut.length; i++) d = Math.max(d, Math.abs(plainOut[i]! - reloadOut[i]!));
    assert.ok(d <= 1e-5, `${d}`);

    // the cap counts a linked file once: the entries' sizes add up to the disk they use
    const root = path.join(cacheDir, 'optimized');
    const pruned = await pruneCacheDir(root, Infinity);
    assert.ok(Math.abs(pruned.totalBytes - diskBytes(root)) <= 2, `${pruned.totalBytes} vs ${diskBytes(root)}`);
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test('too little free disk: the model loads without writing an entry, and says so in one line', async () => {
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-shared-full-'));
  try {
    const r = await createCachedSession(UNET, BASE, { cacheDir, provider: 'cpu', label: 'the UNet', freeBytes: async () => 1e6 });
    assert.equal(r.cached, false);
    assert.match(r.notice ?? '', /^optimized-graph cache: 0\.0 GB free in .*, the UNet needs about 0\.\d GB; loading it without saving its optimized graph$/);
    assert.ok((await output(r.session)).every(Number.isFinite));
    await r.session.release();
    assert.deepEqual(readdirSync(path.join(cacheDir, 'optimized')), [], 'no entry, no temporary directory');
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test('a write that fails (disk full mid-write) loads the model without the cache; a broken model still fails', async () => {
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-shared-enospc-'));
  try {
    // onnxruntime's failure to write the optimized model, as it reaches the caller
    const create = (p: string, o: ort.InferenceSession.SessionOptions) =>
      o.optimizedModelFilePath ? Promise.reject(new Error('Failed to write external initializers to file: No space left on device')) : ort.InferenceSession.create(p, o);
    const r = await createCachedSession(UNET, BASE, { cacheDir, provider: 'cpu', label: 'the UNet' }, create);
    assert.equal(r.cached, false);
    assert.match(r.notice ?? '', /^optimized-graph cache: could not save the optimized graph of the UNet in .* \(disk full or not writable\); loaded it without the cache$/);
    assert.doesNotMatch(r.notice ?? '', /external initializers/);
    await r.session.release();
    assert.deepEqual(readdirSync(path.join(cacheDir, 'optimized')), []);

    const broken = (_p: string, _o: ort.InferenceSession.SessionOptions) => Promise.reject(new Error('model is broken'));
    await assert.rejects(createCachedSession(UNET, BASE, { cacheDir, provider: 'cpu' }, broken), /model is broken/);
    assert.deepEqual(readdirSync(path.join(cacheDir, 'optimized')), []);
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test('shareEntryWeights: links a file only when at least half of it is needed; equal small tensors of another model stay own', async () => {
  const { encodeModel, decodeModel } = await import('../src/onnx/proto.js');
  const { shareEntryWeights } = await import('../src/optimize/shared-weights.js');
  const { mkdirSync, writeFileSync } = await import('node:fs');
  const root = mkdtempSync(path.join(os.tmpdir(), 'sdgen-shared-unit-'));
  try {
    const bytes = (n: number, seed: number) => Buffer.from(Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.1 + seed)).buffer);
    const ones = Buffer.from(new Float32Array(64).fill(1).buffer);
    /** an entry whose model.weights holds `tensors` back to back, as onnxruntime writes it */
    const entry = (name: string, tensors: Buffer[]) => {
      const dir = path.join(root, name);
      mkdirSync(dir, { recursive: true });
      let off = 0;
      const initializer = tensors.map((t, i) => {
        const ext = [{ key: 'location', value: 'model.weights' }, { key: 'offset', value: String(off) }, { key: 'length', value: String(t.length) }];
        off += t.length;
        return { name: `w${i}`, dims: [t.length / 4], dataType: 1, externalData: ext };
      });
      writeFileSync(path.join(dir, 'model.weights'), Buffer.concat(tensors));
      writeFileSync(path.join(dir, 'model.onnx'), encodeModel({ irVersion: 8, opsetImport: [{ domain: '', version: 17 }], graph: { node: [], initializer, input: [], output: [], valueInfo: [] } }));
      return dir;
    };
    const big1 = bytes(4096, 1), big2 = bytes(4096, 2), big3 = bytes(4096, 3);
    // another model's entry: a large tensor of its own and a LayerNorm-like tensor of ones
    const other = entry('other', [bytes(8192, 9), ones]);
    assert.equal((await shareEntryWeights(other, root, 'model.onnx', 'model.weights')).sharedBytes, 0, 'nothing published yet');
    // a variant: the same big tensors as the one to come, the ones too
    const variant = entry('variant', [big1, big2, ones]);
    const rv = await shareEntryWeights(variant, root, 'model.onnx', 'model.weights');
    assert.deepEqual(rv, { sharedBytes: 0, ownBytes: big1.length + big2.length + ones.length, linkedFiles: 0 }, 'the other model’s file is not worth linking for 256 bytes');
    // the new entry: big1, big2 and the ones from the variant (all of its file), big3 its own
    const fresh = entry('fresh.tmp-1', [big1, ones, big3, big2]);
    const r = await shareEntryWeights(fresh, root, 'model.onnx', 'model.weights');
    assert.deepEqual(r, { sharedBytes: big1.length + big2.length + ones.length, ownBytes: big3.length, linkedFiles: 1 });
    assert.equal(inode(path.join(fresh, 'shared-0.weights')), inode(path.join(variant, 'model.weights')));
    assert.equal(statSync(path.join(fresh, 'model.weights')).size, big3.length);
    // every initializer reads back its own bytes from where the rewritten model points
    const m = decodeModel(readFileSync(path.join(fresh, 'model.onnx')));
    const want = [big1, ones, big3, big2];
    m.graph!.initializer.forEach((t, i) => {
      const kv = new Map(t.externalData!.map((e) => [e.key, e.value]));
      const data = readFileSync(path.join(fresh, kv.get('location')!)).subarray(Number(kv.get('offset')), Number(kv.get('offset')) + Number(kv.get('length')));
      assert.ok(Buffer.compare(data, want[i]!) === 0, `initializer ${i} from ${kv.get('location')}`);
    });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
