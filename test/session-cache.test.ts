import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { createCachedSession, optimizedEntryDir, optimizedModelKey } from '../src/optimize/session-cache.js';

const FIXTURES = new URL('../../shared/fixtures/', import.meta.url);
const UNET = new URL('tiny-sd1/unet/model.onnx', FIXTURES).pathname;

function feeds(): Record<string, ort.Tensor> {
  const b = 2, h = 8, w = 8;
  const s = Float32Array.from({ length: b * 4 * h * w }, (_, i) => Math.sin(i * 0.37));
  const e = Float32Array.from({ length: b * 77 * 32 }, (_, i) => Math.cos(i * 0.11));
  return {
    sample: new ort.Tensor('float32', s, [b, 4, h, w]),
    timestep: new ort.Tensor('float32', Float32Array.from([999, 500]), [b]),
    encoder_hidden_states: new ort.Tensor('float32', e, [b, 77, 32]),
  };
}

test('optimized-graph cache: first load writes an entry, second load uses it and computes the same', async () => {
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-optcache-'));
  try {
    const opts = { cacheDir, provider: 'cpu' };
    const base: ort.InferenceSession.SessionOptions = { executionProviders: ['cpu'], intraOpNumThreads: 1, logSeverityLevel: 3 };
    const first = await createCachedSession(UNET, base, opts);
    assert.equal(first.cached, false);
    const dir = optimizedEntryDir(cacheDir, first.key);
    assert.ok(existsSync(path.join(dir, 'model.onnx')));
    assert.ok(existsSync(path.join(dir, 'model.weights')), 'weights written as external data');
    assert.deepEqual(readdirSync(path.join(cacheDir, 'optimized')), [first.key], 'no temporary directory left');
    const second = await createCachedSession(UNET, base, opts);
    assert.equal(second.cached, true);
    assert.equal(second.key, first.key);
    const a = (await first.session.run(feeds()))['out_sample']!.data as Float32Array;
    const b = (await second.session.run(feeds()))['out_sample']!.data as Float32Array;
    let m = 0;
    for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
    assert.ok(m <= 1e-5, `max abs ${m}`);
    await first.session.release();
    await second.session.release();
    // provider and variant are part of the key
    assert.notEqual(await optimizedModelKey(UNET, { ...opts, provider: 'cuda' }), first.key);
    assert.notEqual(await optimizedModelKey(UNET, { ...opts, variant: 'tome 0.5' }), first.key);
    assert.notEqual(await optimizedModelKey(UNET, { ...opts, level: 'extended' }), first.key);
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test('a corrupt cached entry is dropped and the source model is loaded', async () => {
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-optcache-'));
  try {
    const opts = { cacheDir, provider: 'cpu' };
    const base: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 1, logSeverityLevel: 4 };
    const first = await createCachedSession(UNET, base, opts);
    await first.session.release();
    const { writeFileSync } = await import('node:fs');
    writeFileSync(path.join(optimizedEntryDir(cacheDir, first.key), 'model.onnx'), 'garbage');
    const again = await createCachedSession(UNET, base, opts);
    assert.equal(again.cached, false);
    assert.ok(existsSync(path.join(optimizedEntryDir(cacheDir, first.key), 'meta.json')), 'entry rewritten');
    await again.session.release();
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test('a ToMe-patched UNet (If subgraphs) is cached too: the entry onnxruntime writes is repaired and loads back', async () => {
  const { applyToMe } = await import('../src/tome/index.js');
  const { DEFAULT_TOME } = await import('../src/tome/types.js');
  const { loadModel } = await import('../src/onnx/model-io.js');
  const { writeModelLinkingWeights } = await import('../src/optimize/fused-model.js');
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-optcache-tome-'));
  try {
    const m = await loadModel(UNET, { externalData: 'lazy' });
    assert.ok(applyToMe(m, { ...DEFAULT_TOME, ratio: 0.5 }).patched);
    assert.ok(m.graph!.node.some((n) => n.opType === 'If'), 'the patched graph has control flow');
    const file = await writeModelLinkingWeights(m, UNET, path.join(cacheDir, 'tome'));
    const base: ort.InferenceSession.SessionOptions = { executionProviders: ['cpu'], intraOpNumThreads: 1, logSeverityLevel: 3 };
    const opts = { cacheDir, provider: 'cpu' };
    const first = await createCachedSession(file, base, opts);
    assert.equal(first.cached, false);
    const second = await createCachedSession(file, base, opts);
    assert.equal(second.cached, true, 'the cached entry loads (it used to be rejected and rewritten on every load)');
    const a = (await first.session.run(feeds()))['out_sample']!.data as Float32Array;
    const b = (await second.session.run(feeds()))['out_sample']!.data as Float32Array;
    let d = 0;
    for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
    assert.ok(d <= 1e-5, `${d}`);
    await first.session.release();
    await second.session.release();
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});
