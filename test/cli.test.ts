import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync, mkdirSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { spawnCli, type Ran, FIXTURES_DIR as FIXTURES, CLI, CLI_IS_BIN } from './helpers.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const MAIN = path.join(ROOT, 'src/cli/main.ts');
const TSX = import.meta.resolve('tsx');
process.stderr.write(`# cli.test: running ${CLI.length === 1 ? 'the built bin/sdgen.js' : 'src/cli/main.ts through tsx'}\n`);

let tmp = '';
let home = '';
before(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'sdgen-cli-'));
  home = path.join(tmp, 'home');
  mkdirSync(home);
});
after(() => rmSync(tmp, { recursive: true, force: true }));

/** Runs the CLI in `cwd` with an isolated HOME / XDG config (no user presets or rc). */
function sdgen(args: string[], opts: { cwd?: string; input?: string } = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [...CLI, ...args], {
    cwd: opts.cwd ?? tmp,
    input: opts.input,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    env: { ...process.env, HOME: home, XDG_CONFIG_HOME: path.join(home, '.config'), NO_COLOR: '1' },
    timeout: 120_000,
  });
}


/** Like sdgen() but asynchronous, so independent runs overlap. */
const run = (args: string[], opts: { cwd?: string } = {}): Promise<Ran> => spawnCli(CLI, args, { cwd: opts.cwd ?? tmp, home });

