/**
 * Hostile inputs and faults, end to end through the CLI: every failure is one line on stderr
 * (no stack trace, nothing raw from onnxruntime), nothing of the user's is overwritten, text
 * from files cannot drive the terminal. Plus the pure helpers behind them.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, cpSync, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ort from 'onnxruntime-node';
import { fx, type Ran, cliSandbox, CLI, assertOneErrorLine } from './helpers.js';
import { escapeControls, errorLine, safeJson, systemErrorLine } from '../src/cli/ui.js';
import { checkPromptLength, MAX_PROMPT_CHARS, MAX_PROMPT_TOKENS } from '../src/text/limits.js';
import { ortErrorMessage, ortLogOptions } from '../src/models/ort-log.js';
import { configErrorLine } from '../src/config/rc.js';
import { optionsFromMetadata } from '../src/cli/from.js';
import { sameEntry, tomePatchOutputs } from '../src/cli/tome-commands.js';
import { commandLineBytes, ARGV_RELAY_BYTES } from '../src/cli/main.js';
import { makeChunk, insertPngText } from '../src/metadata/png-text.js';
import { encodeRgbPng } from '../src/metadata/png.js';
import { metadataFromPng, readImageMetadata } from '../src/metadata/metadata.js';
import { UsageError } from '../src/errors.js';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const TINY = fx('tiny-sd1');


const sb = cliSandbox('hostile');

const run = (args: string[], cwd = sb.tmp): Promise<Ran> => sb.run(args, cwd);

/** Exit code, exactly one line on stderr matching `re`, no stack trace, no raw onnxruntime log, no escape sequence. */
function oneLine(r: Ran, code: number, re: RegExp): void {
  assertOneErrorLine(r, code, re);
  assert.doesNotMatch(r.stderr, /\[[EWI]:onnxruntime/, 'no raw onnxruntime log line');
  assert.doesNotMatch(r.stderr, /\x1b/, 'no escape sequence');
}

function dir(name: string): string {
  const d = path.join(sb.tmp, name);
  mkdirSync(d, { recursive: true });
  return d;
}

// ---------------------------------------------------------------------------------------------
// onnxruntime's own log

test('a size the UNet cannot take: one line from sdgen, nothing raw from onnxruntime', async () => {
  // 72 / 8 = 9 latent rows: the tiny UNet's up-block Concat needs an even size
  const r = await run(['a', '--model', TINY, '--width', '72', '--height', '72', '--steps', '1', '--device', 'cpu', '-q', '--out', dir('odd')]);
  oneLine(r, 1, /^failed \(1 image\): .*Concat.*mismatched dimensions of 9 and 10/);
});

test('truncated external weights: one line naming the tensor, not printed twice by onnxruntime', async () => {
  const model = path.join(sb.tmp, 'trunc-model');
  cpSync(TINY, model, { recursive: true });
  truncateSync(path.join(model, 'unet', 'weights.pb'), 1000);
  const r = await run(['a', '--model', model, '--steps', '1', '--width', '64', '--height', '64', '--device', 'cpu', '-q', '--out', dir('trunc-out')]);
  assert.equal(r.status, 1, r.stderr);
  oneLine(r, 1, /conv_in\.weight/);
  assert.doesNotMatch(r.stderr, /onnxruntime_src|\[ONNXRuntimeError\]/, 'C++ locations condensed away');
});

test('ortErrorMessage condenses real onnxruntime exceptions to their sentence; the session log level is fatal', async () => {
  const model = path.join(sb.tmp, 'trunc-unit');
  mkdirSync(model);
  copyFileSync(path.join(TINY, 'unet', 'model.onnx'), path.join(model, 'model.onnx'));
  copyFileSync(path.join(TINY, 'unet', 'weights.pb'), path.join(model, 'weights.pb'));
  truncateSync(path.join(model, 'weights.pb'), 1000);
  assert.deepEqual(ortLogOptions({}), { logSeverityLevel: 4, logVerbosityLevel: 0 });
  assert.equal(ortLogOptions({ SDGEN_ORT_LOG: 'warning' }).logSeverityLevel, 2);
  let raw = '';
  try {
    await ort.InferenceSession.create(path.join(model, 'model.onnx'), { ...ortLogOptions({}) });
    assert.fail('the truncated model loaded');
  } catch (e) {
    raw = (e as Error).message;
  }
  assert.match(raw, /onnxruntime_src/, 'the raw message has the C++ noise this test is about');
  const short = ortErrorMessage(new Error(raw));
  assert.doesNotMatch(short, /onnxruntime_src|\[ONNXRuntimeError\]|\.cc:\d+|\n/);
  assert.match(short, /^Exception during initialization: External initializer: conv_in\.weight offset: 0 size to read: 4608 given file_length: 1000/);
  // a message without C++ noise is left as it is
  assert.equal(ortErrorMessage(new Error('Load model from x.onnx failed:Protobuf parsing failed.')), 'Load model from x.onnx failed:Protobuf parsing failed.');
});

// ---------------------------------------------------------------------------------------------
// Text from files on the terminal

test('escapeControls / safeJson / errorLine', () => {
  assert.equal(escapeControls('a\x1b]0;t\x07b'), 'a\\x1b]0;t\\x07b');
  assert.equal(escapeControls('x\u009b2Jy\x7f'), 'x\\u009b2Jy\\x7f');
  assert.equal(escapeControls('l1\nl2\tt\r'), 'l1\\x0al2\\x09t\\x0d');
  assert.equal(escapeControls('l1\nl2\tt\r', { newline: true, tab: true }), 'l1\nl2\tt\\x0d');
  assert.equal(escapeControls('(cat:1.2) \\(x\\) é 猫'), '(cat:1.2) \\(x\\) é 猫', 'printable text and backslashes unchanged');
  const v = { s: 'a\x1b[31m\u009b\x7f\u0085\n' };
  const j = safeJson(v);
  assert.doesNotMatch(j, /[\x00-\x1f\x7f-\x9f]/);
  assert.deepEqual(JSON.parse(j), v, 'the same JSON value');
  assert.equal(errorLine('first\n  second\r\nthird\x1b'), 'first second third\\x1b');
  const sys = Object.assign(new Error("ENOTDIR: not a directory, mkdir '/f/tome'"), { code: 'ENOTDIR', syscall: 'mkdir', path: '/f/tome' });
  assert.equal(systemErrorLine(sys), 'cannot mkdir /f/tome: a part of the path is not a directory (ENOTDIR)');
  assert.equal(systemErrorLine(new Error('plain')), null);
});

async function hostilePng(): Promise<Buffer> {
  const base = await encodeRgbPng(new Uint8Array(8 * 8 * 3), 8, 8);
  const osc = '\x1b]0;pwned\x07';
  const withText = insertPngText(base, [
    { keyword: 'parameters', text: `a cat${osc}\x1b[2J\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64` },
    { keyword: 'Comment', text: 'c1 \u009b31m red \u009d0;t\u009c\rback', international: true },
  ]);
  // a raw tEXt chunk: Latin-1 with ESC, BEL and the C1 byte 0x9b, which textChunk would not write as tEXt
  const raw = makeChunk('tEXt', Buffer.concat([Buffer.from('Title\x1b[5m', 'latin1'), Buffer.from([0]), Buffer.from('t\x1b]8;;http://x\x07link\x9b1m', 'latin1')]));
  const at = withText.indexOf(Buffer.from('IDAT')) - 4;
  return Buffer.concat([withText.subarray(0, at), raw, withText.subarray(at)]);
}

test('sdgen metadata: ESC/OSC/CSI (C0 and C1) from text chunks are printed escaped; --json keeps the values', async () => {
  const file = path.join(sb.tmp, 'hostile.png');
  writeFileSync(file, await hostilePng());
  const meta = metadataFromPng(readFileSync(file), file);
  assert.equal(meta.chunks.length, 3, 'three text chunks written');
  const r = await run(['metadata', file]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, '');
  assert.doesNotMatch(r.stdout, /[\x00-\x08\x0b-\x1f\x7f-\x9f]/, 'no control character but newline and tab');
  assert.match(r.stdout, /a cat\\x1b\]0;pwned\\x07\\x1b\[2J/);
  assert.match(r.stdout, /Title\\x1b\[5m\nt\\x1b\]8;;http:\/\/x\\x07link\\u009b1m/);
  assert.match(r.stdout, /c1 \\u009b31m red \\u009d0;t\\u009c\\x0dback/);
  const j = await run(['metadata', file, '--json']);
  assert.equal(j.status, 0, j.stderr);
  assert.doesNotMatch(j.stdout.trimEnd(), /[\x00-\x1f\x7f-\x9f]/);
  const parsed = JSON.parse(j.stdout) as { parameters: string; text: Record<string, string> };
  assert.equal(parsed.parameters, meta.parameters);
  assert.equal(parsed.text['Comment'], 'c1 \u009b31m red \u009d0;t\u009c\rback');
  assert.equal(parsed.text['Title\x1b[5m'], 't\x1b]8;;http://x\x07link\u009b1m');
});

// ---------------------------------------------------------------------------------------------
// tome-patch never replaces what it did not make

function md5(file: string): string {
  return createHash('md5').update(readFileSync(file)).digest('hex');
}

test('tome-patch: OUT = IN, OUT = IN\'s weights, a symlink to IN, a foreign OUT_data are refused; --overwrite replaces a previous OUT', async () => {
  const d = dir('patch');
  const IN = path.join(d, 'model.onnx');
  const W = path.join(d, 'weights.pb');
  copyFileSync(path.join(TINY, 'unet', 'model.onnx'), IN);
  copyFileSync(path.join(TINY, 'unet', 'weights.pb'), W);
  const before = [md5(IN), md5(W)];
  const unchanged = () => assert.deepEqual([md5(IN), md5(W)], before, 'the input model and its weights are unchanged');
  const patch = (out: string, ...more: string[]) => run(['tome-patch', 'model.onnx', out, '--tome', '0.5', ...more], d);

  oneLine(await patch('model.onnx'), 2, /is the input model/);
  oneLine(await patch('model.onnx', '--overwrite'), 2, /is the input model/);
  oneLine(await patch('./sub/../weights.pb', '--overwrite'), 2, /weights file of the input model/);
  symlinkSync(IN, path.join(d, 'alias.onnx'));
  oneLine(await patch('alias.onnx', '--overwrite'), 2, /is the input model/);
  unchanged();

  // someone else's file where OUT's weights would go
  writeFileSync(path.join(d, 'out.onnx_data'), 'not yours');
  oneLine(await patch('out.onnx'), 2, /out\.onnx_data exists/);
  oneLine(await patch('out.onnx', '--overwrite'), 2, /not a weights file of out\.onnx/);
  assert.equal(readFileSync(path.join(d, 'out.onnx_data'), 'utf8'), 'not yours');
  assert.equal(existsSync(path.join(d, 'out.onnx')), false);
  rmSync(path.join(d, 'out.onnx_data'));

  // a fresh OUT, then the same OUT again: refused, then replaced with --overwrite
  const first = await patch('out.onnx');
  assert.equal(first.status, 0, first.stderr);
  assert.match(first.stdout, /^wrote out\.onnx \(\d+ blocks? patched/);
  assert.ok(statSync(path.join(d, 'out.onnx_data')).size === statSync(W).size);
  oneLine(await patch('out.onnx'), 2, /out\.onnx exists \(pass --overwrite/);
  const again = await patch('out.onnx', '--overwrite');
  assert.equal(again.status, 0, again.stderr);
  unchanged();
  // no work folder left behind
  assert.deepEqual(readdirSync(d).filter((n) => n.startsWith('.')), []);

  // a hard link of IN is a second entry: --overwrite replaces that name, never IN's content
  linkSync(IN, path.join(d, 'hard.onnx'));
  oneLine(await patch('hard.onnx'), 2, /hard\.onnx exists/);
  const hl = await patch('hard.onnx', '--overwrite');
  assert.equal(hl.status, 0, hl.stderr);
  unchanged();
  assert.notEqual(md5(path.join(d, 'hard.onnx')), before[0]);
  const ort1 = await ort.InferenceSession.create(IN, { ...ortLogOptions({}) });
  await ort1.release();
});

test('sameEntry: one entry under two names vs two hard links; tomePatchOutputs', async () => {
  const d = dir('same');
  const a = path.join(d, 'a.bin');
  writeFileSync(a, 'x');
  linkSync(a, path.join(d, 'b.bin'));
  symlinkSync(a, path.join(d, 'c.bin'));
  assert.equal(await sameEntry(a, path.join(d, 'sub', '..', 'a.bin')), true);
  assert.equal(await sameEntry(a, path.join(d, 'c.bin')), true, 'a symlink resolves to the same entry');
  assert.equal(await sameEntry(a, path.join(d, 'b.bin')), false, 'a hard link is a second entry');
  assert.equal(await sameEntry(a, path.join(d, 'none.bin')), false);
  assert.deepEqual(tomePatchOutputs('/o/x.onnx', 3), ['/o/x.onnx', '/o/x.onnx_data', '/o/x.onnx_data.1', '/o/x.onnx_data.2']);
});

// ---------------------------------------------------------------------------------------------
// Long prompts on the command line

test('a 40 KB command line: relayed past onnxruntime\'s argv crash, the prompt arrives intact (dry run and a real 1-step run)', async () => {
  const long = Array.from({ length: 1800 }, () => 'photograph').join(' '); // 19,799 characters, 1,800 tokens
  const args = [long, '-n', long, '--model', TINY, '--steps', '1', '--width', '64', '--height', '64', '--device', 'cpu', '--seed', '7'];
  assert.ok(commandLineBytes(args) > 39_000 && commandLineBytes(args) > ARGV_RELAY_BYTES);
  const dry = await run([...args, '--dry-run', '--json', '--out', dir('long-dry')]);
  assert.equal(dry.status, 0, dry.stderr);
  assert.equal(dry.stderr, '');
  const plan = JSON.parse(dry.stdout) as { prompt: string; negativePrompt: string; seed: number };
  assert.equal(plan.prompt, long);
  assert.equal(plan.negativePrompt, long);
  assert.equal(plan.seed, 7);
  const out = dir('long-run');
  const r = await run([...args, '-q', '--out', out]);
  assert.equal(r.status, 0, `exit ${r.status} (signal crash: 139), stderr: ${r.stderr}`);
  assert.equal(r.stderr, '');
  const pngs = readdirSync(out).filter((f) => f.endsWith('.png'));
  assert.equal(pngs.length, 1);
  const meta = await readImageMetadata(path.join(out, pngs[0]!));
  assert.equal(meta.sdgen?.params.prompt, long);
});

test('prompt length limits: over 20,000 characters exits 2 with one line (argv, --negative-prompt, tokens)', async () => {
  oneLine(await run(['a'.repeat(MAX_PROMPT_CHARS + 1), '--dry-run']), 2, /^sdgen: prompt: 20,001 characters, over the limit of 20,000/);
  oneLine(await run(['a', '-n', 'b'.repeat(MAX_PROMPT_CHARS + 5), '--dry-run']), 2, /^sdgen: --negative-prompt: 20,005 characters/);
  assert.doesNotThrow(() => checkPromptLength('a'.repeat(MAX_PROMPT_CHARS), 'prompt'));
  // code points, not UTF-16 units: 20,000 emoji are 40,000 units
  assert.doesNotThrow(() => checkPromptLength('😀'.repeat(MAX_PROMPT_CHARS), 'prompt'));
  assert.throws(() => checkPromptLength('😀'.repeat(MAX_PROMPT_CHARS + 1), 'prompt'), (e: Error) => e instanceof UsageError && /20,001 characters/.test(e.message));
  assert.doesNotThrow(() => checkPromptLength('a', 'prompt', MAX_PROMPT_TOKENS));
  assert.throws(() => checkPromptLength('a', 'p.txt:3: prompt', MAX_PROMPT_TOKENS + 1), /^UsageError: p\.txt:3: prompt: 4,801 tokens \(65 chunks of 75\), over the limit of 4,800 \(64 chunks/);
});

// ---------------------------------------------------------------------------------------------
// --from, config files, --cache-dir

async function pngWith(entries: { keyword: string; text: string; international?: boolean }[]): Promise<Buffer> {
  return insertPngText(await encodeRgbPng(new Uint8Array(8 * 8 * 3), 8, 8), entries);
}

test('--from: recorded values past the flag limits exit 2 with one line naming the file and the value', async () => {
  const rec = (params: Record<string, unknown>) =>
    JSON.stringify({ sdgen: '0.1.0', params: { prompt: 'a', negativePrompt: '', width: 64, height: 64, steps: 20, cfg: 7, seed: 1, ...params }, tomeApplied: false });
  const cases: Array<[string, { keyword: string; text: string; international?: boolean }, RegExp]> = [
    ['steps.png', { keyword: 'sdgen', text: rec({ steps: 5000 }), international: true }, /steps\.png: recorded steps: expected an integer from 1 to 1000, got 5000/],
    ['seed.png', { keyword: 'parameters', text: 'a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 99999999999999999999, Size: 64x64' }, /seed\.png: recorded seed: expected an integer from -1 to 2\^53-1/],
    ['size.png', { keyword: 'parameters', text: 'a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 100000x64' }, /size\.png: recorded width: expected an integer from 8 to 16384/],
    ['cfg.png', { keyword: 'sdgen', text: rec({ cfg: 1e9 }), international: true }, /cfg\.png: recorded cfg: expected a number from 0 to 100/],
    ['prompt.png', { keyword: 'sdgen', text: rec({ prompt: 'x'.repeat(MAX_PROMPT_CHARS + 1) }), international: true }, /prompt\.png: recorded prompt: 20,001 characters/],
  ];
  assert.equal(cases.length, 5);
  for (const [name, entry, re] of cases) {
    const file = path.join(sb.tmp, name);
    writeFileSync(file, await pngWith([entry]));
    oneLine(await run(['--from', file, '--dry-run', '--out', dir('from-out')]), 2, re);
  }
  // in-range values pass through unchanged
  const ok = path.join(sb.tmp, 'ok.png');
  writeFileSync(ok, await pngWith([{ keyword: 'sdgen', text: rec({ steps: 1000, seed: 2 ** 53 - 1 }), international: true }]));
  const f = optionsFromMetadata(await readImageMetadata(ok));
  assert.equal(f.options.steps, 1000);
  assert.equal(f.options.seed, 2 ** 53 - 1);
  assert.equal(f.options.width, 64);
});

test('invalid YAML in .sdgenrc: one line with the parser\'s reason and position', async () => {
  const d = dir('badrc');
  writeFileSync(path.join(d, '.sdgenrc'), 'steps: [1,\n  width: 3\n');
  oneLine(await run(['a', '--dry-run'], d), 2, /\.sdgenrc:3:1: invalid YAML: unexpected end of the stream within a flow collection$/);
  assert.equal(
    configErrorLine('x.json', { message: 'JSON Error in /x.json:\nUnexpected token } in JSON at position 12\n\n  1 | {"a": }' }),
    'x.json: invalid JSON: Unexpected token } in JSON at position 12',
  );
});

test('--cache-dir pointing at a file, with --tome: exit 2, one line', async () => {
  const file = path.join(sb.tmp, 'not-a-dir');
  writeFileSync(file, 'x');
  oneLine(
    await run(['a', '--model', TINY, '--tome', '0.5', '--cache-dir', file, '--steps', '1', '--width', '64', '--height', '64', '-q', '--out', dir('cache-out')]),
    2,
    /^sdgen: --cache-dir: .*not-a-dir is not a directory$/,
  );
});

test('a cache directory from .sdgenrc that is a file, or that cannot be made (under /proc): one line, exit 1, no hang', async () => {
  const cwd = dir('rc-cache');
  const file = path.join(cwd, 'cache-file');
  writeFileSync(file, 'x');
  const args = ['a', '--model', TINY, '--steps', '1', '--width', '64', '--height', '64', '-q', '--out', path.join(cwd, 'out')];
  writeFileSync(path.join(cwd, '.sdgenrc'), `cacheDir: ${file}\n`);
  oneLine(await run(args, cwd), 1, /cache directory .*cache-file is not a directory \(set by --cache-dir, cacheDir in \.sdgenrc, or SDGEN_CACHE_DIR\)$/);
  writeFileSync(path.join(cwd, '.sdgenrc'), 'cacheDir: /proc/sdgen-no-such/cache\n');
  oneLine(await run(args, cwd), 1, /cache directory \/proc\/sdgen-no-such\/cache cannot be created \(ENOENT\)/);
});
