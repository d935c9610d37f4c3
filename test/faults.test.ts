/**
 * Faults around a batch run's output (issue 18): concurrent writers into one directory, a full
 * disk (a tiny tmpfs where mounting is allowed, and an injected ENOSPC / short write always),
 * kill -9 at a random point then --resume, a prompt-file line with a bad model, an output
 * directory that cannot be made. Real CLI processes on test/fixtures/tiny-sd1 at 64×64, 1 step.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fx, type Ran, cliSandbox, CLI, assertOneErrorLine } from './helpers.js';
import { readImageMetadata } from '../src/metadata/metadata.js';
import { buildJobs, planImages, type JobContext } from '../src/run/jobs.js';
import { finishedImages, runJobs, type PipelineLike, type RunReporter, type RunSummary } from '../src/run/runner.js';
import { manifestPath, readManifest, type WriteFn } from '../src/run/output.js';
import { resolveOptions } from '../src/config/options.js';
import type { GeneratedImage, GenerationParams } from '../src/pipeline/types.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const TINY = fx('tiny-sd1');
const GEN = ['--model', TINY, '-W', '64', '-H', '64', '--steps', '1', '--device', 'cpu'];

const sb = cliSandbox('faults');

const run = (args: string[]): Promise<Ran> => sb.run(args);

/** Exit code, exactly one line on stderr matching `re`, no stack trace. */
const oneErrorLine = assertOneErrorLine;

const pngs = (d: string) => readdirSync(d).filter((f) => f.endsWith('.png')).sort();

/** Every manifest record in `d`, each line parsed (a line that does not parse fails the test). */
function records(d: string): Array<{ file: string; index: number; seed: number; params: GenerationParams }> {
  const files = readdirSync(d).filter((f) => /^sdgen-run-.+\.jsonl$/.test(f));
  return files.flatMap((f) => {
    const text = readFileSync(path.join(d, f), 'utf8');
    assert.ok(text === '' || text.endsWith('\n'), `${f} ends with a whole line`);
    return text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l));
  });
}

/** Each record names an existing PNG whose own metadata has the record's prompt and seed; no file twice. */
async function assertRecordsMatchImages(d: string, expected: number): Promise<void> {
  const recs = records(d);
  assert.equal(recs.length, expected, 'records');
  assert.equal(new Set(recs.map((r) => r.file)).size, expected, 'no file recorded twice');
  assert.deepEqual(recs.map((r) => r.file).sort(), pngs(d), 'every image recorded, every record an image');
  for (const r of recs) {
    const meta = await readImageMetadata(path.join(d, r.file));
    assert.equal(meta.sdgen?.params.prompt, r.params.prompt, `${r.file}: made from its record's prompt`);
    assert.equal(meta.sdgen?.params.seed, r.seed, `${r.file}: seed`);
  }
}

test('two concurrent 12-image runs into one directory leave 24 intact images and 24 correct records', async () => {
  const out = path.join(sb.tmp, 'shared');
  // The model's rewritten graphs are cached first, by a run of its own: this test is about the
  // output directory, not about two processes filling the graph cache at once.
  const warm = await run(['warm-up', ...GEN, '--seed', '1', '--out', path.join(sb.tmp, 'warm'), '--quiet']);
  assert.equal(warm.status, 0, warm.stderr);
  const [cat, dog] = await Promise.all([
    run(['a cat', ...GEN, '--n-iter', '12', '--seed', '1', '--out', out, '--quiet']),
    run(['a dog', ...GEN, '--n-iter', '12', '--seed', '1', '--out', out, '--quiet']),
  ]);
  for (const r of [cat, dog]) assert.equal(r.status, 0, r.stderr);
  assert.equal(pngs(out).length, 24);
  await assertRecordsMatchImages(out, 24);
  const prompts = records(out).map((r) => r.params.prompt);
  assert.deepEqual([prompts.filter((p) => p === 'a cat').length, prompts.filter((p) => p === 'a dog').length], [12, 12]);
  // each run's own state and manifest; status sees both complete
  const st = spawnSync(process.execPath, [...CLI, 'status', out, '--json'], { encoding: 'utf8', cwd: sb.tmp });
  assert.equal(st.status, 0, st.stderr);
  const s = JSON.parse(st.stdout);
  assert.deepEqual([s.runs.length, s.total, s.done, s.missing, s.failed], [2, 24, 24, 0, 0]);
});

// ------------------------------------------------------------------ full disk

