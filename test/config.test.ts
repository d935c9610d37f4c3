import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { coerceOption, resolveOptions, SPEC_BY_KEY, validateConfigObject, DEFAULT_OPTIONS } from '../src/config/options.js';
import { loadRc, rcFromObject } from '../src/config/rc.js';
import { findPreset, listPresets } from '../src/config/presets.js';
import { UsageError } from '../src/errors.js';

function tmp(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'sdgen-config-'));
}

test('coerceOption: integers, ranges, multiples, enums, booleans', () => {
  const spec = (k: string) => SPEC_BY_KEY.get(k)!;
  assert.equal(coerceOption(spec('steps'), '30', '--steps'), 30);
  assert.equal(coerceOption(spec('steps'), 30, 'steps'), 30);
  assert.equal(coerceOption(spec('cfg'), '7.5', '--cfg'), 7.5);
  assert.equal(coerceOption(spec('seed'), '-1', '--seed'), -1);
  assert.equal(coerceOption(spec('maxDownsample'), '4', '--max-downsample'), 4);
  assert.equal(coerceOption(spec('tomeRand'), 'true', 'x'), true);
  assert.throws(() => coerceOption(spec('steps'), 'abc', '--steps'), (e: Error) => e instanceof UsageError && e.message === '--steps: expected an integer from 1 to 1000, got "abc"');
  assert.throws(() => coerceOption(spec('steps'), '2.5', '--steps'), UsageError);
  assert.throws(() => coerceOption(spec('steps'), '0', '--steps'), UsageError);
  assert.throws(() => coerceOption(spec('width'), '500', '--width'), /multiple of 8/);
  assert.throws(() => coerceOption(spec('seed'), '-2', '--seed'), UsageError);
  assert.throws(() => coerceOption(spec('device'), 'tpu', '--device'), /one of auto, cpu, cuda, dml, coreml, webgpu/);
  assert.throws(() => coerceOption(spec('maxDownsample'), '3', '--max-downsample'), /one of 1, 2, 4, 8/);
  assert.throws(() => coerceOption(spec('cfg'), '1e999', '--cfg'), UsageError);
  assert.throws(() => coerceOption(spec('steps'), '12abc', '--steps'), UsageError);
});

test('config objects: unknown keys name the key and the file', () => {
  assert.deepEqual(validateConfigObject({ steps: 10, negativePrompt: 'x' }, 'f'), { steps: 10, negativePrompt: 'x' });
  assert.throws(() => validateConfigObject({ stepz: 10 }, '/a/.sdgenrc'), (e: Error) => e instanceof UsageError && e.message.startsWith('/a/.sdgenrc: unknown key "stepz"'));
  assert.throws(() => validateConfigObject({ negative_prompt: 'x' }, 'rc'), /unknown key "negative_prompt" \(did you mean "negativePrompt"\?\)/);
  assert.throws(() => validateConfigObject({ steps: 'many' }, 'rc'), /rc: steps: expected an integer/);
  assert.throws(() => rcFromObject({ presets: { p: { bogus: 1 } } }, '/x/.sdgenrc.json'), /\/x\/.sdgenrc.json: presets.p: unknown key "bogus"/);
});

test('precedence: flags > preset > rc > defaults', () => {
  const rc = { steps: 10, cfg: 5, out: 'rc-out' };
  const preset = { steps: 15, tome: 0.5 };
  const flags = { steps: 30 };
  const o = resolveOptions(rc, preset, flags);
  assert.equal(o.steps, 30);
  assert.equal(o.tome, 0.5);
  assert.equal(o.cfg, 5);
  assert.equal(o.out, 'rc-out');
  assert.equal(o.sx, DEFAULT_OPTIONS.sx);
  assert.equal(resolveOptions(rc, preset, { steps: undefined }).steps, 15, 'undefined never overrides');
});

