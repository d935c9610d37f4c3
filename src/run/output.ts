/**
 * Output files: name templates and safe file names (pure), and the file operations of a run —
 * claiming image names atomically, the run's own manifest (`sdgen-run-KEY.jsonl`) and run state
 * (`.sdgen-resume-KEY.json`), creating the output directory.
 */
import { createHash } from 'node:crypto';
import {
  closeSync, fdatasyncSync, fstatSync, fsyncSync, ftruncateSync, linkSync, mkdirSync, openSync, readdirSync, readFileSync, readSync,
  renameSync, rmSync, statSync, writeSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeDirs } from '../files.js';
import { SdgenError, UsageError } from '../errors.js';

// ---------------------------------------------------------------------------------------------
// Name templates (pure)

export const NAME_FIELDS = ['index', 'seed', 'prompt', 'negative', 'steps', 'cfg', 'sampler', 'width', 'height', 'job', 'model', 'date', 'time'] as const;
export type NameField = (typeof NAME_FIELDS)[number];
export type NameValues = Record<NameField, string | number>;

export const MAX_NAME_BYTES = 200;

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

/** `name.png` with suffix n: `name-n.png` (n ≥ 2), still within MAX_NAME_BYTES. */
export function suffixedName(name: string, n: number): string {
  const ext = path.extname(name);
  const stem = name.slice(0, name.length - ext.length);
  const suffix = `-${n}`;
  return truncateBytes(stem, MAX_NAME_BYTES - Buffer.byteLength(suffix + ext)) + suffix + ext;
}

/** `name.png` → `name-2.png`, `name-3.png`, … : the first not in `taken`. */
export function uniqueName(name: string, taken: (n: string) => boolean): string {
  if (!taken(name)) return name;
  for (let k = 2; ; k++) {
    const cand = suffixedName(name, k);
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
//
// Any number of sdgen processes (separate runs, or the shards of one run) may write into one
// output directory. Nothing is ever renamed over a file another process may own: an image is
// written to a temporary file and then claimed under its final name with link(2), which fails
// with EEXIST instead of replacing; a taken name moves on to the next one. Each run has its own
// manifest and run state (`sdgen-run-KEY.jsonl`, `.sdgen-resume-KEY.json`), so no two processes
// append to one file — which also holds on network filesystems, where O_APPEND is not atomic.

export const MANIFEST_PREFIX = 'sdgen-run-';
export const MANIFEST_SUFFIX = '.jsonl';
export const STATE_PREFIX = '.sdgen-resume-';
export const STATE_SUFFIX = '.json';

export function manifestPath(dir: string, key: string): string {
  return path.join(dir, `${MANIFEST_PREFIX}${key}${MANIFEST_SUFFIX}`);
}

export function statePath(dir: string, key: string): string {
  return path.join(dir, `${STATE_PREFIX}${key}${STATE_SUFFIX}`);
}

/** `write(2)`: returns the bytes written (possibly fewer than asked) or throws; injectable for fault tests. */
export type WriteFn = (fd: number, buf: Uint8Array, offset: number, length: number) => number;

export const defaultWrite: WriteFn = (fd, buf, offset, length) => writeSync(fd, buf, offset, length);

/**
 * A failure to write into the output directory (full disk, quota, read-only, I/O error, a
 * directory that went away). The run stops on it: the next image would fail the same way.
 */
export class OutputError extends SdgenError {
  readonly code: string | undefined;
  constructor(message: string, code: string | undefined) {
    super(message);
    this.name = 'OutputError';
    this.code = code;
  }
}

const REASONS: Record<string, string> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EROFS: 'read-only filesystem',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EIO: 'I/O error',
  EFBIG: 'file too large',
  ENOENT: 'no such file or directory',
  ENOTDIR: 'not a directory',
};

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException)?.code;
}

function describe(e: unknown): string {
  const code = errCode(e);
  if (code) return REASONS[code] ? `${REASONS[code]}, ${code}` : code;
  return (e as Error)?.message ?? String(e);
}

function outputError(file: string, what: string, e: unknown): OutputError {
  return e instanceof OutputError ? e : new OutputError(`${file}: cannot ${what} (${describe(e)})`, errCode(e));
}

