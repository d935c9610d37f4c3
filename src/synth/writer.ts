/**
 * Writes a built synthetic model to disk, generating each initializer's values as it goes:
 * either inline (raw data inside model.onnx) or with tensors of at least `threshold` bytes
 * streamed chunk by chunk into one external-data file (`weights.pb`, the diffusers layout), so a
 * multi-GB UNet never sits in memory. Progress is reported per tensor in bytes.
 */
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { DataLocation } from '../onnx/types.js';
import { encodeModel } from '../onnx/proto.js';
import type { ParamEntry } from './context.js';
import type { BuiltModel } from './unet.js';
import { generateChunks, generateParam, paramBytes } from './weights.js';

export type ByteProgress = (done: number, total: number) => void;

export interface WriteOptions {
  seed: number;
  /** external data file name (relative to the model's folder); inline when undefined */
  externalFile?: string;
  /** tensors smaller than this stay inline (onnx's default: 1024 bytes) */
  threshold?: number;
  onProgress?: ByteProgress;
  /** mixed into every tensor's seed so that equal names in different models differ */
  salt?: string;
}

/** The parameter with its seed key prefixed by the model's salt. */
function salted(p: ParamEntry, salt: string | undefined): ParamEntry {
  return salt ? { ...p, seedKey: `${salt}/${p.seedKey ?? p.name}` } : p;
}

export function totalBytes(params: readonly ParamEntry[]): number {
  return params.reduce((a, p) => a + paramBytes(p), 0);
}

const YIELD_BYTES = 64 << 20;

/**
 * Writes `<dir>/model.onnx` (and the external file if asked); returns the paths written. Yields
 * to the event loop every 64 MiB so progress output can redraw during multi-GB writes.
 */
export async function writeModel(built: BuiltModel, dir: string, opts: WriteOptions): Promise<string[]> {
  const model = built.ctx.b.build();
  const inits = model.graph!.initializer;
  const byName = new Map(inits.map((t) => [t.name!, t]));
  const total = totalBytes(built.params);
  let done = 0;
  const written: string[] = [];
  const threshold = opts.threshold ?? 1024;
  let fd: number | undefined;
  let offset = 0;
  let sinceYield = 0;
  try {
    if (opts.externalFile !== undefined) {
      const extPath = join(dir, opts.externalFile);
      fd = openSync(extPath, 'w');
      written.push(extPath);
    }
    for (const param of built.params) {
      const t = byName.get(param.name);
      const p = salted(param, opts.salt);
      if (!t) throw new Error(`writeModel: initializer ${param.name} missing from the graph`);
      const size = paramBytes(p);
      if (fd !== undefined && size >= threshold) {
        const start = offset;
        for (const chunk of generateChunks(opts.seed, p)) {
          let o = 0;
          while (o < chunk.length) o += writeSync(fd, chunk, o, chunk.length - o);
          offset += chunk.length;
        }
        t.dataLocation = DataLocation.EXTERNAL;
        t.externalData = [
          { key: 'location', value: opts.externalFile! },
          { key: 'offset', value: String(start) },
          { key: 'length', value: String(size) },
        ];
      } else {
        t.rawData = generateParam(opts.seed, p);
      }
      done += size;
      opts.onProgress?.(done, total);
      sinceYield += size;
      if (sinceYield >= YIELD_BYTES) {
        sinceYield = 0;
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    }
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  const modelPath = join(dir, 'model.onnx');
  writeFileSync(modelPath, encodeModel(model));
  written.unshift(modelPath);
  return written;
}

/** The model with weights filled in memory (tests and small models). */
export function modelBytes(built: BuiltModel, seed: number, salt?: string): Uint8Array {
  const model = built.ctx.b.build();
  const byName = new Map(model.graph!.initializer.map((t) => [t.name!, t]));
  for (const p of built.params) {
    byName.get(p.name)!.rawData = generateParam(seed, salted(p, salt));
  }
  return encodeModel(model);
}