function oneErrorLine(r: Ran, code: number, re: RegExp): void {
  assert.equal(r.status, code, `exit ${r.status}, stderr: ${r.stderr}`);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line expected, got: ${r.stderr}`);
  assert.match(lines[0]!, re);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  assert.equal(r.stdout, '');
}

test('colour only on a TTY, never with NO_COLOR or --no-color', async () => {
  const { colorEnabled } = await import('../src/cli/ui.js');
  const tty = { isTTY: true } as NodeJS.WriteStream;
  const pipe = { isTTY: false } as NodeJS.WriteStream;
  assert.equal(colorEnabled(tty, true, {}), true);
  assert.equal(colorEnabled(pipe, true, {}), false);
  assert.equal(colorEnabled(tty, false, {}), false, '--no-color');
  assert.equal(colorEnabled(tty, true, { NO_COLOR: '1' }), false);
  assert.equal(colorEnabled(tty, true, { NO_COLOR: '' }), true, 'an empty NO_COLOR does not count');
  // a child with stderr on a pipe writes no escape codes
  const r = await run(['a fox', '--steps', 'x', '--dry-run']);
  assert.doesNotMatch(r.stderr, /\x1b\[/);
});

test('bad flag values exit 2 with one line and no stack', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['a fox', '--steps', 'abc', '--dry-run'], /--steps: expected an integer from 1 to 1000, got "abc"/],
    [['a fox', '--width', '500', '--dry-run'], /--width: .*multiple of 8/],
    [['a fox', '--device', 'tpu', '--dry-run'], /--device: expected one of auto, cpu/],
    [['a fox', '--tome', '0.9', '--dry-run'], /ToMe ratio must satisfy/],
    [['a fox', '--max-downsample', '3', '--dry-run'], /--max-downsample: expected one of 1, 2, 4, 8/],
    [['a fox', '--cfg', '-1', '--dry-run'], /--cfg/],
    [['a fox', '--bogus'], /unknown option '--bogus'/],
    [['a fox', '--name', '{nope}', '--dry-run'], /--name: unknown field \{nope\}/],
    [['a fox', '--scheduler', 'warp', '--dry-run'], /unknown sampler "warp"/],
    [['a fox', '--preset', 'nope', '--dry-run'], /unknown preset "nope"/],
    [['--dry-run'], /no prompt/],
    [['synth', '--arch', 'huge', '--out', 'x'], /--arch/],
  ];
  const results = await Promise.all(cases.map(([args]) => run(args)));
  results.forEach((r, i) => oneErrorLine(r, 2, cases[i]![1]));
});

test('a bad SDGEN_CACHE_MAX_GB ends the run before it starts: exit 2, one line, nothing written', () => {
  const out = path.join(tmp, 'cap-out');
  process.env['SDGEN_CACHE_MAX_GB'] = 'lots';
  try {
    const r = sdgen(['a fox', '--model', path.join(FIXTURES, 'tiny-sd1'), '--steps', '1', '--out', out]);
    oneErrorLine({ status: r.status, stdout: r.stdout, stderr: r.stderr }, 2, /SDGEN_CACHE_MAX_GB must be a number of GB .*"lots"/);
  } finally {
    delete process.env['SDGEN_CACHE_MAX_GB'];
  }
  assert.equal(existsSync(out), false);
});

test('runtime errors exit 1 with one line', async () => {
  writeFileSync(path.join(tmp, 'not.png'), 'hello');
  const [a, b, c, v] = await Promise.all([
    run(['a fox', '--model', path.join(tmp, 'no-such-model'), '--steps', '2']),
    run(['metadata', path.join(tmp, 'missing.png')]),
    run(['metadata', path.join(tmp, 'not.png')]),
    run(['a fox', '--model', path.join(tmp, 'no-such-model'), '--verbose']),
  ]);
  oneErrorLine(a, 1, /no-such-model/);
  oneErrorLine(b, 1, /missing\.png: no such file/);
  oneErrorLine(c, 1, /not a PNG/);
  assert.equal(v.status, 1);
  assert.match(v.stderr, /\n\s+at /, '--verbose prints the stack');
});

test('.sdgenrc unknown key is an error naming the key and the file; rc < preset < flags', async () => {
  const bad = path.join(tmp, 'rc-bad');
  const good = path.join(tmp, 'rc-good');
  mkdirSync(bad);
  mkdirSync(good);
  writeFileSync(path.join(bad, '.sdgenrc'), 'steps: 5\nsampler: ddim\n');
  writeFileSync(path.join(good, '.sdgenrc'), 'steps: 5\nscheduler: ddim\npresets:\n  night:\n    steps: 44\n');
  const [e, r, p, f] = await Promise.all([
    run(['a fox', '--dry-run'], { cwd: bad }),
    run(['a fox', '--dry-run', '--seed', '1'], { cwd: good }),
    run(['a fox', '--dry-run', '--seed', '1', '--preset', 'night'], { cwd: good }),
    run(['a fox', '--dry-run', '--seed', '1', '--preset', 'night', '--steps', '9'], { cwd: good }),
  ]);
  oneErrorLine(e, 2, new RegExp(`${path.join(bad, '.sdgenrc').replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: unknown key "sampler"`));
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /seed 1 {2}512x512 {2}ddim {2}5 steps/);
  assert.match(p.stdout, /44 steps/);
  assert.match(f.stdout, /9 steps/);
});

test('samplers and presets', async () => {
  const userDir = path.join(home, '.config', 'sdgen', 'presets');
  mkdirSync(userDir, { recursive: true });
  writeFileSync(path.join(userDir, 'mine.json'), JSON.stringify({ steps: 3, description: 'user one' }));
  try {
    const [s, sj, p, pj] = await Promise.all([run(['samplers']), run(['samplers', '--json']), run(['presets']), run(['presets', '--json'])]);
    assert.equal(s.status, 0, s.stderr);
    assert.match(s.stdout, /euler_a\s+Euler a\s+EulerAncestralDiscreteScheduler/);
    const rows = sj.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(rows.some((r) => r.name === 'dpmpp_2m' && r.a1111 === 'DPM++ 2M'));
    assert.equal(p.status, 0, p.stderr);
    for (const n of ['fast', 'quality', 'tome', 'tome-hires', 'mine']) assert.match(p.stdout, new RegExp(`^${n} `, 'm'));
    assert.match(p.stdout, /tome=0.5 .*tomeMinWidth=768 tomeMinHeight=768/);
    const presets = pj.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(presets.find((x) => x.name === 'mine'), { name: 'mine', kind: 'user', source: path.join(userDir, 'mine.json'), description: 'user one', options: { steps: 3 } });
  } finally {
    rmSync(userDir, { recursive: true, force: true });
  }
});

test('--dry-run of a 10,000-line prompt file prints the whole plan', () => {
  const lines: string[] = ['# ten thousand jobs'];
  for (let i = 0; i < 10000; i++) {
    if (i % 3 === 0) lines.push(`prompt number ${i}`);
    else if (i % 3 === 1) lines.push(`--prompt "castle ${i}" --seed ${i} --steps 12 --sampler_name "Euler a" --width 640 --height 384`);
    else lines.push(JSON.stringify({ prompt: `json ${i}`, seed: i, tome: 0.5, tomeMinWidth: 768 }));
  }
  const file = path.join(tmp, 'big.txt');
  writeFileSync(file, lines.join('\n') + '\n');
  const t0 = performance.now();
  const r = sdgen(['--prompts', file, '--dry-run', '--seed', '5', '--out', path.join(tmp, 'plan-out')]);
  const ms = performance.now() - t0;
  assert.equal(r.status, 0, r.stderr);
  const out = r.stdout.trimEnd().split('\n');
  assert.equal(out.length, 10001);
  assert.match(out[0]!, /^dry run: 10000 jobs, 10000 images → /);
  assert.match(out[1]!, /^ {4}1 {2}00001-5\.png {2}seed 5 {2}512x512 {2}model default {2}20 steps {2}cfg 7 {2}ToMe off {2}"prompt number 0"$/);
  assert.match(out[2]!, /^ {4}2 {2}00002-1\.png {2}seed 1 {2}640x384 {2}euler_a {2}12 steps .*ToMe off {2}"castle 1"$/);
  assert.match(out[3]!, /^ {4}3 {2}00003-2\.png {2}seed 2 {2}512x512 .*ToMe skipped \(.*\) {2}"json 2"$/);
  assert.match(out[10000]!, /^10000 {2}10000-5\.png/);
  assert.equal(existsSync(path.join(tmp, 'plan-out')), false, 'a dry run writes nothing');
  process.stderr.write(`# dry run of 10,000 lines: ${(ms / 1000).toFixed(2)} s wall (child process, startup included)\n`);
});