/** Writes all of `buf`, looping over short writes; a write that makes no progress is an error. */
function writeAll(fd: number, buf: Uint8Array, write: WriteFn): void {
  let off = 0;
  while (off < buf.length) {
    const n = write(fd, buf, off, buf.length - off);
    if (!(n > 0)) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
    off += n;
  }
}

/** Creates the output directory and its missing parents (makeDirs); a failure is one line. */
export function ensureDir(dir: string): void {
  try {
    makeDirs(dir);
  } catch (e) {
    throw new OutputError(`${dir}: cannot create the output directory (${describe(e)})`, errCode(e));
  }
}

export function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (e) {
    if (errCode(e) === 'ENOENT') return [];
    throw new SdgenError(`${dir}: cannot list the output directory (${describe(e)})`);
  }
}

/** Temporary names carry a host tag and the pid, so stale ones are recognised on their own host only. */
const HOST_TAG = createHash('sha256').update(os.hostname()).digest('hex').slice(0, 8);
const TEMP_RE = /^\..*\.([0-9a-f]{8})-(\d+)-\d+\.tmp$/;
let tmpCounter = 0;

function tempPath(file: string): string {
  const base = truncateBytes(path.basename(file), 150);
  return path.join(path.dirname(file), `.${base}.${HOST_TAG}-${process.pid}-${tmpCounter++}.tmp`);
}

/** Writes `data` to a fresh temporary file next to `file`, flushed to disk; returns its path. */
function writeTemp(file: string, data: Uint8Array, write: WriteFn): string {
  const tmp = tempPath(file);
  let fd: number | undefined;
  try {
    fd = openSync(tmp, 'wx');
    writeAll(fd, data, write);
    fdatasyncSync(fd);
    closeSync(fd);
    fd = undefined;
    return tmp;
  } catch (e) {
    if (fd !== undefined) closeSync(fd);
    rmSync(tmp, { force: true });
    throw outputError(file, 'write', e);
  }
}

function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // some filesystems cannot fsync a directory; the file itself is already on disk
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Replaces `file` with `data` through a temporary file and a rename. Only for files this process
 * owns (its run state, a merged manifest): a rename replaces whatever is there.
 */
export function writeFileAtomic(file: string, data: Uint8Array | string, write: WriteFn = defaultWrite): void {
  const tmp = writeTemp(file, typeof data === 'string' ? Buffer.from(data) : data, write);
  try {
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw outputError(file, 'write', e);
  }
}

/** link(2) is missing on some filesystems (FAT, some FUSE and SMB mounts). */
const NO_LINK = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EXDEV', 'EMLINK']);

function sameBytes(file: string, data: Uint8Array): boolean {
  try {
    const st = statSync(file);
    return st.size === data.length && readFileSync(file).equals(data);
  } catch {
    return false;
  }
}

export interface NewFileOptions {
  /** the name to try after `taken` has turned out to be taken (k = 1, 2, …) */
  next: (taken: string, k: number) => string;
  /** `--overwrite`: replace an existing file of the planned name */
  overwrite?: boolean;
  /**
   * An existing file with exactly these bytes is taken as this image (a resumed run whose
   * previous process died between writing the image and recording it).
   */
  adoptIdentical?: boolean;
  write?: WriteFn;
}

/**
 * Moves the temporary file `tmp` to `file` unless `file` exists: true when claimed, false when
 * the name is taken. link(2) + unlink, or, where there are no hard links, an O_EXCL reservation
 * that the data is then renamed onto.
 */
function claim(tmp: string, file: string): boolean {
  try {
    linkSync(tmp, file);
    rmSync(tmp, { force: true });
    return true;
  } catch (e) {
    const code = errCode(e);
    if (code === 'EEXIST') return false;
    if (!NO_LINK.has(code ?? '')) throw e;
  }
  try {
    closeSync(openSync(file, 'wx'));
  } catch (e) {
    if (errCode(e) === 'EEXIST') return false;
    throw e;
  }
  renameSync(tmp, file);
  return true;
}

/**
 * Writes a new file in `dir` under `name`, or under the next free name when `name` is taken at
 * the moment of writing (by anyone: another run, another shard). The file appears whole or not
 * at all and never replaces another file (unless `overwrite`). Returns the name it got.
 */