test('loadRc: .sdgenrc YAML found from a subdirectory, up to the stop directory', async () => {
  const root = tmp();
  try {
    const sub = path.join(root, 'a', 'b');
    mkdirSync(sub, { recursive: true });
    writeFileSync(path.join(root, '.sdgenrc'), 'steps: 12\nnegativePrompt: "blurry, low quality"\nmodel: ./models/sd15\nout: /abs/out\npresets:\n  mine:\n    cfg: 4\n    model: m2\n    description: my preset\n');
    const rc = await loadRc({ cwd: sub, stopDir: root });
    assert.equal(rc.file, path.join(root, '.sdgenrc'));
    // paths in a config file are relative to the file's folder
    assert.deepEqual(rc.options, { steps: 12, negativePrompt: 'blurry, low quality', model: path.join(root, 'models', 'sd15'), out: '/abs/out' });
    assert.deepEqual(rc.presets['mine']?.options, { cfg: 4, model: path.join(root, 'm2') });
    assert.equal(rc.presets['mine']?.description, 'my preset');
    // a nearer file wins
    writeFileSync(path.join(root, 'a', '.sdgenrc.json'), JSON.stringify({ steps: 8 }));
    assert.deepEqual((await loadRc({ cwd: sub, stopDir: root })).options, { steps: 8 });
    // the stop directory bounds the search
    assert.equal((await loadRc({ cwd: sub, stopDir: sub })).file, undefined);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('loadRc: package.json sdgen key, .sdgenrc.yaml, explicit --config, errors', async () => {
  const root = tmp();
  try {
    writeFileSync(path.join(root, 'package.json'), JSON.stringify({ name: 'x', sdgen: { cfg: 3 } }));
    assert.deepEqual((await loadRc({ cwd: root, stopDir: root })).options, { cfg: 3 });
    const d2 = path.join(root, 'y');
    mkdirSync(d2);
    writeFileSync(path.join(d2, '.sdgenrc.yaml'), 'width: 640\nheight: 384\n');
    assert.deepEqual((await loadRc({ cwd: d2, stopDir: d2 })).options, { width: 640, height: 384 });
    const explicit = path.join(root, 'custom.json');
    writeFileSync(explicit, JSON.stringify({ seed: 5 }));
    assert.deepEqual((await loadRc({ cwd: d2, configFile: explicit })).options, { seed: 5 });
    await assert.rejects(loadRc({ cwd: root, configFile: path.join(root, 'missing.json') }), (e: Error) => e instanceof UsageError && /cannot read/.test(e.message));
    const bad = path.join(root, 'bad.json');
    writeFileSync(bad, JSON.stringify({ tomeRatio: 0.5 }));
    await assert.rejects(loadRc({ cwd: root, configFile: bad }), (e: Error) => e instanceof UsageError && e.message.includes(bad) && e.message.includes('"tomeRatio"'));
    const broken = path.join(root, 'broken.json');
    writeFileSync(broken, '{ "steps": ');
    await assert.rejects(loadRc({ cwd: root, configFile: broken }), (e: Error) => e instanceof UsageError && e.message.includes('broken.json'));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('presets: shipped ones, user directory and rc override in that order', async () => {
  const root = tmp();
  try {
    const builtin = listPresets({ userDir: path.join(root, 'none') });
    for (const n of ['fast', 'quality', 'tome', 'tome-hires']) assert.ok(builtin.has(n), n);
    assert.equal(builtin.get('tome')!.options.tome, 0.5);
    assert.deepEqual(
      [builtin.get('tome-hires')!.options.tome, builtin.get('tome-hires')!.options.tomeMinWidth, builtin.get('tome-hires')!.options.tomeMinHeight],
      [0.5, 768, 768],
    );
    const userDir = path.join(root, 'presets');
    mkdirSync(userDir);
    writeFileSync(path.join(userDir, 'fast.json'), JSON.stringify({ steps: 6 }));
    writeFileSync(path.join(userDir, 'night.json'), JSON.stringify({ steps: 50, description: 'overnight' }));
    const rc = rcFromObject({ presets: { night: { steps: 60 } } }, '/r/.sdgenrc');
    const all = listPresets({ userDir, rc });
    assert.equal(all.get('fast')!.options.steps, 6);
    assert.equal(all.get('fast')!.kind, 'user');
    assert.equal(all.get('night')!.options.steps, 60);
    assert.equal(all.get('night')!.kind, 'rc');
    assert.throws(() => findPreset('nope', { userDir }), (e: Error) => e instanceof UsageError && /unknown preset "nope"/.test(e.message));
    writeFileSync(path.join(userDir, 'bad.json'), JSON.stringify({ step: 1 }));
    assert.throws(() => listPresets({ userDir }), (e: Error) => e.message.includes(path.join(userDir, 'bad.json')) && e.message.includes('"step"'));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