test('--prompts: bad lines reported with FILE:LINE, --strict stops before generating', () => {
  const file = path.join(tmp, 'some.txt');
  writeFileSync(file, 'good one\n--prompt "x" --steps zero\n\n--prompt "y" --sampler_name "Nope"\nanother\n');
  const r = sdgen(['--prompts', file, '--dry-run', '--seed', '1']);
  assert.equal(r.status, 1);
  assert.deepEqual(r.stderr.trimEnd().split('\n'), [`${file}:2: --steps: expected an integer from 1 to 1000, got "zero"`, `${file}:4: unknown sampler "Nope" (see: sdgen samplers)`]);
  assert.match(r.stdout, /dry run: 2 jobs/);
  const s = sdgen(['--prompts', file, '--strict', '--model', path.join(tmp, 'whatever'), '--out', path.join(tmp, 'strict-out')]);
  assert.equal(s.status, 2);
  assert.match(s.stderr, /some\.txt:2: .*\n.*some\.txt:4: .*\n.*2 bad lines in .*nothing generated \(--strict\)/);
  assert.equal(existsSync(path.join(tmp, 'strict-out')), false);
  const stdin = sdgen(['--prompts', '-', '--dry-run', '--seed', '3', '--json'], { input: 'from stdin\n{"prompt": "j", "steps": 4}\n' });
  assert.equal(stdin.status, 0, stdin.stderr);
  const jobs = stdin.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(jobs.map((j) => [j.prompt, j.steps, j.seed]), [['from stdin', 20, 3], ['j', 4, 3]]);
});

test('tokens --json on the real CLIP tokenizer of the tiny-sd1 fixture', async () => {
  const fixture = JSON.parse(readFileSync(path.join(FIXTURES, 'clip', 'tokens.json'), 'utf8')) as {
    prompts: Array<{ prompt: string; ids: number[]; input_ids_77_pad_eot: number[] }>;
  };
  const cases = fixture.prompts.filter((p) => p.ids.length <= 75).slice(0, 3);
  const long = 'a castle on a hill, ' + 'golden light, '.repeat(30);
  const results = await Promise.all([
    ...cases.map((c) => run(['tokens', c.prompt, '--model', path.join(FIXTURES, 'tiny-sd1'), '--json'])),
    run(['tokens', long, '--model', path.join(FIXTURES, 'tiny-sd1'), '--json']),
    run(['tokens', 'a red fox', '--model', path.join(FIXTURES, 'tiny-sd1')]),
    run(['tokens', 'x']),
  ]);
  cases.forEach((c, i) => {
    const r = results[i]!;
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { ids: c.ids, input_ids: c.input_ids_77_pad_eot, count: c.ids.length });
  });
  const lj = JSON.parse(results[cases.length]!.stdout);
  assert.ok(lj.count > 75 && lj.input_ids.length === 77);
  assert.ok(lj.chunks.length >= 2 && lj.chunks.every((ch: { ids: number[] }) => ch.ids.length === 77), 'long prompts show their chunks');
  assert.match(results[cases.length + 1]!.stdout, /^count: 3\nids: \d+ \d+ \d+\n/);
  oneErrorLine(results[cases.length + 2]!, 2, /--model DIR is required/);
});

