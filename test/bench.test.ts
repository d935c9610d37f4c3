import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { nodeFlops, summarizeProfile, type ProfileEvent } from '../src/bench/profile.js';
import { predictPeakBytes } from '../src/bench/memory.js';
import { deriveRatios, median, renderMarkdown } from '../src/bench/report.js';
import { callsPerRound, runBench } from '../src/bench/index.js';
import { WORK_EXPONENT, estimateCallMs, estimateImageMs, estimateProcessMs, fits, roundCalls, roundOrder, type TimedConfig } from '../src/bench/budget.js';
import type { ConfigResult } from '../src/bench/types.js';
import { deriveHiresSpeedups, parseHiresSizes, parseHiresSteps, presetToMeKeys, sessionRole, summarizeHiresRuns, unetLatent, type HiresReport, type RunRecord } from '../src/bench/hires.js';
import { unetFeeds } from '../src/bench/inputs.js';
import { FIXTURES_URL as FIXTURES, fx } from './helpers.js';
import ort from 'onnxruntime-node';


test('FLOPs of profile node events', () => {
  // MatMul [2, 4096, 320] × [320, 320] (weight prepacked: not listed)
  assert.equal(nodeFlops('MatMul', { input_type_shape: [{ float: [2, 4096, 320] }], output_type_shape: [{ float: [2, 4096, 320] }] }), 2 * 2 * 4096 * 320 * 320);
  // FusedMatMul with transposed B: [16, 64, 4] × [16, 64, 4]ᵀ → [16, 64, 64]
  assert.equal(nodeFlops('FusedMatMul', { input_type_shape: [{ float: [16, 64, 4] }, { float: [16, 64, 4] }], output_type_shape: [{ float: [16, 64, 64] }] }), 2 * 16 * 64 * 64 * 4);
  // Gemm [2, 320] × W → [2, 1280]
  assert.equal(nodeFlops('Gemm', { input_type_shape: [{ float: [2, 320] }, { float: [1280] }], output_type_shape: [{ float: [2, 1280] }] }), 2 * 2 * 1280 * 320);
  // Conv with its weight listed, and with only parameter_size
  // a constant [B, M, K] broadcast over [N, B, K, P] (the Winograd product): K from A's last axis
  assert.equal(nodeFlops('MatMul', { input_type_shape: [{ float: [36, 64, 32] }, { float: [2, 36, 32, 16] }], output_type_shape: [{ float: [2, 36, 64, 16] }] }), 2 * 2 * 36 * 64 * 16 * 32);
  // a 2-D weight under a batched activation, and a 2-D A times a batched B
  assert.equal(nodeFlops('MatMul', { input_type_shape: [{ float: [2, 77, 32] }, { float: [32, 48] }], output_type_shape: [{ float: [2, 77, 48] }] }), 2 * 2 * 77 * 48 * 32);
  assert.equal(nodeFlops('MatMul', { input_type_shape: [{ float: [16, 36] }, { float: [2, 36, 100] }], output_type_shape: [{ float: [2, 16, 100] }] }), 2 * 2 * 16 * 100 * 36);
  const conv = 2 * (2 * 32 * 8 * 8) * (4 * 3 * 3);
  assert.equal(nodeFlops('Conv', { input_type_shape: [{ float: [2, 4, 8, 8] }, { float: [32, 4, 3, 3] }, { float: [32] }], output_type_shape: [{ float: [2, 32, 8, 8] }] }), conv);
  assert.equal(nodeFlops('Conv', { input_type_shape: [{ float: [2, 4, 8, 8] }], output_type_shape: [{ float: [2, 32, 8, 8] }], parameter_size: String((32 * 4 * 9 + 32) * 4) }), conv);
  // MultiHeadAttention: q [2, 4096, 320], k/v [2, 77, 320]
  assert.equal(nodeFlops('MultiHeadAttention', { input_type_shape: [{ float: [2, 4096, 320] }, { float: [2, 77, 320] }, { float: [2, 77, 320] }], output_type_shape: [{ float: [2, 4096, 320] }] }), 2 * 2 * 4096 * 77 * 640);
  assert.equal(nodeFlops('Add', { input_type_shape: [{ float: [2, 3] }], output_type_shape: [{ float: [2, 3] }] }), 0);
});

