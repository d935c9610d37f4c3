import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { createCachedSession, optimizedEntryDir, optimizedModelKey } from '../src/optimize/session-cache.js';
import { DEFAULT_CACHE_MAX_GB, cacheMaxBytes, entriesToEvict, pruneCacheDir, pruneDerived, touchEntry } from '../src/optimize/cache-prune.js';
import { UsageError } from '../src/errors.js';
import { FIXTURES_URL as FIXTURES } from './helpers.js';

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
  const { DEFAULT_TOME } = await import('../src/tome/options.js');
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

test('cache cap: SDGEN_CACHE_MAX_GB parsed; least recently used entries evicted first, never a kept one', () => {
  const GB = 1024 ** 3;
  assert.equal(cacheMaxBytes({}), DEFAULT_CACHE_MAX_GB * GB);
  assert.equal(cacheMaxBytes({ SDGEN_CACHE_MAX_GB: '12.5' }), 12.5 * GB);
  assert.equal(cacheMaxBytes({ SDGEN_CACHE_MAX_GB: '0' }), Infinity);
  assert.equal(cacheMaxBytes({ SDGEN_CACHE_MAX_GB: 'off' }), Infinity);
  assert.throws(() => cacheMaxBytes({ SDGEN_CACHE_MAX_GB: 'lots' }), (e: Error) => e instanceof UsageError && /SDGEN_CACHE_MAX_GB.*"lots"/.test(e.message));
  assert.throws(() => cacheMaxBytes({ SDGEN_CACHE_MAX_GB: '-1' }), UsageError);
  const entries = [
    { name: 'new', bytes: 5, usedMs: 300 },
    { name: 'old', bytes: 4, usedMs: 100 },
    { name: 'mid', bytes: 3, usedMs: 200 },
  ];
  assert.deepEqual(entriesToEvict(entries, 12), []);
  assert.deepEqual(entriesToEvict(entries, 11).map((e) => e.name), ['old']);
  assert.deepEqual(entriesToEvict(entries, 5).map((e) => e.name), ['old', 'mid']);
  assert.deepEqual(entriesToEvict(entries, 5, new Set(['old'])).map((e) => e.name), ['mid', 'new']);
  assert.deepEqual(entriesToEvict(entries, 0, new Set(['new'])).map((e) => e.name), ['old', 'mid']);
});

