/**
 * Sharding one plan over workers (issue 21): the shard spec and the engines' environments,
 * balanced assignment by batch, and the acceptance run — a 40-image prompt file as 3 concurrent
 * shard processes into one directory (one killed with SIGKILL and resumed) against one run: the
 * same file names, byte-identical images, `sdgen status` 40/40.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fx, type Ran, cliSandbox, CLI } from './helpers.js';
import { assignShards, parseShard, shardSizes } from '../src/run/shard.js';
import { buildJobs, type JobContext } from '../src/run/jobs.js';
import { resolveOptions, type PartialOptions } from '../src/config/options.js';
import { UsageError } from '../src/errors.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));

const sb = cliSandbox('shard');

const run = (args: string[]): Promise<Ran> => sb.run(args);

test('parseShard: I/N, and auto from Kubernetes, Slurm and AWS Batch environments', () => {
  assert.deepEqual(parseShard('0/1', {}), { index: 0, count: 1 });
  assert.deepEqual(parseShard('2/3', {}), { index: 2, count: 3 });
  for (const bad of ['3/3', '-1/2', 'a/b', '0/0', '1', '1/2/3', '', '0.5/2']) assert.throws(() => parseShard(bad, {}), UsageError, bad);
  assert.deepEqual(parseShard('auto', { JOB_COMPLETION_INDEX: '4', SDGEN_SHARD_COUNT: '10' }), { index: 4, count: 10 });
  assert.deepEqual(parseShard('auto', { JOB_COMPLETION_INDEX: '4' }, 5), { index: 4, count: 5 });
  assert.throws(() => parseShard('auto', { JOB_COMPLETION_INDEX: '4' }), /--shard-count N or set SDGEN_SHARD_COUNT/);
  assert.throws(() => parseShard('auto', { JOB_COMPLETION_INDEX: '5' }, 5), /shard index 5 is not within 0…4/);
  // sbatch --array=1-8: ids 1…8, min 1; --array=0-12:4 → ids 0, 4, 8, 12 with step 4
  assert.deepEqual(parseShard('auto', { SLURM_ARRAY_TASK_ID: '8', SLURM_ARRAY_TASK_COUNT: '8', SLURM_ARRAY_TASK_MIN: '1' }), { index: 7, count: 8 });
  assert.deepEqual(parseShard('auto', { SLURM_ARRAY_TASK_ID: '8', SLURM_ARRAY_TASK_COUNT: '4', SLURM_ARRAY_TASK_MIN: '0', SLURM_ARRAY_TASK_STEP: '4' }), { index: 2, count: 4 });
  assert.deepEqual(parseShard('auto', { AWS_BATCH_JOB_ARRAY_INDEX: '0', AWS_BATCH_JOB_ARRAY_SIZE: '2' }), { index: 0, count: 2 });
  assert.throws(() => parseShard('auto', { AWS_BATCH_JOB_ARRAY_INDEX: '0' }), /AWS_BATCH_JOB_ARRAY_SIZE/);
  assert.throws(() => parseShard('auto', {}), /no shard index in the environment/);
  assert.throws(() => parseShard('auto', { JOB_COMPLETION_INDEX: 'x', SDGEN_SHARD_COUNT: '2' }), /not an integer/);
  assert.throws(() => parseShard('1/2', {}, 2), /--shard-count goes with --shard auto/);
});

test('assignShards: by batch, balanced, every image once', () => {
  const ctx: JobContext = { modelDefaults: () => undefined, resolveScheduler: (n) => n, randomSeed: () => 0 };
  const spec = (o: PartialOptions) => ({ prompt: 'p', options: resolveOptions({ seed: 1 }, o) });
  // 1 + 3 + 2·2 + 5 = 13 images in 1 + 3 + 2 + 5 = 11 batches
  const { jobs } = buildJobs([spec({}), spec({ nIter: 3 }), spec({ batchSize: 2, nIter: 2 }), spec({ nIter: 5 })], ctx);
  const a = assignShards(jobs, 3);
  assert.equal(a.length, 13);
  // the two images of each batch of 2 (positions 4–5 and 6–7) share a shard
  assert.equal(a[4], a[5]);
  assert.equal(a[6], a[7]);
  const sizes = shardSizes(a, 3);
  assert.equal(sizes.reduce((x, y) => x + y, 0), 13);
  assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 2, `balanced within a batch: ${sizes}`);
  // equal batches: plain round-robin, ⌊T/N⌋ or ⌈T/N⌉ each
  const { jobs: ones } = buildJobs([spec({ nIter: 10 })], ctx);
  assert.deepEqual(assignShards(ones, 4), [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]);
  assert.deepEqual(shardSizes(assignShards(ones, 4), 4), [3, 3, 2, 2]);
  assert.deepEqual(shardSizes(assignShards(ones, 12), 12), [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], 'more shards than images: some get none');
});

test('bad --shard values exit 2 with one line', async () => {
  const cases = ['3/3', '-1/2', 'a/b', '0/0'];
  const rs = await Promise.all(cases.map((s) => run(['a fox', '--seed', '1', '--dry-run', `--shard=${s}`])));
  rs.forEach((r, i) => {
    assert.equal(r.status, 2, `${cases[i]}: ${r.stderr}`);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, new RegExp(`--shard: expected I/N .*got "${cases[i]}"`));
    assert.equal(r.stdout, '');
  });
  const [auto, random] = await Promise.all([run(['a fox', '--seed', '1', '--dry-run', '--shard', 'auto']), run(['a fox', '--dry-run', '--shard', '0/2'])]);
  assert.equal(auto.status, 2);
  assert.match(auto.stderr, /^sdgen: --shard auto: no shard index in the environment/);
  assert.equal(random.status, 2);
  assert.match(random.stderr, /^sdgen: --shard needs fixed seeds/);
});

const pngs = (d: string) => readdirSync(d).filter((f) => f.endsWith('.png')).sort();

test('a 40-image prompt file as 3 concurrent shards (one killed and resumed) = one run, byte for byte; status 40/40', async () => {
  // 20 lines: 12 plain (1 image each), 4 with --n_iter 3, 2 with two batches of 2, 2 with their own seed and --n_iter 4: 12 + 12 + 8 + 8 = 40
  const lines: string[] = [];
  for (let i = 0; i < 12; i++) lines.push(`prompt ${i}`);
  for (let i = 0; i < 4; i++) lines.push(`--prompt "iter ${i}" --n_iter 3`);
  for (let i = 0; i < 2; i++) lines.push(`{"prompt": "batch ${i}", "batch_size": 2, "n_iter": 2}`);
  for (let i = 0; i < 2; i++) lines.push(`--prompt "own seed ${i}" --seed ${100 + i} --n_iter 4`);
  const file = path.join(sb.tmp, 'forty.txt');
  writeFileSync(file, lines.join('\n') + '\n');
  const gen = ['--prompts', file, '--model', fx('tiny-sd1'), '-W', '64', '-H', '64', '--steps', '1', '--seed', '5', '--device', 'cpu'];
  const one = path.join(sb.tmp, 'one');
  const shared = path.join(sb.tmp, 'shared');

  const plan = await run([...gen, '--dry-run', '--out', one]);
  assert.match(plan.stdout, /^dry run: 20 jobs, 40 images/);

  // the model's rewritten graphs are cached first, so the concurrent processes below only share the output directory
  const warm = await run(['warm-up', ...gen.slice(2), '--out', path.join(sb.tmp, 'warm'), '--quiet']);
  assert.equal(warm.status, 0, warm.stderr);

  const single = run([...gen, '--out', one, '--quiet']);
  const s0 = run([...gen, '--out', shared, '--shard', '0/3', '--quiet']);
  const s2 = run([...gen, '--out', shared, '--shard', '2/3', '--resume', '--quiet']);
  // shard 1 is killed after its second image, then resumed
  const child = spawn(process.execPath, [...CLI, ...gen, '--out', shared, '--shard', '1/3'], { cwd: sb.tmp, env: { ...process.env, HOME: sb.home, NO_COLOR: '1' } });
  let stderr = '';
  let killed = false;
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (!killed && /\[2\/\d+\]/.test(stderr)) {
      killed = true;
      child.kill('SIGKILL');
    }
  });
  await new Promise((resolve) => child.on('close', resolve));
  assert.ok(killed, stderr);
  const mid = spawnSync(process.execPath, [...CLI, 'status', shared, '--json'], { cwd: sb.tmp, encoding: 'utf8' });
  assert.equal(mid.status, 0, mid.stderr);
  const midShard1 = JSON.parse(mid.stdout).runs[0].parts.find((p: { shard: string }) => p.shard === '1/3');
  assert.ok(midShard1.done >= 2 && midShard1.missing > 0, `shard 1 after the kill: ${JSON.stringify(midShard1)}`);
  const s1 = await run([...gen, '--out', shared, '--shard', '1/3', '--resume']);
  for (const r of [await single, await s0, s1, await s2]) assert.equal(r.status, 0, r.stderr);
  assert.match(s1.stderr, /resuming: \d+ of 1[34] images already written/);

  assert.equal(pngs(one).length, 40);
  assert.deepEqual(pngs(shared), pngs(one), 'the same file names');
  for (const f of pngs(one)) assert.deepEqual(readFileSync(path.join(shared, f)), readFileSync(path.join(one, f)), f);
  const manifests = readdirSync(shared).filter((f) => f.endsWith('.jsonl')).sort();
  assert.equal(manifests.length, 3, 'one manifest per shard');

  const merged = path.join(sb.tmp, 'merged.jsonl');
  const st = spawnSync(process.execPath, [...CLI, 'status', shared, '--merge', merged], { cwd: sb.tmp, encoding: 'utf8' });
  assert.equal(st.status, 0, st.stderr);
  assert.match(st.stdout, /3 shards: 40\/40 done, 0 missing, 0 failed/);
  assert.match(st.stdout, /overall: 40\/40 done/);
  const recs = readFileSync(merged, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(recs.map((r) => r.file).sort(), pngs(one));
  assert.deepEqual(new Set(recs.map((r) => r.shard)), new Set(['0/3', '1/3', '2/3']));
  const js = JSON.parse(spawnSync(process.execPath, [...CLI, 'status', shared, '--json'], { cwd: sb.tmp, encoding: 'utf8' }).stdout);
  assert.deepEqual(js.runs[0].parts.map((p: { planned: number; done: number }) => [p.planned === p.done, p.planned >= 13 && p.planned <= 14]), [[true, true], [true, true], [true, true]]);
});