test('summarizeProfile takes the chosen model_run and groups per op type', () => {
  const node = (ts: number, op: string, dur: number): ProfileEvent => ({
    cat: 'Node', name: `n${ts}_kernel_time`, ts, dur,
    args: { op_name: op, input_type_shape: [{ float: [4, 8] }], output_type_shape: [{ float: [4, 16] }] },
  });
  const events: ProfileEvent[] = [
    { cat: 'Session', name: 'model_run', ts: 0, dur: 100 },
    node(10, 'MatMul', 50),
    { cat: 'Session', name: 'model_run', ts: 200, dur: 100 },
    node(210, 'MatMul', 20),
    node(240, 'MatMul', 20),
    node(260, 'Softmax', 10),
  ];
  const last = summarizeProfile(events);
  assert.equal(last.flops, 2 * 2 * 4 * 16 * 8);
  assert.equal(last.runMs, 0.1);
  assert.deepEqual(last.byOp.map((o) => [o.op, o.count]), [['MatMul', 2], ['Softmax', 1]]);
  const first = summarizeProfile(events, 0);
  assert.equal(first.byOp[0]!.count, 1);
});

test('helpers: calls per round, median, memory estimate, ratios', () => {
  assert.deepEqual(callsPerRound(3, 2), [2, 1]);
  assert.deepEqual(callsPerRound(1, 2), [1]);
  assert.deepEqual(callsPerRound(4, 4), [1, 1, 1, 1]);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 2, 3]), 2.5);
  const base = { weightsBytes: 3.44e9, size: 768, batch: 1, ratio: 0 };
  const std = predictPeakBytes({ ...base, attention: 'standard' });
  // measured 11.4 GB (memory pattern off, 08:50 UTC); the estimate errs a little high
  assert.ok(std / 1e9 > 11.4 && std / 1e9 < 14, `768² batch 1 standard: 11.4 GB measured, predicted ${std / 1e9}`);
  // 1024² batch 2 ToMe 0.6: 12.85 GB measured
  const big = predictPeakBytes({ weightsBytes: 3.44e9, size: 1024, batch: 2, ratio: 0.6, attention: 'standard' }) / 1e9;
  assert.ok(big > 12.85 && big < 15, `1024² batch 2 ToMe 0.6 standard: 12.85 GB measured, predicted ${big}`);
  assert.ok(predictPeakBytes({ ...base, attention: 'fused' }) < std / 2);
  assert.ok(predictPeakBytes({ ...base, ratio: 0.5, attention: 'standard' }) < std);
  const cfg = (ratio: number, attention: 'standard' | 'fused', ms: number, rss: number): ConfigResult => ({
    size: 512, batch: 2, ratio, attention, status: 'ok', samplesMs: [ms], medianMs: ms, peakRss: rss, predictedPeak: 0,
  });
  const cs = [cfg(0, 'standard', 1000, 8), cfg(0.5, 'standard', 800, 4), cfg(0, 'fused', 500, 2), cfg(0.5, 'fused', 400, 2)];
  deriveRatios(cs);
  assert.equal(cs[1]!.speedup, 1.25);
  assert.equal(cs[1]!.memRatio, 0.5);
  assert.equal(cs[3]!.speedup, 1.25);
  assert.equal(cs[3]!.speedupVsBaseline, 2.5);
});

/** runBench on the tiny fixture pipeline at 64², ToMe 0 and 0.5, fused attention, into `dir`. */
function tinyBench(dir: string, extra: Record<string, unknown>) {
  return runBench({
    model: new URL('tiny-sd1', FIXTURES).pathname,
    sizes: [64],
    ratios: [0, 0.5],
    attention: ['fused'],
    steps: 2,
    imageSize: 0,
    matmulSize: 256,
    out: path.join(dir, 'results'),
    cacheDir: path.join(dir, 'cache'),
    log: () => {},
    ...extra,
  });
}