test('pruneCacheDir: removes the least recently used entries to the cap and stale half-written ones', async () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'sdgen-prune-'));
  try {
    const now = Date.now();
    const entry = (name: string, bytes: number, ageMs: number, meta = true) => {
      const dir = path.join(root, name);
      mkdirSync(dir);
      writeFileSync(path.join(dir, 'model.weights'), Buffer.alloc(bytes));
      const t = new Date(now - ageMs);
      if (meta) {
        writeFileSync(path.join(dir, 'meta.json'), '{}');
        utimesSync(path.join(dir, 'meta.json'), t, t);
      }
      utimesSync(dir, t, t);
    };
    entry('a', 1000, 3000);
    entry('b', 2000, 2000);
    entry('c', 1500, 1000);
    entry('c.tmp-1-old', 700, 2 * 24 * 3600 * 1000, false);
    entry('d.tmp-2-running', 900, 1000, false);
    const r = await pruneCacheDir(root, 3600, new Set(['a']), now);
    // a is kept although oldest; b goes (least recently used after it); c then fits: 1000 + 1500 + 4 + 2 ≤ 3600
    assert.deepEqual(readdirSync(root).sort(), ['a', 'c', 'd.tmp-2-running']);
    assert.deepEqual(r.removed.sort(), ['b', 'c.tmp-1-old']);
    assert.equal(r.freedBytes, 2000 + 2);
    assert.equal(r.totalBytes, 1000 + 2 + 1500 + 2);
    // a hit refreshes the entry's last use
    await touchEntry(path.join(root, 'a'));
    assert.ok(statSync(path.join(root, 'a', 'meta.json')).mtimeMs > now - 1000);
    // no cap: nothing removed; a missing root is no error
    assert.deepEqual((await pruneCacheDir(root, Infinity)).removed, []);
    assert.deepEqual((await pruneCacheDir(path.join(root, 'missing'), 0)).removed, []);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('pruneDerived: entries of models that are gone go, and Winograd weights files no entry or bench variant uses', async () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'sdgen-derived-'));
  try {
    const now = Date.now();
    const models = path.join(root, 'models');
    mkdirSync(models);
    const live = path.join(models, 'live.onnx');
    writeFileSync(live, 'x');
    const gone = path.join(models, 'gone.onnx');
    const cache = path.join(root, 'cache');
    const weights = path.join(cache, 'winograd', 'weights');
    mkdirSync(weights, { recursive: true });
    const old = new Date(now - 2 * 3600 * 1000);
    const weightsFile = (name: string, bytes: number, fresh = false) => {
      const f = path.join(weights, name);
      writeFileSync(f, Buffer.alloc(bytes));
      if (!fresh) utimesSync(f, old, old);
      return f;
    };
    const entry = (kind: string, name: string, meta: Record<string, unknown>, link?: string) => {
      const dir = path.join(cache, kind, name);
      mkdirSync(dir, { recursive: true });
      writeFileSync(path.join(dir, 'meta.json'), JSON.stringify(meta));
      if (link) linkSync(link, path.join(dir, 'winograd.weights'));
      return dir;
    };
    const wLive = weightsFile('live.bin', 100);
    const wGone = weightsFile('gone.bin', 200);
    const wByPath = weightsFile('bypath.bin', 300);
    const wBench = weightsFile('bench.bin', 400);
    const wFresh = weightsFile('fresh.bin', 500, true);
    weightsFile('orphan.bin', 600);
    // old, but reused within the hour: its `.used` mark is fresh (the file's own time is left alone)
    const wReused = weightsFile('reused.bin', 700);
    writeFileSync(`${wReused}.used`, '');
    // old, and its mark is old too: goes with it
    const wStale = weightsFile('stale.bin', 800);
    writeFileSync(`${wStale}.used`, '');
    utimesSync(`${wStale}.used`, old, old);
    entry('tome', 't-live', { source: live });
    entry('tome', 't-gone', { source: gone });
    entry('tome', 't-relative', { source: 'gone.onnx' }); // not judged: relative to some other cwd
    entry('fused', 'f-gone', { source: gone });
    entry('winograd', 'w-live', { source: live }, wLive);
    entry('winograd', 'w-of-fused-gone', { source: path.join(cache, 'fused', 'f-gone', 'model.onnx') }, wGone);
    entry('winograd', 'w-copied', { source: live, files: { 'winograd.weights': wByPath } });
    entry('bench-variants', 'v1', {}, wBench);
    entry('optimized', 'o-gone', { source: gone });
    entry('optimized', 'o-live', { source: live });
    const r = await pruneDerived(cache, now);
    assert.deepEqual(r.removed.sort(), ['fused/f-gone', 'optimized/o-gone', 'tome/t-gone', 'winograd/w-of-fused-gone', 'winograd/weights/gone.bin', 'winograd/weights/orphan.bin', 'winograd/weights/stale.bin']);
    assert.deepEqual(readdirSync(weights).sort(), ['bench.bin', 'bypath.bin', 'fresh.bin', 'live.bin', 'reused.bin', 'reused.bin.used']);
    assert.deepEqual(readdirSync(path.join(cache, 'tome')).sort(), ['t-live', 't-relative']);
    assert.ok(existsSync(wFresh));
    assert.ok(r.freedBytes >= 200 + 600);
    // nothing left to remove; a missing cache is no error
    assert.deepEqual((await pruneDerived(cache, now)).removed, []);
    assert.deepEqual((await pruneDerived(path.join(root, 'missing'), now)).removed, []);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('the optimized-graph cache keeps to its cap: publishing an entry evicts the least recently used other one', async () => {
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-optcache-cap-'));
  try {
    const base: ort.InferenceSession.SessionOptions = { executionProviders: ['cpu'], intraOpNumThreads: 1, logSeverityLevel: 3 };
    // a cap below one entry: each new entry stays, the previous ones go
    const opts = (variant: string) => ({ cacheDir, provider: 'cpu', variant, maxBytes: 1 });
    // an entry derived from a model that is gone: removed when an entry is published
    mkdirSync(path.join(cacheDir, 'tome', 'stale'), { recursive: true });
    writeFileSync(path.join(cacheDir, 'tome', 'stale', 'meta.json'), JSON.stringify({ source: path.join(cacheDir, 'no-such-model.onnx') }));
    const a = await createCachedSession(UNET, base, opts('a'));
    assert.deepEqual(readdirSync(path.join(cacheDir, 'tome')), []);
    await a.session.release();
    const b = await createCachedSession(UNET, base, opts('b'));
    await b.session.release();
    assert.deepEqual(readdirSync(path.join(cacheDir, 'optimized')), [b.key]);
    // unbounded: both stay, and a hit on b keeps it
    const c = await createCachedSession(UNET, base, { ...opts('c'), maxBytes: Infinity });
    await c.session.release();
    assert.deepEqual(readdirSync(path.join(cacheDir, 'optimized')).sort(), [b.key, c.key].sort());
    const hit = await createCachedSession(UNET, base, opts('b'));
    assert.equal(hit.cached, true);
    await hit.session.release();
    assert.ok(statSync(path.join(optimizedEntryDir(cacheDir, b.key), 'meta.json')).mtimeMs >= statSync(path.join(optimizedEntryDir(cacheDir, c.key), 'meta.json')).mtimeMs);
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});