// ------------------------------------------------------------------ end to end on a synthetic tiny model

let model = '';
async function ensureModel(): Promise<string> {
  if (model) return model;
  const dir = path.join(tmp, 'tiny');
  const r = await run(['synth', '--arch', 'tiny', '--out', dir, '--seed', '1']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /parameters: unet [\d,]+, text encoder [\d,]+, vae decoder [\d,]+, vae encoder [\d,]+, total [\d,]+/);
  model = dir;
  return model;
}

const pngs = (d: string) => readdirSync(d).filter((f) => f.endsWith('.png')).sort();
/** The records of every run's manifest in `d` (each run writes its own sdgen-run-KEY.jsonl). */
const manifestRecords = (d: string) =>
  readdirSync(d).filter((f) => /^sdgen-run-.+\.jsonl$/.test(f)).sort()
    .flatMap((f) => readFileSync(path.join(d, f), 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l)));
const pixels = (f: string) => sharp(f).raw().toBuffer();

test('end to end: --json lines, same command twice → identical image under a new name, metadata, --from', async () => {
  const m = await ensureModel();
  const out = path.join(tmp, 'e2e');
  const args = ['a red fox', '--model', m, '--steps', '3', '--seed', '42', '-W', '64', '-H', '64', '--out', out, '--device', 'cpu'];
  const r1 = await run([...args, '--batch-size', '2', '--scheduler', 'euler_a', '--json']);
  assert.equal(r1.status, 0, r1.stderr);
  const lines = r1.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(lines.length, 2);
  for (const [i, l] of lines.entries()) {
    assert.deepEqual(Object.keys(l).slice(0, 4), ['path', 'seed', 'parameters', 'timings']);
    assert.equal(l.seed, 42 + i);
    assert.equal(l.parameters.scheduler, 'euler_a');
    assert.equal(typeof l.timings.totalMs, 'number');
    assert.ok(existsSync(l.path));
  }
  assert.notDeepEqual(await pixels(lines[0].path), await pixels(lines[1].path), 'batch images differ');
  const r2 = await run([...args, '--quiet']);
  const r3 = await run([...args, '--quiet']);
  assert.equal(r2.status, 0, r2.stderr);
  assert.equal(r3.status, 0, r3.stderr);
  assert.equal(r2.stdout + r3.stdout + r2.stderr + r3.stderr, '', '--quiet prints nothing');
  assert.deepEqual(pngs(out), ['00001-42.png', '00002-43.png', '00003-42.png', '00004-42.png']);
  assert.deepEqual(readFileSync(path.join(out, '00003-42.png')), readFileSync(path.join(out, '00004-42.png')), 'byte-identical');
  assert.equal(manifestRecords(out).length, 4);

  const fromOut = path.join(tmp, 'e2e-from');
  const [meta, rf, plan] = await Promise.all([
    run(['metadata', path.join(out, '00003-42.png'), '--json']),
    run(['--from', path.join(out, '00003-42.png'), '--model', m, '--out', fromOut, '--quiet', '--device', 'cpu']),
    run(['--from', path.join(out, '00001-42.png'), '--seed', '7', '--dry-run']),
  ]);
  assert.equal(meta.status, 0, meta.stderr);
  const mj = JSON.parse(meta.stdout);
  assert.match(mj.parameters, /^a red fox\nSteps: 3, Sampler: \S.*, CFG scale: 7, Seed: 42, Size: 64x64, Model: tiny, Version: sdgen /);
  assert.equal(mj.sdgen.params.seed, 42);
  assert.equal(rf.status, 0, rf.stderr);
  assert.deepEqual(readFileSync(path.join(fromOut, '00001-42.png')), readFileSync(path.join(out, '00003-42.png')), '--from regenerates the same image');
  assert.equal(plan.status, 0, plan.stderr);
  assert.match(plan.stdout, /seed 7 {2}64x64 {2}euler_a {2}3 steps {2}cfg 7 {2}ToMe off {2}"a red fox"/, 'explicit flags override --from');
});