export function writeNewFile(dir: string, name: string, data: Uint8Array, opts: NewFileOptions): { name: string; adopted: boolean } {
  const tmp = writeTemp(path.join(dir, name), data, opts.write ?? defaultWrite);
  let cand = name;
  try {
    for (let k = 1; k <= 100_000; k++) {
      const file = path.join(dir, cand);
      if (opts.overwrite) {
        renameSync(tmp, file);
        syncDir(dir);
        return { name: cand, adopted: false };
      }
      if (claim(tmp, file)) {
        syncDir(dir);
        return { name: cand, adopted: false };
      }
      if (opts.adoptIdentical && sameBytes(file, data)) {
        rmSync(tmp, { force: true });
        return { name: cand, adopted: true };
      }
      cand = opts.next(cand, k);
    }
    throw new OutputError(`${path.join(dir, name)}: no free name found`, undefined);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw outputError(path.join(dir, cand), 'write', e);
  }
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errCode(e) === 'EPERM';
  }
}

/**
 * Removes temporary files that a killed sdgen process on this host left behind. Those of other
 * hosts (workers on a shared volume) are left alone: their pids mean nothing here.
 */
export function removeStaleTemps(dir: string): void {
  for (const f of listDir(dir)) {
    const m = TEMP_RE.exec(f);
    if (m && m[1] === HOST_TAG && !processAlive(Number(m[2]))) rmSync(path.join(dir, f), { force: true });
  }
}

/** One manifest line per image written. */
export interface ManifestRecord {
  file: string;
  /** 0-based position of the image in the whole plan */
  index: number;
  job: number;
  image: number;
  seed: number;
  model?: string;
  tomeApplied: boolean;
  params: unknown;
  timings: unknown;
  source?: string;
  /** `I/N` for a sharded run */
  shard?: string;
  time: string;
}

/** The complete records of a manifest file; a torn or unparseable line is skipped and counted. */
export function readManifest(file: string): { records: ManifestRecord[]; bad: number } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if (errCode(e) === 'ENOENT') return { records: [], bad: 0 };
    throw new SdgenError(`${file}: cannot read the manifest (${describe(e)})`);
  }
  const records: ManifestRecord[] = [];
  let bad = 0;
  const lines = text.split('\n');
  // a last line without its newline was cut short (the newline is written with the record)
  if (lines.at(-1) !== '') bad++;
  for (const line of lines.slice(0, -1)) {
    if (!line.trim()) continue;
    try {
      const r = JSON.parse(line) as ManifestRecord;
      if (r && typeof r.file === 'string' && Number.isInteger(r.index)) records.push(r);
      else bad++;
    } catch {
      bad++;
    }
  }
  return { records, bad };
}

/**
 * A run's own manifest. Each record is one line, written whole or not at all: a failed append
 * (full disk, short write) is cut back off before the error is thrown, and a torn last line left
 * by a crash is cut off before the first append of the next process (only one process ever
 * appends to a manifest, so this cannot race).
 */
export class Manifest {
  private repaired = false;
  constructor(readonly file: string, private readonly write: WriteFn = defaultWrite) {}

  /** Cuts a torn last line; returns whether there was one. */
  repair(): boolean {
    this.repaired = true;
    let fd: number;
    try {
      fd = openSync(this.file, 'r+');
    } catch (e) {
      if (errCode(e) === 'ENOENT') return false;
      throw outputError(this.file, 'open the manifest', e);
    }
    try {
      const size = fstatSync(fd).size;
      if (size === 0) return false;
      const chunk = Buffer.alloc(64 * 1024);
      let end = size;
      let keep = 0;
      let first = true;
      scan: while (end > 0) {
        const start = Math.max(0, end - chunk.length);
        const n = readSync(fd, chunk, 0, end - start, start);
        for (let i = n - 1; i >= 0; i--) {
          if (chunk[i] === 0x0a) {
            if (first && start + i === size - 1) return false; // ends with a newline: whole
            keep = start + i + 1;
            break scan;
          }
          first = false;
        }
        first = false;
        end = start;
      }
      ftruncateSync(fd, keep);
      fdatasyncSync(fd);
      return true;
    } catch (e) {
      throw outputError(this.file, 'repair the manifest', e);
    } finally {
      closeSync(fd);
    }
  }