/** A deterministic fake pipeline (bytes depend on prompt and seed) for runJobs-level faults. */
class FakePipeline implements PipelineLike {
  async *generate(params: GenerationParams, _e?: unknown, _s?: AbortSignal, options?: { images?: { first: number; count: number } }): AsyncGenerator<GeneratedImage> {
    const { first, count } = options?.images ?? { first: 0, count: params.batchSize * params.nIter };
    for (let i = first; i < first + count; i++) {
      const seed = params.seed + i;
      yield {
        index: i, seed, width: 8, height: 8, rgb: new Uint8Array(192).fill(seed & 255), params: { ...params, seed }, tomeApplied: false, modelName: 'fake',
        timings: { textEncoderMs: 0, unetMs: 0, vaeMs: 0, totalMs: 0 },
      };
    }
  }
  async dispose(): Promise<void> {}
}

const ctx: JobContext = { modelDefaults: () => undefined, resolveScheduler: (n) => n, randomSeed: () => 0 };

function capture(): RunReporter & { summary?: RunSummary } {
  const r: RunReporter & { summary?: RunSummary } = { start() {}, notice() {}, imageWritten() {}, jobFailed() {}, finish: (s) => void (r.summary = s) };
  return r;
}

test('an injected ENOSPC after a short write, then --resume: a parseable manifest, exact counts, every image once', async () => {
  for (const target of ['image', 'manifest'] as const) {
    const dir = mkdtempSync(path.join(sb.tmp, `enospc-${target}-`));
    const { jobs } = buildJobs([{ prompt: 'p', options: resolveOptions({ seed: 10, nIter: 8, width: 8, height: 8 }) }], ctx);
    const images = planImages(jobs, { template: '{index:05}-{seed}', startIndex: 1, exists: () => false, overwrite: false });
    const plan = { jobs, images, outDir: dir, manifest: manifestPath(dir, 'k') };
    const encode = async (o: GeneratedImage) => Buffer.concat([Buffer.from(`png ${o.seed} `), Buffer.from(o.rgb)]);
    // the disk fills during the 4th write of the target kind: half of it lands, then ENOSPC
    let calls = 0;
    const write: WriteFn = (fd, buf, off, len) => {
      const isTarget = (buf[0] === 0x7b) === (target === 'manifest'); // manifest lines start with '{'
      if (isTarget && off === 0) calls++;
      if (isTarget && calls === 4) {
        if (off === 0) return writeSync(fd, buf, 0, Math.floor(len / 2));
        throw Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
      }
      return writeSync(fd, buf, off, len);
    };
    const rep = capture();
    await assert.rejects(runJobs(plan, { loadPipeline: async () => new FakePipeline(), encode, reporter: rep, write }), /no space left on the device, ENOSPC/);
    assert.deepEqual([rep.summary!.written, rep.summary!.failed], [3, 1], `${target}: counts`);
    const { records: recs, bad } = readManifest(plan.manifest);
    assert.equal(bad, 0, `${target}: no torn line`);
    assert.deepEqual(recs.map((r) => r.file), ['00001-10.png', '00002-11.png', '00003-12.png']);
    assert.deepEqual(pngs(dir), ['00001-10.png', '00002-11.png', '00003-12.png'], `${target}: no unrecorded image, no temp file`);
    assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith('.tmp')), []);

    const done = finishedImages(dir, plan.manifest);
    const rep2 = capture();
    await runJobs({ ...plan, done, resuming: true }, { loadPipeline: async () => new FakePipeline(), encode, reporter: rep2 });
    assert.deepEqual([rep2.summary!.written, rep2.summary!.skipped, rep2.summary!.failed], [5, 3, 0]);
    const after = readManifest(plan.manifest);
    assert.equal(after.bad, 0);
    assert.deepEqual(after.records.map((r) => r.index), [0, 1, 2, 3, 4, 5, 6, 7], `${target}: every image recorded once`);
    assert.deepEqual(pngs(dir).length, 8);
  }
});

test('a run into a tiny full tmpfs stops with one line; --resume on a bigger disk completes it with a whole manifest', async (t) => {
  const mnt = path.join(sb.tmp, 'tiny-fs');
  mkdirSync(mnt);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt], { encoding: 'utf8' });
  if (m.status !== 0) {
    t.skip(`cannot mount a tmpfs here (${(m.stderr || m.error?.message || '').trim()}); the injected ENOSPC test covers the runner`);
    return;
  }
  try {
    const out = path.join(mnt, 'out');
    const args = ['a full disk', ...GEN, '--n-iter', '12', '--seed', '3', '--quiet'];
    const r = await run([...args, '--out', out]);
    oneErrorLine(r, 1, /no space left on the device, ENOSPC/);
    const partial = records(out); // every line parses
    assert.ok(partial.length >= 1 && partial.length < 12, `${partial.length} images fit`);
    assert.deepEqual(partial.map((x) => x.file).sort(), pngs(out), 'recorded = on disk');
    const big = path.join(sb.tmp, 'bigger-disk');
    cpSync(out, big, { recursive: true });
    const rr = await run([...args.filter((a) => a !== '--quiet'), '--out', big, '--resume', '--json']);
    assert.equal(rr.status, 0, rr.stderr);
    assert.match(rr.stderr, new RegExp(`resuming: ${partial.length} of 12 images already written`));
    assert.equal(rr.stdout.trim().split('\n').length, 12 - partial.length, 'exactly the missing images written');
    await assertRecordsMatchImages(big, 12);
    assert.deepEqual(records(big).map((x) => x.seed).sort((a, b) => a - b), Array.from({ length: 12 }, (_, i) => 3 + i));
  } finally {
    spawnSync('umount', [mnt]);
  }
});