test('end to end: ToMe recorded when applied, skipped below the thresholds', async () => {
  const m = await ensureModel();
  const base = (out: string) => ['a red fox', '--model', m, '--steps', '2', '--seed', '5', '-W', '64', '-H', '64', '--out', path.join(tmp, out), '--device', 'cpu'];
  const [on, skipped, off] = await Promise.all([
    run([...base('tome-on'), '--tome', '0.5']),
    run([...base('tome-skip'), '--tome', '0.5', '--tome-min-width', '512']),
    run([...base('tome-off'), '--tome', '0']),
  ]);
  for (const r of [on, skipped, off]) assert.equal(r.status, 0, r.stderr);
  const { readImageMetadata } = await import('../src/metadata/metadata.js');
  const text = async (d: string) => (await readImageMetadata(path.join(tmp, d, '00001-5.png'))).parameters!;
  assert.match(await text('tome-on'), /Token merging ratio: 0.5, ToMe sx: 2, ToMe sy: 2, ToMe max downsample: 1, ToMe rand: False, ToMe merged: attn/);
  assert.doesNotMatch(await text('tome-skip'), /Token merging/);
  assert.doesNotMatch(await text('tome-off'), /Token merging/);
  assert.deepEqual(await pixels(path.join(tmp, 'tome-skip', '00001-5.png')), await pixels(path.join(tmp, 'tome-off', '00001-5.png')), 'ToMe skipped = ToMe off');
  assert.match(skipped.stderr, /ToMe/, 'says why ToMe was skipped');
});

test('end to end: a 20-line mixed prompt file writes exactly the valid jobs, one manifest line each', async () => {
  const m = await ensureModel();
  const lines = [
    '# mixed batch',
    'a red fox',
    '--prompt "a castle, on a hill" --negative_prompt "blurry" --seed 7',
    '{"prompt": "json job", "seed": 3, "cfg": 5}',
    '--prompt "bad steps" --steps lots',
    '--prompt "euler" --sampler_name "Euler" --seed 11',
    '',
    '--prompt "wide" --width 128 --height 64 --seed 12',
    'plain: with a colon, and commas',
    '--prompt "two images" --batch_size 2 --seed 20',
    '--prompt "iter" --n_iter 2 --seed 30',
    '--prompt "tome" --tome 0.5 --seed 40',
    '--prompt "unknown" --colour red',
    '{"prompt": "ddim", "sampler_name": "DDIM", "seed": 50}',
    'another plain prompt',
    '# comment',
    '--prompt "cfg one" --cfg_scale 1 --seed 60',
    '--prompt "neg" --negative-prompt "ugly, dull"',
    'last prompt',
    '--prompt "steps3" --steps 3 --seed 70',
  ];
  assert.equal(lines.length, 20);
  const file = path.join(tmp, 'mixed.txt');
  writeFileSync(file, lines.join('\n') + '\n');
  const out = path.join(tmp, 'mixed-out');
  const r = await run(['--prompts', file, '--model', m, '--steps', '2', '-W', '64', '-H', '64', '--seed', '1', '--out', out, '--device', 'cpu', '--json']);
  assert.equal(r.status, 1, 'bad lines skipped: exit 1 at the end');
  const errs = r.stderr.split('\n').filter((l) => l.startsWith(file));
  assert.deepEqual(errs.map((l) => Number(l.slice(file.length + 1).split(':')[0])), [5, 13]);
  const written = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  // 15 valid jobs; "two images" and "iter" make 2 each
  assert.equal(written.length, 17);
  assert.equal(pngs(out).length, 17);
  const manifest = manifestRecords(out);
  assert.deepEqual(manifest.map((x) => x.file).sort(), pngs(out));
  const byPrompt = (p: string) => manifest.filter((x) => x.params.prompt === p);
  assert.deepEqual(byPrompt('two images').map((x) => x.seed).sort(), [20, 21]);
  assert.deepEqual(byPrompt('iter').map((x) => x.seed).sort(), [30, 31]);
  assert.deepEqual([byPrompt('wide')[0].params.width, byPrompt('wide')[0].params.height], [128, 64]);
  assert.equal(byPrompt('euler')[0].params.scheduler, 'euler');
  assert.equal(byPrompt('ddim')[0].params.scheduler, 'ddim');
  assert.equal(byPrompt('json job')[0].params.cfg, 5);
  assert.equal(byPrompt('a castle, on a hill')[0].params.negativePrompt, 'blurry');
  assert.equal(byPrompt('steps3')[0].params.steps, 3);
  assert.equal(byPrompt('neg')[0].params.negativePrompt, 'ugly, dull');
  assert.equal(byPrompt('tome')[0].tomeApplied, true);
  assert.equal(byPrompt('a red fox')[0].seed, 1, 'command-line seed for plain lines');
  assert.deepEqual(byPrompt('a red fox')[0].source, `${file}:2`);
});