  append(rec: ManifestRecord): void {
    if (!this.repaired) this.repair();
    const line = Buffer.from(JSON.stringify(rec) + '\n');
    let fd: number | undefined;
    let size = 0;
    try {
      fd = openSync(this.file, 'a');
      size = fstatSync(fd).size;
      writeAll(fd, line, this.write);
      fdatasyncSync(fd);
    } catch (e) {
      if (fd !== undefined) {
        try {
          ftruncateSync(fd, size);
        } catch {
          this.repaired = false; // cut at the next append (or by --resume)
        }
      }
      throw outputError(this.file, 'append to the manifest', e);
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }
}

/** What a run needs to be resumed and reported on (`sdgen status`): its exact plan. */
export interface RunState {
  version: 2;
  /** file-name key of this run's manifest and state */
  key: string;
  /** the job list (random seeds aside) and the name template; shards of one run share it */
  planHash: string;
  shard: { index: number; count: number } | null;
  /** images in the whole plan (all shards) */
  total: number;
  /** images of each shard (sharded runs) */
  shardSizes?: number[];
  /** each job's resolved seed */
  seeds: number[];
  /** this run's images: plan positions and planned names, in plan order */
  ordinals: number[];
  names: string[];
  /** plan positions of images that failed in the last process of this run */
  failed: number[];
  /** `{index}` of plan position 0 (for the names tried when a planned one is taken) */
  startIndex: number;
  /** when the run was created (ISO) */
  created: string;
}

function isRunState(s: unknown): s is RunState {
  const r = s as RunState;
  return (
    !!r && r.version === 2 && typeof r.key === 'string' && typeof r.planHash === 'string' && Number.isInteger(r.total) &&
    Array.isArray(r.seeds) && Array.isArray(r.ordinals) && Array.isArray(r.names) && r.ordinals.length === r.names.length &&
    Array.isArray(r.failed) && Number.isInteger(r.startIndex) && typeof r.created === 'string'
  );
}

/** Every run state in `dir` (unreadable or foreign files are skipped), oldest first. */
export function listRunStates(dir: string): RunState[] {
  const out: RunState[] = [];
  for (const f of listDir(dir)) {
    if (!f.startsWith(STATE_PREFIX) || !f.endsWith(STATE_SUFFIX) || f.endsWith('.tmp')) continue;
    try {
      const s = JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as unknown;
      if (isRunState(s) && statePath(dir, s.key) === path.join(dir, f)) out.push(s);
    } catch {
      // not ours, or being replaced right now
    }
  }
  return out.sort((a, b) => a.created.localeCompare(b.created) || a.key.localeCompare(b.key));
}

/**
 * Creates a new run's state under `baseKey`, or `baseKey-2`, `-3`, … when another run already
 * has that key; with `unique` (a shard, whose key must stay what its restarts look for) a taken
 * key is a UsageError instead. Returns the state as written.
 */
export function createRunState(dir: string, baseKey: string, state: Omit<RunState, 'key'>, unique = false): RunState {
  for (let k = 1; k <= 100_000; k++) {
    const key = k === 1 ? baseKey : `${baseKey}-${k}`;
    const file = statePath(dir, key);
    const full: RunState = { ...state, key };
    const tmp = writeTemp(file, Buffer.from(JSON.stringify(full)), defaultWrite);
    let claimed = false;
    try {
      claimed = claim(tmp, file);
    } catch (e) {
      throw outputError(file, 'write', e);
    } finally {
      if (!claimed) rmSync(tmp, { force: true });
    }
    if (claimed) {
      syncDir(dir);
      return full;
    }
    if (unique) throw new UsageError(`${file}: this run is already recorded in the output directory; add --resume to continue it`);
  }
  throw new SdgenError(`${dir}: no free run key`);
}

/** Rewrites this run's own state (failures at the end of a process). */
export function updateRunState(dir: string, state: RunState): void {
  writeFileAtomic(statePath(dir, state.key), JSON.stringify(state));
}