// ------------------------------------------------------------------ kill -9, then --resume

test('kill -9 after a random number of images, then --resume: the same files, byte-identical, as an uninterrupted run', async () => {
  const args = (out: string) => ['a lighthouse', ...GEN, '--n-iter', '10', '--seed', '50', '--out', out];
  const full = path.join(sb.tmp, 'kill-full');
  const part = path.join(sb.tmp, 'kill-part');
  const k = 1 + Math.floor(Math.random() * 8);
  const fullRun = run([...args(full), '--quiet']);
  const child = spawn(process.execPath, [...CLI, ...args(part)], { cwd: sb.tmp, env: { ...process.env, HOME: sb.home, NO_COLOR: '1' } });
  let stderr = '';
  let killed = false;
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (!killed && new RegExp(`\\[${k}/10\\]`).test(stderr)) {
      killed = true;
      child.kill('SIGKILL');
    }
  });
  await new Promise((resolve) => child.on('close', resolve));
  assert.ok(killed, `never saw image ${k}: ${stderr}`);
  const rr = await run([...args(part), '--resume', '--quiet']);
  assert.equal(rr.status, 0, `k=${k}: ${rr.stderr}`);
  assert.equal((await fullRun).status, 0);
  assert.deepEqual(pngs(part), pngs(full), `k=${k}: same file names`);
  for (const f of pngs(full)) assert.deepEqual(readFileSync(path.join(part, f)), readFileSync(path.join(full, f)), `k=${k}: ${f}`);
  await assertRecordsMatchImages(part, 10);
  assert.deepEqual(readdirSync(part).filter((f) => f.endsWith('.tmp')), [], 'no temporary files');
});

// ------------------------------------------------------------------ bad inputs

test('a prompt-file line with a bad model is that line\'s error; the other lines go on (dry run, real run, --strict)', async () => {
  const broken = path.join(sb.tmp, 'broken-model');
  mkdirSync(broken);
  writeFileSync(path.join(broken, 'model_index.json'), '{ not json');
  const file = path.join(sb.tmp, 'models.txt');
  writeFileSync(file, ['good line', `--prompt "missing" --model ${path.join(sb.tmp, 'no-such-model')}`, `{"prompt": "broken", "model": ${JSON.stringify(broken)}}`, 'another good line'].join('\n') + '\n');
  const base = ['--prompts', file, ...GEN, '--seed', '9'];
  const [dry, real, strict] = await Promise.all([
    run([...base, '--dry-run', '--out', path.join(sb.tmp, 'models-dry')]),
    run([...base, '--out', path.join(sb.tmp, 'models-out'), '--quiet']),
    run([...base, '--strict', '--out', path.join(sb.tmp, 'models-strict')]),
  ]);
  for (const r of [dry, real]) {
    assert.equal(r.status, 1, r.stderr);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 2, r.stderr);
    assert.match(lines[0]!, new RegExp(`^${file}:2: model folder not found: `));
    assert.match(lines[1]!, new RegExp(`^${file}:3: .*model_index\\.json`));
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  }
  assert.match(dry.stdout, /^dry run: 2 jobs, 2 images/);
  assert.deepEqual(pngs(path.join(sb.tmp, 'models-out')).length, 2);
  assert.equal(strict.status, 2);
  assert.match(strict.stderr.trimEnd().split('\n').at(-1)!, /2 bad lines in .*nothing generated \(--strict\)/);
  assert.equal(existsSync(path.join(sb.tmp, 'models-strict')), false);
});

test('--out where the directory cannot be made is one line, not a hang', async () => {
  const blocker = path.join(sb.tmp, 'a-file');
  writeFileSync(blocker, '');
  const cases = [run(['x', ...GEN, '--seed', '1', '--out', path.join(blocker, 'sub')])];
  if (existsSync('/proc/self')) cases.push(run(['x', ...GEN, '--seed', '1', '--out', '/proc/sdgen-none/y']));
  for (const r of await Promise.all(cases)) oneErrorLine(r, 1, /cannot (create|list) the output directory/);
});
