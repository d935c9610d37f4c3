import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parsePromptFile, splitShellLike } from '../src/run/prompt-file.js';
import {
  leadingIndex, Manifest, manifestPath, nextIndexFrom, parseNameTemplate, readManifest, renderName, safeFileName, uniqueName, writeFileAtomic,
  writeNewFile, ensureDir, type NameValues,
} from '../src/run/output.js';
import { buildJobs, ImageNamer, planImages, withModelDefaults, type JobContext, type JobSpec } from '../src/run/jobs.js';
import { finishedImages, orderJobs, runJobs, type PipelineLike, type RunReporter } from '../src/run/runner.js';
import { resolveOptions, type PartialOptions } from '../src/config/options.js';
import { UsageError } from '../src/errors.js';
import type { GeneratedImage, GenerationParams, ProgressEvents } from '../src/pipeline/types.js';

// ------------------------------------------------------------------ prompt files

test('splitShellLike: quotes and escapes like a shell', () => {
  assert.deepEqual(splitShellLike(`--prompt "a \\"red\\" fox" --negative_prompt 'it''s' --seed  5`), ['--prompt', 'a "red" fox', '--negative_prompt', 'its', '--seed', '5']);
  assert.deepEqual(splitShellLike('a\\ b "" c'), ['a b', '', 'c']);
  assert.throws(() => splitShellLike('--prompt "open'), /unterminated/);
});

const MIXED = [
  '# batch of 20 lines', //                                                                 1 comment
  'a red fox', //                                                                           2
  '', //                                                                                    3 blank
  '--prompt "a castle, on a hill" --negative_prompt "blurry" --seed 7 --steps 12', //      4
  '--prompt "sunset" --cfg_scale 5.5 --width 640 --height 384 --sampler_name "Euler a"', // 5
  '--prompt "two" --batch_size 2 --n_iter 3', //                                           6
  '--prompt "tome" --tome 0.5 --sx 2 --sy 2 --max-downsample 2 --tome-rand --merge-mlp --no-merge-attn', // 7
  '{"prompt": "json line", "seed": 3, "negativePrompt": "bad", "cfg": 6}', //               8
  '--prompt "bad steps" --steps many', //                                                   9 BAD
  '   a prompt with spaces around   ', //                                                  10
  '# another comment', //                                                                   11
  '--prompt "kebab" --negative-prompt "x" --batch-size 2 --n-iter 1 --scheduler ddim --eta 0.3', // 12
  'a plain prompt: with colon, and comma', //                                              13
  '--prompt "unknown" --frobnicate 3', //                                                  14 BAD
  '{"prompt": "json2", "sampler_name": "DPM++ 2M", "tome_min_width": 768, "no_emphasis": true}', // 15
  '--prompt=eq --seed=11', //                                                               16
  '--prompt "clip" --clip-skip 2 --no-emphasis', //                                         17
  'plain -- with a lone double dash', //                                                    18
  '--prompt "model" --model /m2', //                                                         19
  'last line', //                                                                           20
].join('\n');

test('parsePromptFile: a mixed 20-line file with 2 bad lines', () => {
  const r = parsePromptFile(MIXED, 'jobs.txt');
  assert.deepEqual(r.errors.map((e) => [e.file, e.line]), [['jobs.txt', 9], ['jobs.txt', 14]]);
  assert.match(r.errors[0]!.message, /--steps: expected an integer/);
  assert.match(r.errors[1]!.message, /unknown option --frobnicate/);
  assert.deepEqual(r.entries.map((e) => e.line), [2, 4, 5, 6, 7, 8, 10, 12, 13, 15, 16, 17, 18, 19, 20]);
  const at = (line: number) => r.entries.find((e) => e.line === line)!;
  assert.deepEqual(at(2), { file: 'jobs.txt', line: 2, prompt: 'a red fox', options: {} });
  assert.deepEqual(at(4).options, { negativePrompt: 'blurry', seed: 7, steps: 12 });
  assert.equal(at(4).prompt, 'a castle, on a hill');
  assert.deepEqual(at(5).options, { cfg: 5.5, width: 640, height: 384, scheduler: 'Euler a' });
  assert.deepEqual(at(6).options, { batchSize: 2, nIter: 3 });
  assert.deepEqual(at(7).options, { tome: 0.5, sx: 2, sy: 2, maxDownsample: 2, tomeRand: true, mergeMlp: true, mergeAttn: false });
  assert.deepEqual(at(8), { file: 'jobs.txt', line: 8, prompt: 'json line', options: { seed: 3, negativePrompt: 'bad', cfg: 6 } });
  assert.equal(at(10).prompt, 'a prompt with spaces around');
  assert.deepEqual(at(12).options, { negativePrompt: 'x', batchSize: 2, nIter: 1, scheduler: 'ddim', eta: 0.3 });
  assert.equal(at(13).prompt, 'a plain prompt: with colon, and comma');
  assert.deepEqual(at(15).options, { scheduler: 'DPM++ 2M', tomeMinWidth: 768, emphasis: false });
  assert.deepEqual([at(16).prompt, at(16).options], ['eq', { seed: 11 }]);
  assert.deepEqual(at(17).options, { clipSkip: 2, emphasis: false });
  assert.equal(at(18).prompt, 'plain -- with a lone double dash');
  assert.deepEqual(at(19).options, { model: '/m2' });
});