test('--resume reuses the random seeds of the recorded run', async () => {
  const m = await ensureModel();
  const out = path.join(tmp, 'random-seeds');
  const args = ['a fox', '--model', m, '--steps', '1', '-W', '64', '-H', '64', '--n-iter', '2', '--out', out, '--device', 'cpu'];
  const first = await run([...args, '--json']);
  assert.equal(first.status, 0, first.stderr);
  const seeds = first.stdout.trim().split('\n').map((l) => JSON.parse(l).seed as number);
  assert.equal(seeds[1], seeds[0]! + 1);
  const [plan, other] = await Promise.all([run([...args, '--resume', '--dry-run', '--json']), run([...args, '--resume', '--name', '{seed}', '--dry-run'])]);
  assert.equal(plan.status, 0, plan.stderr);
  const job = JSON.parse(plan.stdout.trim());
  assert.equal(job.seed, seeds[0]);
  assert.deepEqual(job.files, [`00001-${seeds[0]}.png`, `00002-${seeds[1]}.png`]);
  oneErrorLine(other, 2, /--resume: the job list or --name differs/);
});

test('info and tome-patch on the synthetic tiny model', async () => {
  const m = await ensureModel();
  const out = path.join(tmp, 'patched.onnx');
  const [info, patch, noRatio, badRatio] = await Promise.all([
    run(['info', '--model', m, '--tome', '0.5', '-W', '512', '-H', '512']),
    run(['tome-patch', path.join(m, 'unet', 'model.onnx'), out, '--tome', '0.5', '--merge-mlp']),
    run(['tome-patch', path.join(m, 'unet', 'model.onnx'), out]),
    run(['info', '--model', m, '--tome', '0.8']),
  ]);
  assert.equal(info.status, 0, info.stderr);
  assert.match(info.stdout, /\d+ transformer blocks? \(levels 1/);
  assert.match(info.stdout, /block +0 +level 1 .*merge: attn/);
  assert.match(info.stdout, /ToMe ratio 0.5 at 512x512: applied/);
  assert.equal(patch.status, 0, patch.stderr);
  assert.match(patch.stdout, /wrote .*patched\.onnx \(\d+ blocks? patched\)/);
  assert.ok(existsSync(out));
  oneErrorLine(noRatio, 2, /give a ratio with --tome R/);
  oneErrorLine(badRatio, 2, /ToMe ratio must satisfy/);
});

test('end to end: SIGINT then --resume ends with the same files as an uninterrupted run', async () => {
  const m = await ensureModel();
  const file = path.join(tmp, 'resume.txt');
  const jobs = Array.from({ length: 6 }, (_, i) => `--prompt "job ${i}" --seed ${100 + i * 10}${i === 2 ? ' --batch_size 2' : ''}`);
  writeFileSync(file, jobs.join('\n') + '\n');
  const args = (out: string) => ['--prompts', file, '--model', m, '--steps', '4', '-W', '64', '-H', '64', '--out', out, '--device', 'cpu'];
  const full = path.join(tmp, 'resume-full');
  const part = path.join(tmp, 'resume-part');
  const fullRun = run(args(full));

  const child = spawn(process.execPath, [...CLI, ...args(part)], {
    cwd: tmp,
    env: { ...process.env, HOME: home, XDG_CONFIG_HOME: path.join(home, '.config'), NO_COLOR: '1' },
  });
  let stderr = '';
  let signalled = false;
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (!signalled && /\[2\/7\]/.test(stderr)) {
      signalled = true;
      child.kill('SIGINT');
    }
  });
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  assert.ok(signalled, `never saw the second image: ${stderr}`);
  assert.equal(code, 130, stderr);
  assert.match(stderr, /interrupted: wrote \d+ images?.*--resume/);
  const partial = pngs(part);
  assert.ok(partial.length >= 2 && partial.length < 7, `interrupted run wrote ${partial.length}`);
  assert.ok(readdirSync(part).every((f) => !f.endsWith('.tmp')), 'no temporary files left');

  const rr = await run([...args(part), '--resume']);
  assert.equal(rr.status, 0, rr.stderr);
  assert.match(rr.stderr, new RegExp(`resuming: ${partial.length} of 7 images already written`));
  const rf = await fullRun;
  assert.equal(rf.status, 0, rf.stderr);
  assert.equal(pngs(full).length, 7);
  assert.deepEqual(pngs(part), pngs(full));
  for (const f of pngs(full)) assert.deepEqual(readFileSync(path.join(part, f)), readFileSync(path.join(full, f)), f);
  const recorded = manifestRecords(part).map((r) => r.file).sort();
  assert.deepEqual(recorded, pngs(full), 'one manifest line per image');
});

