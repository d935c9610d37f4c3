/**
 * Terminal output: colour (only on a TTY, never under NO_COLOR or --no-color) and the run
 * reporters — cli-progress bars on a TTY, plain lines otherwise, JSON lines for --json,
 * nothing but errors for --quiet.
 */
import { Chalk, type ChalkInstance } from 'chalk';
import path from 'node:path';
import type { GeneratedImage, StepPhase } from '../pipeline/types.js';
import type { Job, PlannedImage } from '../run/jobs.js';
import type { RunReporter, RunSummary } from '../run/runner.js';
import { SdgenError } from '../errors.js';

export interface UiOptions {
  quiet: boolean;
  json: boolean;
  color: boolean;
  verbose: boolean;
}

export function colorEnabled(stream: NodeJS.WriteStream, flag: boolean, env: NodeJS.ProcessEnv = process.env): boolean {
  if (!flag) return false;
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  return stream.isTTY === true;
}

export function makeChalk(stream: NodeJS.WriteStream, flag: boolean): ChalkInstance {
  return new Chalk({ level: colorEnabled(stream, flag) ? 1 : 0 });
}

/** A path relative to the working directory when it is inside it, else absolute. */
export function displayPath(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file;
}

function fmtSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function summaryLine(s: RunSummary): string {
  const parts = [`wrote ${s.written} image${s.written === 1 ? '' : 's'}`, `skipped ${s.skipped}`, `failed ${s.failed}`];
  let line = parts.join(', ');
  if (s.secondsPerImage !== null) line += ` — ${s.secondsPerImage.toFixed(2)} s/image`;
  if (s.interrupted) line = `interrupted: ${line}; rerun the same command with --resume to finish`;
  return line;
}

/**
 * Text from files (PNG text chunks, prompt files, model folders, config files) made safe to
 * print: C0 controls, DEL and C1 controls become visible escapes (`\x1b`, `\x7f`, `\u009b`),
 * so an ESC/OSC sequence hidden in a file cannot drive the terminal (set its title, rewrite the
 * screen, hide text). Tab and newline are kept where they are meaningful (`keep`); carriage
 * return never is (it overwrites what was printed). Backslashes are left alone (A1111 prompts
 * use `\(` escapes). Pure.
 */