test('parsePromptFile: jsonl errors and CRLF line numbers', () => {
  const r = parsePromptFile('{"prompt": "a"}\r\n{"prompt": 5}\r\n{"prompt": "b", "steps": 0}\r\n{oops\r\n{"prompt": "d", "colour": 1}\r\n{"prompt":"c","width":64}', 'x.jsonl');
  assert.deepEqual(r.entries.map((e) => e.line), [1, 6]);
  assert.deepEqual(r.errors.map((e) => e.line), [2, 3, 4, 5]);
  assert.match(r.errors[2]!.message, /invalid JSON/);
  assert.match(r.errors[3]!.message, /unknown option "colour"/);
  assert.match(parsePromptFile('[1]\n{"a": [}', 'y').errors.map((e) => e.message).join(), /invalid JSON/);
});

test('parsePromptFile: option line errors', () => {
  const r = parsePromptFile('a fox --seed 5\n--prompt\n--no-steps 3\n--tome-rand yes', 'f');
  assert.deepEqual(r.errors.map((e) => e.line), [1, 2, 3, 4]);
  assert.match(r.errors[0]!.message, /expected an option starting with --/);
  assert.match(r.errors[1]!.message, /--prompt needs a value/);
});

// ------------------------------------------------------------------ names

const values = (over: Partial<NameValues> = {}): NameValues => ({
  index: 7, seed: 42, prompt: 'a red fox', negative: '', steps: 20, cfg: 7, sampler: 'euler_a', width: 512, height: 512, job: 1, model: 'sd15', date: '2026-01-02', time: '030405', ...over,
});

test('name templates: fields, padding, truncation, sanitizing', () => {
  const r = (t: string, v: Partial<NameValues> = {}) => renderName(parseNameTemplate(t), values(v));
  assert.equal(r('{index:05}-{seed}'), '00007-42.png');
  assert.equal(r('{index:05}-{seed}-{prompt:5}'), '00007-42-a red.png');
  assert.equal(r('{date}_{time}_{sampler}_{steps}_{cfg}_{width}x{height}_{job}_{model}'), '2026-01-02_030405_euler_a_20_7_512x512_1_sd15.png');
  assert.equal(r('{prompt}', { prompt: 'a/b\\c:d*e?f"g<h>i|j\u0001k\nl' }), 'a_b_c_d_e_f_g_h_i_j k l.png');
  assert.equal(r('{{literal}}-{seed}'), '{literal}-42.png');
  assert.equal(r('{prompt}', { prompt: 'dots...  ' }), 'dots.png');
  assert.equal(r('{prompt}', { prompt: 'CON' }), '_CON.png');
  assert.equal(r('{prompt}', { prompt: 'lpt1.txt' }), '_lpt1.txt.png');
  assert.equal(r('{prompt}', { prompt: '   ' }), '_.png');
  const long = r('{prompt}', { prompt: 'é'.repeat(300) });
  assert.ok(Buffer.byteLength(long) <= 200, `${Buffer.byteLength(long)} bytes`);
  assert.ok(long.endsWith('é.png'), 'no split character');
  assert.throws(() => parseNameTemplate('{nope}'), (e: Error) => e instanceof UsageError && /unknown field \{nope\}/.test(e.message));
  assert.throws(() => parseNameTemplate('{seed'), UsageError);
  assert.throws(() => parseNameTemplate('{prompt:x}'), UsageError);
  assert.equal(safeFileName('a.', '.png'), 'a.png');
});