test('runBench on the tiny pipeline writes JSON and Markdown', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-bench-'));
  try {
    const report = await tinyBench(dir, { batch1Sizes: [64, 128] });
    // batch 2 at ToMe 0 and 0.5, then the same at batch 1 (64 is one of the sizes, 128 is not)
    assert.deepEqual(report.configs.map((c) => [c.size, c.batch, c.ratio]), [[64, 2, 0], [64, 2, 0.5], [64, 1, 0], [64, 1, 0.5]]);
    assert.ok(report.configs[3]!.speedup! > 0 && report.configs[3]!.speedup === report.configs[2]!.medianMs! / report.configs[3]!.medianMs!, 'batch-1 ToMe vs batch-1 r0');
    for (const c of report.configs) {
      assert.equal(c.status, 'ok', c.note);
      // 2 calls in 2 rounds, plus one in round 1 for these speed-up rows (roundCalls)
      assert.equal(c.samplesMs.length, 3);
      assert.ok(c.flops! > 0 && c.peakRss! > 0 && c.efficiency! > 0);
    }
    assert.ok(report.configs[1]!.flops! < report.configs[0]!.flops!, 'ToMe reduces the counted FLOPs');
    // fused rows run sdgen's optimized graph: Winograd convolutions by default (64-channel convs)
    for (const c of report.configs) assert.match(c.note ?? '', /\d+ Winograd convs/);
    assert.equal(report.options.conv, 'winograd');
    // the floor puts each kernel class at its measured rate: convolutions at the conv rate,
    // the rest at the MatMul rate, so it lies between all-at-the-faster and all-at-the-slower
    const mm = report.matmul!.gflops;
    const cv = report.conv!.gflops;
    assert.ok(mm > 0 && cv > 0);
    assert.equal(report.floorGflops, Math.max(mm, cv));
    for (const c of report.configs) {
      const byOp = c.warmupProfile!.byOp;
      const convFlops = byOp.filter((o) => o.op === 'Conv').reduce((a, o) => a + o.flops, 0);
      const otherFlops = byOp.filter((o) => o.op !== 'Conv').reduce((a, o) => a + o.flops, 0);
      assert.ok(convFlops > 0 && otherFlops > 0);
      const expected = convFlops / (cv * 1e6) + otherFlops / (mm * 1e6);
      assert.ok(Math.abs(c.floorMs! - expected) < 1e-9 * expected, `${c.floorMs} vs ${expected}`);
      assert.ok(c.floorMs! >= c.flops! / (Math.max(mm, cv) * 1e6) * (1 - 1e-9) && c.floorMs! <= c.flops! / (Math.min(mm, cv) * 1e6) * (1 + 1e-9));
    }
    assert.equal(report.files.length, 2);
    for (const f of report.files) assert.ok(existsSync(f));
    const md = readFileSync(report.files[1]!, 'utf8');
    assert.match(md, /\| 64² \| 2 \| 0\.5 \| fused \|/);
    assert.match(md, /\| 64² \| 1 \| 0\.5 \| fused \|/);
    assert.equal(renderMarkdown(report), md);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('parseBenchOptions takes the CLI strings', async () => {
  const { parseBenchOptions } = await import('../src/bench/index.js');
  const o = parseBenchOptions({ sizes: '512,768x768', ratios: '0,0.5', attention: 'standard,fused', steps: '3', threads: '2', profile: true, out: 'x.json', device: 'cpu' });
  assert.deepEqual(o.sizes, [512, 768]);
  assert.deepEqual(o.ratios, [0, 0.5]);
  assert.deepEqual(o.attention, ['standard', 'fused']);
  assert.equal(o.steps, 3);
  assert.equal(o.threads, 2);
  assert.equal(o.profile, true);
  assert.equal(o.out, 'x.json');
  assert.deepEqual(parseBenchOptions({ attention: 'auto' }).attention, ['standard', 'fused']);
  assert.throws(() => parseBenchOptions({ sizes: '512x768' }), /square/);
  assert.throws(() => parseBenchOptions({ steps: 'two' }), /integer/);
  assert.throws(() => parseBenchOptions({ device: 'cuda' }), /CPU/);
  assert.equal(parseBenchOptions({ conv: 'direct' }).conv, 'direct');
  assert.deepEqual(parseBenchOptions({ b1Sizes: '768,1024' }).batch1Sizes, [768, 1024]);
  assert.deepEqual(parseBenchOptions({ b1Sizes: 'none' }).batch1Sizes, []);
  assert.equal(parseBenchOptions({ conv: 'auto' }).conv, 'winograd');
  assert.throws(() => parseBenchOptions({ conv: 'fft' }), /--conv: fft/);
});

test('budget estimates: same variant scaled by work^1.15, else the slowest at that work; process = load + warm-up + calls', () => {
  const done: TimedConfig[] = [
    { size: 512, batch: 2, ratio: 0, attention: 'fused', perCallMs: 9000, loadMs: 3000 },
    { size: 512, batch: 2, ratio: 0.5, attention: 'fused', perCallMs: 8000, loadMs: 2000 },
    { size: 768, batch: 2, ratio: 0, attention: 'fused', perCallMs: 22000, loadMs: 3100 },
  ];
  const t = (size: number, ratio: number, attention = 'fused') => ({ size, batch: 2, ratio, attention });
  assert.equal(estimateCallMs(t(512, 0), []), null);
  // the same variant at the nearest size at or below: 768 from 768 (×1), 1024 from 768
  assert.equal(estimateCallMs(t(768, 0), done), 22000);
  assert.ok(Math.abs(estimateCallMs(t(1024, 0), done)! - 22000 * (1024 ** 2 / 768 ** 2) ** WORK_EXPONENT) < 1e-6);
  assert.ok(Math.abs(estimateCallMs(t(1024, 0.5), done)! - 8000 * 4 ** WORK_EXPONENT) < 1e-6);
  // only a larger size of the variant: scaled down from it
  assert.ok(Math.abs(estimateCallMs(t(512, 0), done.slice(2))! - 22000 * (512 ** 2 / 768 ** 2) ** WORK_EXPONENT) < 1e-6);
  // an unseen variant: the slowest call at the same work
  assert.equal(estimateCallMs(t(512, 0.3, 'standard'), done), 9000);
  // an unseen variant at an unseen size: the slowest of everything, scaled
  assert.ok(Math.abs(estimateCallMs(t(640, 0.3, 'standard'), done)! - Math.max(9000 * (640 / 512) ** (2 * WORK_EXPONENT), 8000 * (640 / 512) ** (2 * WORK_EXPONENT), 22000 * (640 / 768) ** (2 * WORK_EXPONENT))) < 1e-6);
  // process: the variant's load + (1 warm-up + calls) × call
  assert.equal(estimateProcessMs(t(768, 0), 1, done), 3100 + 2 * 22000);
  assert.equal(estimateProcessMs(t(512, 0.5), 3, done), 2000 + 4 * 8000);
  assert.equal(estimateProcessMs(t(512, 0.3, 'standard'), 1, done), 3100 + 2 * 9000); // slowest load seen
  // the whole image: steps + 2 more calls (text encoder, VAE, PNG) + warm-up
  assert.equal(estimateImageMs(t(512, 0.5), 20, done), 2000 + 23 * 8000);
  // a measured warm-up: the largest warm-up/call ratio of the variant (else of all), at least 1
  const warm: TimedConfig[] = [
    { size: 512, batch: 2, ratio: 0.5, attention: 'fused', perCallMs: 8000, loadMs: 2000, warmupMs: 12000 },
    { size: 768, batch: 2, ratio: 0.5, attention: 'fused', perCallMs: 20000, loadMs: 2500, warmupMs: 50000 },
    { size: 512, batch: 2, ratio: 0, attention: 'fused', perCallMs: 9000, loadMs: 3000, warmupMs: 4000 },
  ];
  const c1024 = 20000 * (1024 ** 2 / 768 ** 2) ** WORK_EXPONENT;
  assert.ok(Math.abs(estimateProcessMs(t(1024, 0.5), 1, warm)! - (2500 + (2.5 + 1) * c1024)) < 1e-6);
  assert.equal(estimateProcessMs(t(512, 0), 1, warm), 3000 + 2 * 9000); // ratio 4/9 → at least 1
  assert.equal(estimateProcessMs(t(512, 0.3), 1, warm), 3000 + (2.5 + 1) * 9000); // unseen variant: all configs
  // fits: unknown work runs while the reserve fits; no deadline always fits
  assert.equal(fits(0, null, 10, 11), true);
  assert.equal(fits(0, null, 10, 10), false);
  assert.equal(fits(0, 5, 5, 10), true);
  assert.equal(fits(1, 5, 5, 10), false);
  assert.equal(fits(1e12, 1e12, 1e12, Infinity), true);
});

test('runBench within a budget already spent: nothing is started, the table says why, the files are written', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-bench-'));
  try {
    const report = await tinyBench(dir, { imageSize: 64, imageSteps: 2, budget: 1e-6 });
    for (const c of report.configs) {
      assert.equal(c.status, 'skipped');
      assert.match(c.note!, /--budget/);
      assert.equal(c.samplesMs.length, 0);
    }
    assert.equal(report.image?.status, 'skipped');
    assert.match(report.image!.note!, /--budget/);
    const md = readFileSync(report.files[1]!, 'utf8');
    assert.match(md, /skipped: not run: over the 0\.000001-minute --budget/);
    await assert.rejects(runBench({ budget: -1, sizes: [64], model: '/nonexistent', log: () => {} }), /--budget must be a number of minutes/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});


test('round order: the target rows first (batch 1, then ToMe 0 and 0.5, least work first), then the rest in grid order (round 1) or reversed (later rounds)', () => {
  const grid: { size: number; batch: number; ratio: number; attention: string }[] = [];
  for (const size of [512, 768]) {
    for (const ratio of [0, 0.3, 0.5]) for (const attention of ['standard', 'fused']) grid.push({ size, batch: 2, ratio, attention });
    if (size === 768) for (const ratio of [0, 0.5]) for (const attention of ['standard', 'fused']) grid.push({ size, batch: 1, ratio, attention });
  }
  const label = (c: (typeof grid)[number]) => `${c.size}b${c.batch}r${c.ratio}${c.attention[0]}`;
  const targets = [
    '768b1r0s', '768b1r0f', '768b1r0.5s', '768b1r0.5f',
    '512b2r0s', '512b2r0f', '512b2r0.5s', '512b2r0.5f', '768b2r0s', '768b2r0f', '768b2r0.5s', '768b2r0.5f',
  ];
  assert.deepEqual(roundOrder(grid, 0, 0.5).map(label), [...targets, '512b2r0.3s', '512b2r0.3f', '768b2r0.3s', '768b2r0.3f']);
  assert.deepEqual(roundOrder(grid, 1, 0.5).map(label), [...targets, '768b2r0.3f', '768b2r0.3s', '512b2r0.3f', '512b2r0.3s']);
  assert.equal(roundOrder(grid, 2, 0.5).length, grid.length);
});

test('round calls: in round 1 the speed-up rows (batch 1; the smallest size at ToMe 0 and 0.5) get one call more', () => {
  const row = (size: number, batch: number, ratio: number) => ({ size, batch, ratio, attention: 'fused' });
  assert.equal(roundCalls(row(512, 2, 0), 0, 1, 0.5, 512), 2);
  assert.equal(roundCalls(row(512, 2, 0.5), 0, 1, 0.5, 512), 2);
  assert.equal(roundCalls(row(768, 1, 0.5), 0, 1, 0.5, 512), 2);
  assert.equal(roundCalls(row(512, 2, 0.3), 0, 1, 0.5, 512), 1);
  assert.equal(roundCalls(row(768, 2, 0), 0, 1, 0.5, 512), 1);
  assert.equal(roundCalls(row(1024, 2, 0.5), 0, 1, 0.5, 512), 1);
  // later rounds: the round's share
  assert.equal(roundCalls(row(512, 2, 0), 1, 1, 0.5, 512), 1);
  assert.equal(roundCalls(row(768, 1, 0), 1, 3, 0.5, 512), 3);
});

test('parseBenchOptions: --sizes none, --max-downsample and the hires flags', async () => {
  const { parseBenchOptions } = await import('../src/bench/index.js');
  assert.deepEqual(parseBenchOptions({ sizes: 'none' }).sizes, []);
  assert.equal(parseBenchOptions({ maxDownsample: 'auto' }).maxDownsample, 'auto');
  assert.equal(parseBenchOptions({ 'max-downsample': '2' }).maxDownsample, 2);
  assert.throws(() => parseBenchOptions({ maxDownsample: '3' }), /--max-downsample: 3 is not 1, 2, 4, 8 or auto/);
  const o = parseBenchOptions({ hires: '512:1024', hiresSteps: '20+10', hiresPreset: 'tome-hires', hiresUpscaler: 'Lanczos', hiresStrength: '0.5' });
  assert.deepEqual(o.hires, { base: 512, target: 1024 });
  assert.deepEqual(o.hiresSteps, [20, 10]);
  assert.equal(o.hiresPreset, 'tome-hires');
  assert.equal(o.hiresUpscaler, 'Lanczos');
  assert.equal(o.hiresStrength, 0.5);
  assert.deepEqual(parseHiresSizes('1024x1024:2048x2048'), { base: 1024, target: 2048 });
  assert.deepEqual(parseHiresSteps(' 1 + 1 '), [1, 1]);
  assert.equal(parseHiresSizes(undefined), undefined);
  assert.throws(() => parseHiresSizes('512'), /--hires: expected BASE:TARGET/);
  assert.throws(() => parseHiresSizes('512:1024x768'), /square/);
  assert.throws(() => parseHiresSteps('20'), /--hires-steps: expected PASS1\+PASS2/);
  assert.throws(() => parseBenchOptions({ hiresPreset: '' }), /--hires-preset needs a name/);
  // checked before anything loads (the model path does not exist)
  const bad = (extra: Record<string, unknown>) => runBench({ model: '/nonexistent', sizes: 'none', log: () => {}, ...extra });
  await assert.rejects(bad({ hires: '512:512' }), /target size must be larger than the base size/);
  await assert.rejects(bad({ hires: '512:1000' }), /multiple of 64/);
  await assert.rejects(bad({ hires: '64:128', hiresSteps: '0+1' }), /both passes need at least 1 step/);
  await assert.rejects(bad({ hires: '64:128', hiresStrength: 0 }), /--hires-strength must be in \(0, 1\]/);
  await assert.rejects(bad({ hires: '64:128', hiresPreset: 'no-such-preset' }), /unknown preset "no-such-preset"/);
  await assert.rejects(bad({ hires: '64:128', hiresPreset: 'quality' }), /--hires-preset quality: the preset does not turn ToMe on/);
});

test('hires runs: the role of a session run, and their split into passes', () => {
  assert.equal(sessionRole(['input_ids'], { input_ids: [1, 77] }), 'text');
  assert.equal(sessionRole(['sample', 'timestep', 'encoder_hidden_states'], { sample: [2, 4, 64, 64] }), 'unet');
  assert.equal(sessionRole(['latent_sample'], { latent_sample: [1, 4, 64, 64] }), 'decoder');
  assert.equal(sessionRole(['sample'], { sample: [1, 3, 512, 512] }), 'encoder');
  assert.equal(sessionRole(['x'], { x: [1, 4, 64, 64] }), 'decoder');
  assert.equal(sessionRole(['a', 'b'], { a: [1, 4, 8, 8], b: [1, 3, 8, 8] }), 'other');
  assert.deepEqual(unetLatent({ sample: [2, 4, 64, 96], timestep: [2] }), [64, 96]);
  // a pixel-space hires image 512 → 1024: text, 2 UNet calls at 64², decode + encode, text, 3
  // UNet calls at 128², two decoder tiles
  const recs: RunRecord[] = [
    { role: 'text', start: 0, ms: 5 },
    { role: 'unet', start: 10, ms: 100, latent: [64, 64] },
    { role: 'unet', start: 120, ms: 80, latent: [64, 64] },
    { role: 'decoder', start: 210, ms: 30 },
    { role: 'encoder', start: 250, ms: 20 },
    { role: 'text', start: 280, ms: 7 },
    { role: 'unet', start: 300, ms: 400, latent: [128, 128] },
    { role: 'unet', start: 710, ms: 300, latent: [128, 128] },
    { role: 'unet', start: 1020, ms: 310, latent: [128, 128] },
    { role: 'decoder', start: 1340, ms: 60 },
    { role: 'decoder', start: 1410, ms: 61 },
  ];
  const s = summarizeHiresRuns(recs, { size: 512, latent: 64 }, { size: 1024, latent: 128 });
  assert.deepEqual(s.pass1, { size: 512, calls: 2, unetMs: 180, perCallMs: 90, firstCallMs: 100 });
  assert.deepEqual(s.pass2, { size: 1024, calls: 3, unetMs: 1010, perCallMs: 310, firstCallMs: 400 });
  assert.equal(s.textEncoderMs, 12);
  assert.equal(s.upscaleDecodeMs, 30);
  assert.equal(s.upscaleEncodeMs, 20);
  assert.equal(s.betweenMs, 300 - 200);
  assert.equal(s.finalDecodeRunsMs, 121);
  assert.throws(() => summarizeHiresRuns(recs, { size: 512, latent: 64 }, { size: 512, latent: 64 }), /different latent sizes/);
  const r: HiresReport = {
    base: 512, target: 1024, steps: [2, 3], upscaler: 'Nearest', strength: 0.7, preset: 'tome-hires', attention: 'fused',
    runs: [
      { label: 'tome-hires', tome: 'ratio 0.5', status: 'ok', pass2: { size: 1024, calls: 3, unetMs: 600, perCallMs: 200 }, totalMs: 1000 },
      { label: 'off', tome: 'off', status: 'ok', pass2: { size: 1024, calls: 3, unetMs: 900, perCallMs: 320 }, totalMs: 1300 },
    ],
  };
  deriveHiresSpeedups(r);
  assert.equal(r.pass2PerCallSpeedup, 1.6);
  assert.equal(r.pass2Speedup, 1.5);
  assert.equal(r.imageSpeedup, 1.3);
  // only a preset's ToMe keys are taken
  assert.deepEqual(presetToMeKeys({ tome: 0.5, tomeMinWidth: 768, steps: 30, sampler: 'ddim' }), { tome: 0.5, tomeMinWidth: 768 });
});

test('memory estimate: an SDXL UNet\'s scores are of its first attention level (downsample 2, 10 heads)', () => {
  const e = { weightsBytes: 0, size: 1024, batch: 2, ratio: 0, attention: 'standard' as const };
  const acts = 40 * 2 * 128 * 128 * 320 * 4;
  assert.equal(predictPeakBytes(e), acts + 2.75 * 2 * 8 * 16384 ** 2 * 4);
  assert.equal(predictPeakBytes({ ...e, heads: 10, attentionLevel: 2 }), acts + 2.75 * 2 * 10 * 4096 ** 2 * 4);
  // ToMe 0.5 merges half of that level's 4096 tokens
  assert.equal(predictPeakBytes({ ...e, ratio: 0.5, heads: 10, attentionLevel: 2 }), acts + 2.75 * 2 * 10 * 2048 ** 2 * 4);
});

test('unetFeeds: an SDXL UNet gets text_embeds and time_ids of the widths its graph gives', async () => {
  const session = await ort.InferenceSession.create(fx('tiny-sdxl/unet/model.onnx'));
  try {
    const feeds = unetFeeds(session, 2, 16, 16, 77);
    assert.deepEqual(Object.keys(feeds).sort(), ['encoder_hidden_states', 'sample', 'text_embeds', 'time_ids', 'timestep']);
    assert.deepEqual(feeds['sample']!.dims, [2, 4, 16, 16]);
    assert.deepEqual(feeds['encoder_hidden_states']!.dims, [2, 77, 96]);
    assert.deepEqual(feeds['text_embeds']!.dims, [2, 64]);
    assert.deepEqual(feeds['time_ids']!.dims, [2, 6]);
    // original size, crop top-left, target size of an uncropped 128² image, per row
    assert.deepEqual([...(feeds['time_ids']!.data as Float32Array)], [128, 128, 0, 0, 128, 128, 128, 128, 0, 0, 128, 128]);
    const out = await session.run(feeds);
    assert.deepEqual(Object.values(out)[0]!.dims, [2, 4, 16, 16]);
  } finally {
    await session.release();
  }
});

test('runBench --hires on the tiny pipeline: both passes timed, with the preset\'s ToMe and without', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-bench-'));
  try {
    // pixel space (Nearest), so that the upscale's decode and encode are measured too; the
    // `tome` preset has no size threshold, so ToMe runs in both passes at these tiny sizes
    const report = await tinyBench(dir, { sizes: 'none', hires: '64:128', hiresSteps: '2+3', hiresPreset: 'tome', hiresUpscaler: 'Nearest' });
    assert.equal(report.configs.length, 0);
    const h = report.hires!;
    assert.deepEqual([h.base, h.target, h.steps, h.upscaler, h.strength, h.preset], [64, 128, [2, 3], 'Nearest', 0.7, 'tome']);
    assert.deepEqual(h.runs.map((r) => [r.label, r.status, r.pass1Tome, r.pass2Tome]), [['tome', 'ok', true, true], ['off', 'ok', false, false]]);
    for (const r of h.runs) {
      // pass 2 runs exactly its hires steps at strength 0.7 (the schedule is lengthened)
      assert.deepEqual([r.pass1!.size, r.pass1!.calls, r.pass2!.size, r.pass2!.calls], [64, 2, 128, 3]);
      assert.equal(r.note, undefined, 'the steps the pipeline reports per pass agree with the calls counted');
      assert.ok(r.pass1!.unetMs > 0 && r.pass2!.unetMs > 0 && r.pass2!.perCallMs! > 0);
      assert.ok(r.upscaleDecodeMs! > 0 && r.upscaleEncodeMs! > 0 && r.vaeDecodeMs! > 0 && r.textEncoderMs! > 0);
      assert.ok(r.betweenMs! >= r.upscaleDecodeMs! + r.upscaleEncodeMs!);
      const parts = r.pass1!.unetMs + r.pass2!.unetMs + r.betweenMs! + r.vaeDecodeMs! + r.pngMs!;
      assert.ok(parts <= r.totalMs!, `${parts} ≤ ${r.totalMs}`);
      assert.ok(r.peakRss! > 0 && r.loadMs! > 0);
    }
    assert.equal(h.pass2Speedup, h.runs[1]!.pass2!.unetMs / h.runs[0]!.pass2!.unetMs);
    assert.equal(h.imageSpeedup, h.runs[1]!.totalMs! / h.runs[0]!.totalMs!);
    const md = readFileSync(report.files[1]!, 'utf8');
    assert.match(md, /## Hires fix \(64² → 128², 2 \+ 3 steps, upscaler Nearest, denoising 0\.7, fused attention\)/);
    assert.match(md, /\| tome \(ratio 0\.5, max downsample 1\) \| yes \| yes \|/);
    assert.match(md, /\| off \| no \| no \|/);
    assert.doesNotMatch(md, /## UNet calls/);
    const json = JSON.parse(readFileSync(report.files[0]!, 'utf8')) as { hires: HiresReport };
    assert.deepEqual(json.hires.runs.map((r) => r.pass2!.calls), [3, 3]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('runBench on the tiny SDXL UNet: ToMe at max downsample auto (2), FLOP-implied speed-up and the part achieved', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-bench-'));
  try {
    const report = await tinyBench(dir, { model: new URL('tiny-sdxl', FIXTURES).pathname, sizes: [128], steps: 1, batch1Sizes: [] });
    assert.deepEqual(report.configs.map((c) => [c.size, c.batch, c.ratio, c.status]), [[128, 2, 0, 'ok'], [128, 2, 0.5, 'ok']]);
    assert.equal(report.options.maxDownsample, 'auto');
    const [r0, r5] = report.configs as [ConfigResult, ConfigResult];
    assert.equal(r5.maxDownsample, 2);
    assert.match(r5.note!, /ToMe blocks \(max downsample 2\)/);
    assert.ok(r0.flops! > 0 && r5.flops! < r0.flops!, 'ToMe reduces the counted FLOPs');
    assert.equal(r5.flopSpeedup, r0.flops! / r5.flops!);
    assert.equal(r5.achieved, r5.speedup! / r5.flopSpeedup!);
    assert.equal(r0.flopSpeedup, undefined);
    const md = readFileSync(report.files[1]!, 'utf8');
    assert.match(md, /\| 128² \| 2 \| 0\.5 \| fused \| [\d.]+ \| 2 \| [\d.]+× \| [\d.]+× \| \d+% \|/);
    assert.match(md, /ratios 0,0\.5 \(max downsample auto\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