test('a reader that closes the pipe early (`sdgen --dry-run … | head -1`) ends the CLI quietly, exit 0, through tsx and the built bin', async () => {
  // a plan far larger than a pipe's buffer, so the CLI is still writing when the reader leaves
  const file = path.join(tmp, 'pipe-plan.txt');
  writeFileSync(file, Array.from({ length: 4000 }, (_, i) => `a prompt for the pipe test, number ${i}`).join('\n') + '\n');
  const runs: string[][] = [['--import', TSX, MAIN]];
  if (CLI_IS_BIN) runs.push([path.join(ROOT, 'bin', 'sdgen.js')]);
  for (const cli of runs) {
    const child = spawn(process.execPath, [...cli, '--prompts', file, '--dry-run', '--out', path.join(tmp, 'pipe-out')], {
      cwd: tmp, env: { ...process.env, HOME: home, XDG_CONFIG_HOME: path.join(home, '.config'), NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdout.once('data', () => child.stdout.destroy()); // like `head -1`
    const code: number | null = await new Promise((resolve) => child.on('close', (c) => resolve(c)));
    assert.equal(code, 0, `${cli.join(' ')}: exit ${code}, stderr: ${stderr}`);
    assert.doesNotMatch(stderr, /EPIPE|Unhandled|\n\s+at /, `${cli.join(' ')}: ${stderr}`);
  }
});

test('prompt-file lines are checked against their model before any model loads: limits are that line\'s error, the other lines go on', async () => {
  const file = path.join(tmp, 'limits.txt');
  const tooManyTokens = 'a, '.repeat(5000); // 15,000 characters but 10,000 CLIP tokens (limit 4,800)
  const tooLong = 'x'.repeat(20_001);
  writeFileSync(file, ['a red fox', tooManyTokens, `--prompt "${tooLong}"`, 'a blue car'].join('\n') + '\n');
  const model = path.join(FIXTURES, 'tiny-sd1');
  const r = await run(['--prompts', file, '--model', model, '--dry-run', '--seed', '1']);
  assert.equal(r.status, 1, r.stderr);
  const errs = r.stderr.trimEnd().split('\n');
  assert.equal(errs.length, 2, r.stderr);
  assert.match(errs[0]!, /limits\.txt:2: prompt: 10,000 tokens \(134 chunks of 75\), over the limit of 4,800/);
  assert.match(errs[1]!, /limits\.txt:3: prompt: 20,001 characters, over the limit of 20,000/);
  assert.match(r.stdout, /dry run: 2 jobs, 2 images/);
  assert.match(r.stdout, /"a red fox"/);
  assert.match(r.stdout, /"a blue car"/);
  // --strict stops at the first check, before any model folder is read: the character limit
  const s = await run(['--prompts', file, '--model', model, '--dry-run', '--seed', '1', '--strict']);
  assert.equal(s.status, 2, s.stderr);
  assert.deepEqual(s.stderr.trimEnd().split('\n').map((l) => l.replaceAll(file, 'limits.txt')), [
    'limits.txt:3: prompt: 20,001 characters, over the limit of 20,000 (see README "Limits")',
    'sdgen: 1 bad line in limits.txt; nothing generated (--strict)',
  ]);
});

test('img2img, inpainting and hires from the command line: the plan shows the mode and both passes; --from regenerates each byte for byte and warns when the init picture changed', async () => {
  const model = path.join(FIXTURES, 'tiny-sd1');
  const init = path.join(tmp, 'modes-init.png');
  writeFileSync(init, readFileSync(path.join(FIXTURES, 'img2img', 'init_512x512.png')));
  const mask = path.join(FIXTURES, 'img2img', 'mask_512x512.png');
  const common = ['a cat', '--model', model, '--steps', '2', '-W', '64', '-H', '64', '--seed', '3', '--scheduler', 'euler'];
  const modes: [string, string[], RegExp][] = [
    ['img2img', ['--init-image', init, '--strength', '0.6'], /img2img modes-init\.png strength 0\.6/],
    ['inpaint', ['--init-image', init, '--mask', mask, '--mask-blur', '2'], /inpaint modes-init\.png mask mask_512x512\.png strength 0\.75/],
    ['hires', ['--hires', '--hires-steps', '1', '--tome', '0.5', '--tome-min-width', '128', '--tome-min-height', '128'], /ToMe skipped .* hires → 128x128 Latent strength 0\.7 1 steps ToMe 0\.5/],
  ];
  for (const [name, extra, plan] of modes) {
    const dry = await run([...common, ...extra, '--dry-run']);
    assert.equal(dry.status, 0, dry.stderr);
    assert.match(dry.stdout, plan, name);
    const out = path.join(tmp, `modes-${name}`);
    const r = await run([...common, ...extra, '--out', out, '-q']);
    assert.equal(r.status, 0, `${name}: ${r.stderr}`);
    const png = path.join(out, '00001-3.png');
    const again = path.join(tmp, `modes-${name}-from`);
    const f = await run(['--from', png, '--model', model, '--out', again, '-q']);
    assert.equal(f.status, 0, `${name} --from: ${f.stderr}`);
    assert.ok(readFileSync(png).equals(readFileSync(path.join(again, '00001-3.png'))), `${name}: --from gives the same bytes`);
  }
  // the init picture changes: --from says so in one line, and still runs
  writeFileSync(init, Buffer.concat([readFileSync(init), Buffer.from('x')]));
  const w = await run(['--from', path.join(tmp, 'modes-img2img', '00001-3.png'), '--model', model, '--out', path.join(tmp, 'modes-changed')]);
  assert.equal(w.status, 0, w.stderr);
  assert.match(w.stderr, /^warning: .*00001-3\.png: the init image .*modes-init\.png has changed since the image was made \(SHA-256 differs\); the result will differ$/m);
});

test('a missing or unreadable init picture or mask is refused before any model loads: exit 2 with one line, or that prompt-file line\'s error', async () => {
  const model = path.join(FIXTURES, 'tiny-sd1');
  const notPng = path.join(tmp, 'not-a-picture.png');
  writeFileSync(notPng, 'not a picture');
  const base = ['a cat', '--model', model, '--steps', '1', '-W', '64', '-H', '64', '--out', path.join(tmp, 'bad-init')];
  const cases: [string[], RegExp][] = [
    [['--init-image', path.join(tmp, 'nope.png'), '--dry-run'], /^sdgen: init image .*nope\.png: cannot read it \(no such file\)$/],
    [['--init-image', notPng], /^sdgen: init image .*not-a-picture\.png: not a readable PNG, JPEG or WebP image$/],
    [['--init-image', path.join(FIXTURES, 'img2img', 'init_512x512.png'), '--mask', tmp], /^sdgen: mask .*: cannot read it \(it is a folder\)$/],
  ];
  for (const [extra, re] of cases) oneErrorLine(await run([...base, ...extra]), 2, re);
  assert.equal(existsSync(path.join(tmp, 'bad-init')), false, 'nothing written');
  const file = path.join(tmp, 'bad-init.txt');
  writeFileSync(file, `--prompt "a cat" --init-image ${JSON.stringify(notPng)}\n--prompt "a dog"\n`);
  const r = await run(['--prompts', file, '--model', model, '--steps', '1', '-W', '64', '-H', '64', '--dry-run', '--seed', '2']);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr.trim(), /^.*bad-init\.txt:1: init image .*not-a-picture\.png: not a readable PNG, JPEG or WebP image$/);
  assert.match(r.stdout, /dry run: 1 job, 1 image/);
});