test('names: collisions get -2, -3; next index from existing files', () => {
  const taken = new Set(['00001-42.png', '00001-42-2.png']);
  assert.equal(uniqueName('00001-42.png', (n) => taken.has(n)), '00001-42-3.png');
  assert.equal(uniqueName('free.png', (n) => taken.has(n)), 'free.png');
  assert.equal(leadingIndex('00012-5.png'), 12);
  assert.equal(nextIndexFrom(['00003-1.png', '00012-5.png', 'notes.txt', '00099.txt', 'x.png']), 13);
  assert.equal(nextIndexFrom([]), 1);
});

// ------------------------------------------------------------------ jobs

function ctx(seeds: number[] = [1000, 2000, 3000, 4000, 5000]): JobContext {
  let k = 0;
  return {
    modelDefaults: (m) => (m ? { name: path.basename(m), width: 256, height: 192, scheduler: 'pndm' } : undefined),
    resolveScheduler: (n) => {
      const map: Record<string, string> = { 'euler a': 'euler_a', euler_a: 'euler_a', ddim: 'ddim', 'dpm++ 2m': 'dpmpp_2m' };
      const hit = map[n.toLowerCase()];
      if (!hit) throw new UsageError(`unknown sampler "${n}"`);
      return hit;
    },
    randomSeed: () => seeds[k++]!,
  };
}

function spec(prompt: string, o: PartialOptions, line?: number): JobSpec {
  return { prompt, options: resolveOptions({ model: '/models/tiny' }, o), source: line ? { file: 'f.txt', line } : undefined };
}

test('buildJobs: defaults from the model, seeds, per-line errors, plan hash', () => {
  const specs = [
    spec('a', {}, 1),
    spec('b', { seed: 5, scheduler: 'Euler a', batchSize: 2, nIter: 2, width: 512, height: 512 }, 2),
    spec('c', { scheduler: 'nope' }, 3),
    spec('d', { tome: 0.9 }, 4),
    spec('e', { tome: 0.5, tomeMinWidth: 768 }, 5),
  ];
  const b = buildJobs(specs, ctx());
  assert.deepEqual(b.errors.map((e) => [e.line, e.message]), [[3, 'unknown sampler "nope"'], [4, 'ToMe ratio must satisfy 0 ≤ R ≤ 1 − 1/(sx·sy) = 0.75 for sx=2, sy=2 (got 0.9)']]);
  assert.equal(b.jobs.length, 3);
  const [a, bb, e] = b.jobs as [typeof b.jobs[0], typeof b.jobs[0], typeof b.jobs[0]];
  assert.deepEqual([a.params.width, a.params.height, a.params.scheduler, a.params.seed, a.requestedSeed], [256, 192, 'pndm', 1000, -1]);
  assert.deepEqual([bb.params.seed, bb.params.scheduler, bb.imageCount], [5, 'euler_a', 4]);
  assert.deepEqual([e.tomeOn, e.tomeReason, e.params.tome.ratio, e.params.tome.minWidth], [false, 'image 256x192 is below the ToMe minimum 768x0', 0.5, 768]);
  // the same list with other random seeds has the same hash; reusing seeds reproduces the plan
  const again = buildJobs(specs, ctx([7, 8]));
  assert.equal(again.planHash, b.planHash);
  assert.equal(again.jobs[0]!.params.seed, 7);
  assert.equal(buildJobs(specs, ctx([7, 8]), [1000, 5, 2000]).jobs[0]!.params.seed, 1000);
  assert.notEqual(buildJobs(specs.slice(1), ctx()).planHash, b.planHash);
  assert.throws(() => buildJobs([spec('x', { scheduler: 'nope' })], ctx()), UsageError, 'without a source the error is thrown');
});