export function escapeControls(text: string, keep: { newline?: boolean; tab?: boolean } = {}): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => {
    if ((c === '\n' && keep.newline) || (c === '\t' && keep.tab)) return c;
    const code = c.charCodeAt(0);
    return code < 0x80 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/**
 * JSON.stringify for output that may reach a terminal: JSON.stringify escapes C0 controls inside
 * strings but not DEL or C1 controls (U+007F–U+009F); those are written as \u escapes, which is
 * still the same JSON value. Pure.
 */
export function safeJson(value: unknown, space?: number): string {
  return JSON.stringify(value, null, space).replace(/[\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** A message as one printable line: line breaks (and the spaces around them) become one space, other controls are escaped. Pure. */
export function errorLine(message: string): string {
  return escapeControls(message.trim().replace(/\s*[\r\n]+\s*/g, ' '), { tab: true });
}

/** The messages of an error's cause chain after the error itself (onnxruntime's full text, the errno error, …). */
function causes(e: Error): string[] {
  const out: string[] = [];
  let c: unknown = e.cause;
  for (let depth = 0; c !== undefined && c !== null && depth < 8; depth++) {
    out.push(c instanceof Error ? (c.stack ?? c.message) : String(c));
    c = c instanceof Error ? c.cause : undefined;
  }
  return out;
}

/**
 * An error as the user sees it. Without --verbose: one line, the message of an SdgenError, or
 * `what: CODE` for a Node.js system error (EACCES, ENOSPC, ENOTDIR: a failure of the machine,
 * not of sdgen); other errors are bugs and keep their stack. With --verbose: the stack and every
 * cause (an onnxruntime error in full).
 */
export function errorText(e: unknown, verbose: boolean): string {
  if (!(e instanceof Error)) return errorLine(String(e));
  if (verbose) return [e.stack ?? e.message, ...causes(e).map((c) => `caused by: ${c}`)].join('\n');
  if (e instanceof SdgenError) return errorLine(e.message);
  const sys = systemErrorLine(e);
  if (sys !== null) return sys;
  return e.stack ?? e.message;
}

/**
 * A Node.js system error (fs, spawn: `code` "E…" and `syscall`) as one line, e.g. "cannot mkdir
 * /x/cache/tome: not a directory (ENOTDIR)"; null for any other error.
 */
export function systemErrorLine(e: unknown): string | null {
  const err = e as NodeJS.ErrnoException;
  if (!(e instanceof Error) || typeof err.code !== 'string' || !/^E[A-Z0-9]+$/.test(err.code) || typeof err.syscall !== 'string') return null;
  const target = err.path !== undefined ? ` ${err.path}` : '';
  const why = SYSTEM_ERRORS[err.code] ?? err.message.replace(/^E[A-Z0-9]+:\s*/, '').split(',')[0]!;
  return errorLine(`cannot ${err.syscall}${target}: ${why} (${err.code})`);
}

const SYSTEM_ERRORS: Readonly<Record<string, string>> = {
  ENOENT: 'no such file or directory',
  ENOTDIR: 'a part of the path is not a directory',
  EISDIR: 'is a directory',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EEXIST: 'already exists',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EROFS: 'read-only file system',
  EMFILE: 'too many open files',
  ENAMETOOLONG: 'name too long',
  EIO: 'input/output error',
};

/** JSON line for --json: one per image written. */
export function jsonImageLine(file: string, out: GeneratedImage, img: PlannedImage, job: Job): string {
  return safeJson({
    path: file,
    seed: out.seed,
    parameters: out.params,
    timings: out.timings,
    model: out.modelName,
    tomeApplied: out.tomeApplied,
    job: job.index + 1,
    index: img.ordinal,
  });
}

/**
 * The steps bar's label: `steps` for a single-pass job; for hires fix the pass and its size,
 * `pass 1/2 512×512` then `hires 2/2 1024×1024`.
 */
export function phaseLabel(phase: StepPhase | undefined): string {
  if (!phase) return 'steps';
  return `${phase.pass === phase.passes && phase.passes > 1 ? 'hires' : 'pass'} ${phase.pass}/${phase.passes} ${phase.width}×${phase.height}`;
}

/** Reporter without bars: plain lines on stderr (or nothing when quiet), JSON on stdout. */
export class LineReporter implements RunReporter {
  private total = 0;
  private count = 0;
  constructor(
    private readonly ui: UiOptions,
    private readonly err: NodeJS.WritableStream = process.stderr,
    private readonly out: NodeJS.WritableStream = process.stdout,
    private readonly c: ChalkInstance = makeChalk(process.stderr, ui.color),
  ) {}
  private say(line: string): void {
    if (!this.ui.quiet) this.err.write(line + '\n');
  }
  start(total: number, alreadyDone: number): void {
    this.total = total;
    this.count = alreadyDone;
    if (alreadyDone > 0) this.say(`resuming: ${alreadyDone} of ${total} images already written`);
  }
  loadingModel(model: string): void {
    if (!this.ui.json) this.say(`loading model ${model}`);
  }
  notice(message: string): void {
    this.say(this.c.yellow(escapeControls(message, { newline: true, tab: true })));
  }
  imageWritten(img: PlannedImage, job: Job, file: string, out: GeneratedImage): void {
    this.count++;
    if (this.ui.json) this.out.write(jsonImageLine(file, out, img, job) + '\n');
    else this.say(`[${this.count}/${this.total}] ${this.c.green(escapeControls(displayPath(file)))}  seed ${out.seed}  ${fmtSeconds(out.timings.totalMs)}`);
  }
  imageSkipped(): void {
    // counted in start()
  }
  jobFailed(job: Job, error: unknown, images: number): void {
    const where = job.source ? `${escapeControls(job.source.file)}:${job.source.line}: ` : '';
    this.err.write(this.c.red(`${where}failed (${images} image${images === 1 ? '' : 's'}): ${errorText(error, this.ui.verbose)}`) + '\n');
  }
  finish(s: RunSummary): void {
    if (this.ui.quiet) {
      if (s.interrupted) this.err.write(summaryLine(s) + '\n');
      return;
    }
    this.err.write(summaryLine(s) + '\n');
  }
}

/** Progress bars on a TTY: the whole run (images, ETA) and the current image's steps (s/it). */
export class BarReporter implements RunReporter {
  private multibar: import('cli-progress').MultiBar | null = null;
  private runBar: import('cli-progress').SingleBar | null = null;
  private stepBar: import('cli-progress').SingleBar | null = null;
  private lastStepAt = 0;
  private rate = '';
  private done = 0;
  private total = 0;
  private firstDone = 0;
  private startedAt = 0;
  private readonly c: ChalkInstance;
  /** ETA from this run's own pace (images written since start); '--' until one is written. */
  private eta(): string {
    const made = this.done - this.firstDone;
    if (made <= 0) return '--';
    const s = Math.round(((performance.now() - this.startedAt) / 1000 / made) * (this.total - this.done));
    return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m` : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
  }
  constructor(
    private readonly cliProgress: typeof import('cli-progress'),
    private readonly ui: UiOptions,
  ) {
    this.c = makeChalk(process.stderr, ui.color);
  }
  private log(line: string): void {
    if (this.multibar) this.multibar.log(line + '\n');
    else process.stderr.write(line + '\n');
  }
  start(total: number, alreadyDone: number): void {
    this.done = alreadyDone;
    this.multibar = new this.cliProgress.MultiBar(
      { stream: process.stderr, clearOnComplete: false, hideCursor: true, etaBuffer: 20, fps: 5, forceRedraw: true },
      this.cliProgress.Presets.shades_classic,
    );
    this.runBar = this.multibar.create(total, alreadyDone, {}, {
      format: `images {bar} {value}/{total} | ETA {etaText} | {status}`,
    });
    this.total = total;
    this.firstDone = alreadyDone;
    this.startedAt = performance.now();
    this.runBar.update(alreadyDone, { status: alreadyDone ? `resumed, ${alreadyDone} done` : 'starting', etaText: '--' });
    if (alreadyDone > 0) this.log(`resuming: ${alreadyDone} of ${total} images already written`);
  }
  loadingModel(model: string): void {
    this.runBar?.update(this.done, { status: `loading ${path.basename(model)}` });
  }
  load(stage: string, done: number, total: number): void {
    this.runBar?.update(this.done, { status: `loading ${stage} (${done}/${total})` });
  }
  notice(message: string): void {
    this.log(this.c.yellow(escapeControls(message, { newline: true, tab: true })));
  }
  imageStart(img: PlannedImage, job: Job): void {
    this.runBar?.update(this.done, { status: `job ${job.index + 1}, seed ${img.seed}` });
    if (!this.stepBar && this.multibar) {
      this.stepBar = this.multibar.create(job.params.steps, 0, { rate: '', phase: 'steps' }, { format: `{phase} {bar} {value}/{total} | {rate}` });
    }
    this.stepBar?.setTotal(job.params.steps);
    this.stepBar?.update(0, { rate: '', phase: 'steps' });
    this.lastStepAt = performance.now();
    this.rate = '';
  }
  step(step: number, total: number, phase?: StepPhase): void {
    const now = performance.now();
    const dt = (now - this.lastStepAt) / 1000;
    this.lastStepAt = now;
    this.rate = dt >= 1 ? `${dt.toFixed(2)} s/it` : `${(1 / Math.max(dt, 1e-6)).toFixed(2)} it/s`;
    this.stepBar?.setTotal(total);
    this.stepBar?.update(Math.min(step, total), { rate: this.rate, phase: phaseLabel(phase) });
  }
  imageWritten(_img: PlannedImage, _job: Job, file: string): void {
    this.done++;
    this.runBar?.update(this.done, { status: `wrote ${path.basename(file)}`, etaText: this.eta() });
  }
  imageSkipped(): void {}
  jobFailed(job: Job, error: unknown, images: number): void {
    const where = job.source ? `${escapeControls(job.source.file)}:${job.source.line}: ` : '';
    this.log(this.c.red(`${where}failed (${images} image${images === 1 ? '' : 's'}): ${errorText(error, this.ui.verbose)}`));
  }
  finish(s: RunSummary): void {
    this.multibar?.stop();
    this.multibar = null;
    process.stderr.write(summaryLine(s) + '\n');
  }
}

export async function makeReporter(ui: UiOptions): Promise<RunReporter> {
  if (!ui.quiet && !ui.json && process.stderr.isTTY) {
    const cliProgress = (await import('cli-progress')).default;
    return new BarReporter(cliProgress, ui);
  }
  return new LineReporter(ui);
}
