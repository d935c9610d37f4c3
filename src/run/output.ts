/**
 * Output files: name templates and safe file names (pure), and the file operations of a run —
 * next free index, temporary file + rename, the `sdgen-run.jsonl` manifest and the resume state.
 */
import { closeSync, existsSync, fdatasyncSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { SdgenError, UsageError } from '../errors.js';

// ---------------------------------------------------------------------------------------------
// Name templates (pure)

export const NAME_FIELDS = ['index', 'seed', 'prompt', 'negative', 'steps', 'cfg', 'sampler', 'width', 'height', 'job', 'model', 'date', 'time'] as const;
export type NameField = (typeof NAME_FIELDS)[number];
export type NameValues = Record<NameField, string | number>;

export const MAX_NAME_BYTES = 200;
export const DEFAULT_NAME_TEMPLATE = '{index:05}-{seed}';

type Part = { lit: string } | { field: NameField; spec: string };

/** Parses a template; `{{` and `}}` are literal braces. Throws a UsageError on a bad field. */
export function parseNameTemplate(template: string): Part[] {
  const parts: Part[] = [];
  let lit = '';
  for (let i = 0; i < template.length; i++) {
    const c = template[i]!;
    if (c === '{' && template[i + 1] === '{') { lit += '{'; i++; continue; }
    if (c === '}' && template[i + 1] === '}') { lit += '}'; i++; continue; }
    if (c === '}') throw new UsageError(`--name: unmatched "}" in ${JSON.stringify(template)}`);
    if (c !== '{') { lit += c; continue; }
    const end = template.indexOf('}', i);
    if (end < 0) throw new UsageError(`--name: unclosed "{" in ${JSON.stringify(template)}`);
    const body = template.slice(i + 1, end);
    const [name, spec = ''] = body.split(':', 2) as [string, string?];
    if (!(NAME_FIELDS as readonly string[]).includes(name)) {
      throw new UsageError(`--name: unknown field {${name}} (fields: ${NAME_FIELDS.join(', ')})`);
    }
    if (spec !== '' && !/^\d{1,3}$/.test(spec)) throw new UsageError(`--name: bad width in {${body}} (use {${name}:NUMBER})`);
    if (lit) parts.push({ lit });
    lit = '';
    parts.push({ field: name as NameField, spec });
    i = end;
  }
  if (lit) parts.push({ lit });
  if (parts.length === 0) throw new UsageError('--name: empty template');
  return parts;
}

const WINDOWS_RESERVED = /^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$/i;

/** Truncates to at most `maxBytes` UTF-8 bytes without splitting a character. */
export function truncateBytes(s: string, maxBytes: number): string {
  if (Buffer.byteLength(s) <= maxBytes) return s;
  let out = '';
  let bytes = 0;
  for (const ch of s) {
    const b = Buffer.byteLength(ch);
    if (bytes + b > maxBytes) break;
    out += ch;
    bytes += b;
  }
  return out;
}

/** Replaces what is unsafe in a file name component on any OS (no extension handling). */
export function sanitizeComponent(s: string): string {
  return s
    .replace(/[\u0000-\u001f\u007f-\u009f]/g, ' ')
    .replace(/[/\\:*?"<>|]/g, '_')
    .replace(/\s+/g, ' ')
    .trim();
}

/**
 * A safe file name on Windows, macOS and Linux: no `/\:*?"<>|`, no control characters, no
 * leading/trailing spaces or trailing dots, not a reserved Windows device name, at most
 * MAX_NAME_BYTES UTF-8 bytes including the extension.
 */
export function safeFileName(base: string, ext = '.png'): string {
  let s = sanitizeComponent(base);
  s = truncateBytes(s, MAX_NAME_BYTES - Buffer.byteLength(ext));
  s = s.replace(/[. ]+$/, '').replace(/^ +/, '');
  if (s === '' || /^\.+$/.test(s)) s = '_';
  if (WINDOWS_RESERVED.test(s)) s = `_${s}`;
  return s + ext;
}

function formatField(field: NameField, value: string | number, spec: string): string {
  if (typeof value === 'number') {
    const s = String(value);
    if (spec === '') return s;
    const width = Number(spec);
    if (Number.isInteger(value) && value >= 0) return s.padStart(width, '0');
    return s;
  }
  let s = field === 'prompt' || field === 'negative' || field === 'model' ? sanitizeComponent(value) : value;
  if (spec !== '') s = [...s].slice(0, Number(spec)).join('').trimEnd();
  return s;
}

/** Renders a parsed template to a safe file name with `.png`. */
export function renderName(parts: Part[], values: NameValues, ext = '.png'): string {
  let s = '';
  for (const p of parts) s += 'lit' in p ? p.lit : formatField(p.field, values[p.field], p.spec);
  return safeFileName(s, ext);
}

/** `name.png` → `name-2.png`, `name-3.png`, … : the first not in `taken`. */
export function uniqueName(name: string, taken: (n: string) => boolean): string {
  if (!taken(name)) return name;
  const ext = path.extname(name);
  const stem = name.slice(0, name.length - ext.length);
  for (let k = 2; ; k++) {
    const suffix = `-${k}`;
    const cand = truncateBytes(stem, MAX_NAME_BYTES - Buffer.byteLength(suffix + ext)) + suffix + ext;
    if (!taken(cand)) return cand;
  }
}

/** The leading number of a file name (`00012-42.png` → 12), or -1. */
export function leadingIndex(file: string): number {
  const m = /^(\d+)/.exec(file);
  return m ? Number(m[1]) : -1;
}

/** Next free `{index}`: one past the largest leading number among existing `.png` files. */
export function nextIndexFrom(files: Iterable<string>): number {
  let max = 0;
  for (const f of files) if (f.toLowerCase().endsWith('.png')) max = Math.max(max, leadingIndex(f));
  return max + 1;
}

// ---------------------------------------------------------------------------------------------
// File operations

export const MANIFEST_NAME = 'sdgen-run.jsonl';
export const RESUME_STATE_NAME = '.sdgen-resume.json';

export function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new SdgenError(`${dir}: cannot list the output directory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

let tmpCounter = 0;

/** Writes `data` to `file` through a temporary name in the same directory and a rename. */
export function writeFileAtomic(file: string, data: Uint8Array | string): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${tmpCounter++}.tmp`);
  let fd: number | undefined;
  try {
    fd = openSync(tmp, 'wx');
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fdatasyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, file);
  } catch (e) {
    if (fd !== undefined) closeSync(fd);
    rmSync(tmp, { force: true });
    const code = (e as NodeJS.ErrnoException).code;
    throw new SdgenError(`${file}: cannot write (${code ?? (e as Error).message})`);
  }
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes temporary files a killed run left (`.NAME.PID.N.tmp` of a process that is gone). */
export function removeStaleTemps(dir: string): void {
  for (const f of listDir(dir)) {
    const m = /^\..+\.(\d+)\.\d+\.tmp$/.exec(f);
    if (m && !processAlive(Number(m[1]))) rmSync(path.join(dir, f), { force: true });
  }
}

/** One manifest line per image written. */
export interface ManifestRecord {
  file: string;
  index: number;
  job: number;
  image: number;
  seed: number;
  model?: string;
  tomeApplied: boolean;
  params: unknown;
  timings: unknown;
  source?: string;
  time: string;
}

/** Appends manifest lines, each written and flushed to disk before the call returns. */
export class Manifest {
  readonly file: string;
  constructor(dir: string) {
    this.file = path.join(dir, MANIFEST_NAME);
  }
  append(rec: ManifestRecord): void {
    const fd = openSync(this.file, 'a');
    try {
      writeSync(fd, JSON.stringify(rec) + '\n');
      fdatasyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }
  /** Files recorded so far (lines that do not parse — a torn last line — are ignored). */
  recordedFiles(): Set<string> {
    const out = new Set<string>();
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch {
      return out;
    }
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        const r = JSON.parse(line) as { file?: unknown };
        if (typeof r.file === 'string') out.add(r.file);
      } catch {
        // ignore
      }
    }
    return out;
  }
}

/** What `--resume` needs to rebuild the interrupted run's exact plan. */
export interface ResumeState {
  version: 1;
  /** hash of the job list before random seeds were drawn */
  planHash: string;
  /** each job's resolved seed */
  seeds: number[];
  /** each planned image's file name, in plan order */
  names: string[];
}

export function readResumeState(dir: string): ResumeState | null {
  const file = path.join(dir, RESUME_STATE_NAME);
  if (!existsSync(file)) return null;
  try {
    const s = JSON.parse(readFileSync(file, 'utf8')) as ResumeState;
    if (s.version !== 1 || !Array.isArray(s.seeds) || !Array.isArray(s.names) || typeof s.planHash !== 'string') return null;
    return s;
  } catch {
    return null;
  }
}

export function writeResumeState(dir: string, state: ResumeState): void {
  writeFileAtomic(path.join(dir, RESUME_STATE_NAME), JSON.stringify(state));
}