test('planImages: seeds advance per image, names unique against disk and run', () => {
  const { jobs } = buildJobs([spec('same', { seed: 5, batchSize: 2, nIter: 2 }), spec('same', { seed: 6 })], ctx());
  const onDisk = new Set(['6.png']);
  const imgs = planImages(jobs, { template: '{seed}', startIndex: 1, exists: (f) => onDisk.has(f), overwrite: false });
  assert.deepEqual(imgs.map((i) => [i.job, i.image, i.seed, i.file]), [
    [0, 0, 5, '5.png'], [0, 1, 6, '6-2.png'], [0, 2, 7, '7.png'], [0, 3, 8, '8.png'], [1, 0, 6, '6-3.png'],
  ]);
  const ow = planImages(jobs, { template: '{seed}', startIndex: 1, exists: (f) => onDisk.has(f), overwrite: true });
  assert.deepEqual(ow.map((i) => i.file), ['5.png', '6.png', '7.png', '8.png', '6-2.png'], 'overwrite never overwrites images of the same run');
  const idx = planImages(jobs, { template: '{index:05}-{seed}', startIndex: 12, exists: () => false, overwrite: false });
  assert.deepEqual(idx.map((i) => i.file), ['00012-5.png', '00013-6.png', '00014-7.png', '00015-8.png', '00016-6.png']);
});

test('withModelDefaults fills in only size and scheduler: seeds, values and the plan hash stay', () => {
  const noModels: JobContext = { ...ctx([77, 88]), modelDefaults: () => undefined };
  const b = buildJobs([spec('a', { tome: 0.5, tomeMinWidth: 200 }), spec('b', { width: 64, scheduler: 'ddim' })], noModels);
  assert.deepEqual(b.jobs.map((j) => [j.params.width, j.params.height, j.params.scheduler, j.params.seed]), [[512, 512, '', 77], [64, 512, 'ddim', 88]]);
  const d = { name: 'tiny', width: 128, height: 96, scheduler: 'pndm' };
  const [a, bb] = b.jobs.map((j) => withModelDefaults(j, d)) as [typeof b.jobs[0], typeof b.jobs[0]];
  assert.deepEqual([a.params.width, a.params.height, a.params.scheduler, a.params.seed, a.modelName], [128, 96, 'pndm', 77, 'tiny']);
  assert.deepEqual([bb.params.width, bb.params.height, bb.params.scheduler, bb.params.seed], [64, 96, 'ddim', 88]);
  // the ToMe decision follows the size: 512 wide applies, 128 wide is below the 200 minimum
  assert.deepEqual([b.jobs[0]!.tomeOn, a.tomeOn], [true, false]);
  assert.equal(buildJobs([spec('a', { tome: 0.5, tomeMinWidth: 200 }), spec('b', { width: 64, scheduler: 'ddim' })], ctx()).planHash, b.planHash, 'model defaults do not change the plan hash');
});

test('ImageNamer.fallback: the next {index}, or -2, -3 without one', () => {
  const { jobs } = buildJobs([spec('x', { seed: 5, nIter: 2 })], ctx());
  const imgs = planImages(jobs, { template: '{index:05}-{seed}', startIndex: 3, exists: () => false, overwrite: false });
  const idx = new ImageNamer('{index:05}-{seed}', 3);
  assert.deepEqual([1, 2].map((k) => idx.fallback(jobs[0]!, imgs[1]!, k)), ['00005-6.png', '00006-6.png']);
  const plain = new ImageNamer('{prompt}-{seed}', 1);
  const p = planImages(jobs, { template: '{prompt}-{seed}', startIndex: 1, exists: () => false, overwrite: false });
  assert.deepEqual([1, 2].map((k) => plain.fallback(jobs[0]!, p[0]!, k)), ['x-5-2.png', 'x-5-3.png']);
});

test('orderJobs groups by model, ToMe decision and size, stably', () => {
  const specs = [
    spec('1', { model: '/a', width: 512 }), spec('2', { model: '/b' }), spec('3', { model: '/a', tome: 0.5 }),
    spec('4', { model: '/a', width: 256 }), spec('5', { model: '/b' }),
  ];
  const { jobs } = buildJobs(specs, ctx([1, 2, 3, 4, 5]));
  assert.deepEqual(orderJobs(jobs).map((j) => j.params.prompt), ['4', '1', '3', '2', '5']);
});

// ------------------------------------------------------------------ runner (fake pipeline)

/** A deterministic fake pipeline: the image bytes depend on prompt and seed only. */
class FakePipeline implements PipelineLike {
  calls: GenerationParams[] = [];
  disposed = false;
  constructor(private readonly abortAfterImages = Infinity, private readonly controller?: AbortController, private readonly failPrompt?: string) {}
  produced = 0;
  readonly lastFlags: boolean[] = [];
  /** [prompt, first image, count] of each call */
  slices: Array<[string, number, number]> = [];
  async *generate(
    params: GenerationParams, events?: ProgressEvents, signal?: AbortSignal, options?: { images?: { first: number; count: number }; last?: boolean },
  ): AsyncGenerator<GeneratedImage> {
    this.calls.push(params);
    this.lastFlags.push(options?.last === true);
    const { first, count } = options?.images ?? { first: 0, count: params.batchSize * params.nIter };
    this.slices.push([params.prompt, first, count]);
    if (params.prompt === this.failPrompt) throw new UsageError('width must be a multiple of 16 for this model');
    for (let s = 1; s <= params.steps; s++) {
      if (signal?.aborted) throw Object.assign(new Error('aborted'), { name: 'AbortError' });
      events?.onStep?.(s, params.steps, 1, 1);
    }
    for (let i = first; i < first + count; i++) {
      const seed = params.seed + i;
      const rgb = new Uint8Array(params.width * params.height * 3).fill((seed * 31 + params.prompt.length) & 255);
      this.produced++;
      if (this.produced > this.abortAfterImages) {
        this.controller?.abort();
        throw Object.assign(new Error('aborted'), { name: 'AbortError' });
      }
      yield {
        index: i, seed, width: params.width, height: params.height, rgb, params: { ...params, seed }, tomeApplied: false, modelName: 'fake',
        timings: { textEncoderMs: 1, unetMs: 2, vaeMs: 3, totalMs: 6 },
      };
    }
  }
  async dispose(): Promise<void> {
    this.disposed = true;
  }
}

function quietReporter(): RunReporter & { failed: string[] } {
  const failed: string[] = [];
  return { failed, start() {}, notice() {}, imageWritten() {}, jobFailed: (_j, e) => void failed.push((e as Error).message), finish() {} };
}

function planFor(dir: string, specs: JobSpec[]) {
  const { jobs } = buildJobs(specs, ctx());
  const images = planImages(jobs, { template: '{index:05}-{seed}', startIndex: 1, exists: (f) => existsSync(path.join(dir, f)), overwrite: false });
  return { jobs, images, outDir: dir, manifest: manifestPath(dir, 't') };
}

const encode = async (out: GeneratedImage) => Buffer.concat([Buffer.from(`${out.params.prompt}|${out.seed}|`), Buffer.from(out.rgb)]);

test('runJobs: each model is loaded for its first job in run order (ToMe off first), so the pipeline opens the UNet graph that job runs', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-run-first-'));
  try {
    const specs = [
      spec('t', { model: '/a', seed: 1, width: 8, height: 8, steps: 1, tome: 0.5 }),
      spec('p', { model: '/a', seed: 2, width: 8, height: 8, steps: 1 }),
      spec('u', { model: '/b', seed: 3, nIter: 2, width: 8, height: 8, steps: 1, tome: 0.5 }),
    ];
    const loads: [string | undefined, string][] = [];
    const pipes: FakePipeline[] = [];
    const s = await runJobs(planFor(dir, specs), {
      loadPipeline: async (model, _events, first) => {
        loads.push([model, first.params.prompt]);
        pipes.push(new FakePipeline());
        return pipes.at(-1)!;
      },
      encode,
      reporter: quietReporter(),
    });
    assert.equal(s.written, 4);
    assert.deepEqual(loads, [['/a', 'p'], ['/b', 'u']]);
    // each model's last generate call says so (the pipeline may release its UNet before decoding)
    assert.deepEqual(pipes.map((p) => [p.slices.map(([prompt, first]) => `${prompt}${first}`), p.lastFlags]), [
      [['p0', 't0'], [false, true]],
      [['u0', 'u1'], [false, true]],
    ]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('runJobs: writes every image, one manifest line each, no temp files', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-run-'));
  try {
    const specs = [spec('a', { seed: 1, width: 8, height: 8, steps: 2 }), spec('b', { seed: 10, batchSize: 2, nIter: 2, width: 8, height: 8, steps: 2 })];
    const fake = new FakePipeline();
    const s = await runJobs(planFor(dir, specs), { loadPipeline: async () => fake, encode, reporter: quietReporter() });
    assert.deepEqual([s.written, s.skipped, s.failed, s.interrupted], [5, 0, 0, false]);
    assert.deepEqual(readdirSync(dir).sort(), ['00001-1.png', '00002-10.png', '00003-11.png', '00004-12.png', '00005-13.png', 'sdgen-run-t.jsonl']);
    const lines = readFileSync(path.join(dir, 'sdgen-run-t.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => [l.file, l.index, l.seed, l.params.seed, l.params.batchSize, l.params.nIter]), [
      ['00001-1.png', 0, 1, 1, 1, 1], ['00002-10.png', 1, 10, 10, 2, 2], ['00003-11.png', 2, 11, 11, 2, 2], ['00004-12.png', 3, 12, 12, 2, 2], ['00005-13.png', 4, 13, 13, 2, 2],
    ]);
    // one generate call per batch: the job's own params and the slice of its images
    assert.deepEqual(fake.calls.map((c) => [c.prompt, c.seed, c.batchSize, c.nIter]), [['a', 1, 1, 1], ['b', 10, 2, 2], ['b', 10, 2, 2]]);
    assert.deepEqual(fake.slices, [['a', 0, 1], ['b', 0, 2], ['b', 2, 2]]);
    assert.ok(fake.disposed);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('runJobs: interrupted then resumed ends with the same files as an uninterrupted run', async () => {
  const full = mkdtempSync(path.join(os.tmpdir(), 'sdgen-full-'));
  const part = mkdtempSync(path.join(os.tmpdir(), 'sdgen-part-'));
  try {
    const specs = [
      spec('one', { seed: 1, width: 8, height: 8, steps: 2 }),
      spec('two', { seed: 20, batchSize: 2, nIter: 2, width: 8, height: 8, steps: 2 }),
      spec('three', { seed: 30, width: 8, height: 8, steps: 2 }),
    ];
    await runJobs(planFor(full, specs), { loadPipeline: async () => new FakePipeline(), encode, reporter: quietReporter() });

    const plan = planFor(part, specs);
    const controller = new AbortController();
    const s1 = await runJobs(plan, { loadPipeline: async () => new FakePipeline(2, controller), encode, reporter: quietReporter(), signal: controller.signal });
    assert.equal(s1.interrupted, true);
    assert.equal(s1.written, 2);
    // a partial batch: 'two' iteration 0 wrote its first image only
    const done = finishedImages(part, plan.manifest);
    assert.deepEqual([...done].sort(), [0, 1]);
    const resumed = new FakePipeline();
    const s2 = await runJobs({ ...plan, done }, { loadPipeline: async () => resumed, encode, reporter: quietReporter() });
    assert.deepEqual([s2.written, s2.skipped, s2.interrupted], [4, 2, false]);
    // the unfinished batch is redone whole (same composition), finished jobs are not called
    assert.deepEqual(resumed.slices, [['two', 0, 2], ['two', 2, 2], ['three', 0, 1]]);
    const names = (d: string) => readdirSync(d).filter((f) => f.endsWith('.png')).sort();
    assert.deepEqual(names(part), names(full));
    for (const f of names(full)) assert.deepEqual(readFileSync(path.join(part, f)), readFileSync(path.join(full, f)), f);
    const manifestFiles = readFileSync(plan.manifest, 'utf8').trim().split('\n').map((l) => JSON.parse(l).file);
    assert.deepEqual([...manifestFiles].sort(), names(full), 'one manifest line per image, none duplicated');
    // resuming a finished run does nothing
    const idle = new FakePipeline();
    const s3 = await runJobs({ ...plan, done: finishedImages(part, plan.manifest) }, { loadPipeline: async () => idle, encode, reporter: quietReporter() });
    assert.deepEqual([s3.written, s3.skipped, idle.calls.length], [0, 6, 0]);
  } finally {
    rmSync(full, { recursive: true, force: true });
    rmSync(part, { recursive: true, force: true });
  }
});

test('runJobs: a failing job is reported and the run goes on', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-fail-'));
  try {
    const rep = quietReporter();
    const specs = [spec('ok1', { seed: 1, width: 8, height: 8, steps: 1 }), spec('bad', { seed: 2, nIter: 3, width: 8, height: 8, steps: 1 }), spec('ok2', { seed: 3, width: 8, height: 8, steps: 1 })];
    const s = await runJobs(planFor(dir, specs), { loadPipeline: async () => new FakePipeline(Infinity, undefined, 'bad'), encode, reporter: rep });
    assert.deepEqual([s.written, s.failed], [2, 3]);
    assert.deepEqual(rep.failed, ['width must be a multiple of 16 for this model']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('writeFileAtomic, writeNewFile and the manifest', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-io-'));
  try {
    const f = path.join(dir, 'x.png');
    writeFileAtomic(f, Buffer.from('abc'));
    writeFileAtomic(f, 'def');
    assert.equal(readFileSync(f, 'utf8'), 'def');
    assert.deepEqual(readdirSync(dir), ['x.png']);
    assert.throws(() => writeFileAtomic(path.join(dir, 'missing', 'y.png'), 'z'), /cannot write/);
    // a taken name is never replaced: the next one is claimed
    const next = (_t: string, k: number) => `x-${k + 1}.png`;
    assert.deepEqual(writeNewFile(dir, 'x.png', Buffer.from('new'), { next }), { name: 'x-2.png', adopted: false });
    assert.deepEqual(writeNewFile(dir, 'x.png', Buffer.from('newer'), { next }), { name: 'x-3.png', adopted: false });
    assert.equal(readFileSync(f, 'utf8'), 'def');
    assert.equal(readFileSync(path.join(dir, 'x-3.png'), 'utf8'), 'newer');
    // a resumed run takes a file with its very bytes as its own, not a copy under a new name
    assert.deepEqual(writeNewFile(dir, 'x.png', Buffer.from('def'), { next, adoptIdentical: true }), { name: 'x.png', adopted: true });
    assert.deepEqual(writeNewFile(dir, 'x.png', Buffer.from('other'), { next, adoptIdentical: true }), { name: 'x-4.png', adopted: false });
    assert.deepEqual(writeNewFile(dir, 'x.png', Buffer.from('over'), { next, overwrite: true }), { name: 'x.png', adopted: false });
    assert.equal(readFileSync(f, 'utf8'), 'over');
    assert.deepEqual(readdirSync(dir).filter((n) => n.endsWith('.tmp')), [], 'no temporary files left');

    const m = new Manifest(manifestPath(dir, 'k'));
    const rec = (file: string, index: number) => ({ file, index, job: 0, image: index, seed: 1, tomeApplied: false, params: {}, timings: {}, time: 't' });
    m.append(rec('x.png', 0));
    writeFileSync(m.file, readFileSync(m.file, 'utf8') + '{"file": "torn');
    assert.deepEqual(readManifest(m.file).records.map((r) => r.file), ['x.png']);
    assert.equal(readManifest(m.file).bad, 1, 'the torn line is counted');
    // the next process cuts the torn line before it appends: its record starts on a line of its own
    const m2 = new Manifest(m.file);
    m2.append(rec('x-2.png', 1));
    assert.equal(readFileSync(m.file, 'utf8').split('\n').length, 3);
    assert.deepEqual(readManifest(m.file), { records: [rec('x.png', 0), rec('x-2.png', 1)], bad: 0 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ensureDir: creates parents; a path that cannot be made is one error, not a hang', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdgen-mk-'));
  try {
    ensureDir(path.join(dir, 'a', 'b', 'c'));
    assert.ok(existsSync(path.join(dir, 'a', 'b', 'c')));
    ensureDir(path.join(dir, 'a', 'b', 'c'));
    writeFileSync(path.join(dir, 'file'), '');
    assert.throws(() => ensureDir(path.join(dir, 'file', 'x')), /cannot create the output directory \(not a directory, ENOTDIR\)/);
    if (existsSync('/proc/self')) assert.throws(() => ensureDir('/proc/sdgen-x/y'), /cannot create the output directory/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
