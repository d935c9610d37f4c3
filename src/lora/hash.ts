/**
 * File hashes of LoRAs and embeddings: the full SHA-256 (cache keys, sdgen's metadata) and
 * A1111's short hashes for its infotext keys:
 * - `Lora hashes`: for a .safetensors LoRA A1111 uses the sd-webui-additional-networks hash
 *   (SHA-256 of the bytes after the 8-byte length and the JSON header, so editing metadata does
 *   not change it), first 12 hex digits;
 * - `TI hashes`: SHA-256 of the whole file, first 12 hex digits.
 * Results are remembered per (path, size, mtime) for the life of the process.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { UsageError } from '../errors.js';

export interface FileHashes {
  /** SHA-256 of the whole file, hex */
  sha256: string;
  /** SHA-256 of the bytes after the safetensors header, hex (A1111's LoRA hash) */
  addnet: string;
}

const memo = new Map<string, FileHashes>();

async function hashRange(path: string, start: number): Promise<string> {
  const h = createHash('sha256');
  await new Promise<void>((res, rej) => {
    const s = createReadStream(path, { start, highWaterMark: 1 << 20 });
    s.on('data', (c) => h.update(c));
    s.on('error', rej);
    s.on('end', () => res());
  });
  return h.digest('hex');
}

/** Both hashes of a safetensors file (read once per file version and process). */
export async function safetensorsHashes(path: string): Promise<FileHashes> {
  const abs = resolve(path);
  let st;
  try {
    st = await stat(abs);
  } catch (e) {
    throw new UsageError(`file not found: ${path}`, { cause: e });
  }
  const key = `${abs}\u0000${st.size}\u0000${st.mtimeMs}`;
  const known = memo.get(key);
  if (known !== undefined) return known;
  const fh = await open(abs, 'r');
  let dataStart = 0;
  try {
    const b = Buffer.alloc(8);
    const { bytesRead } = await fh.read(b, 0, 8, 0);
    if (bytesRead === 8) {
      const n = b.readBigUInt64LE(0);
      if (n + 8n <= BigInt(st.size)) dataStart = Number(n) + 8;
    }
  } finally {
    await fh.close();
  }
  const sha256 = await hashRange(abs, 0);
  const addnet = dataStart > 0 ? await hashRange(abs, dataStart) : sha256;
  const r = { sha256, addnet };
  memo.set(key, r);
  return r;
}

/** A1111's short hash of a LoRA (`Lora hashes: "name: <this>"`). */
export function a1111LoraShortHash(h: FileHashes): string {
  return h.addnet.slice(0, 12);
}

/** A1111's short hash of a textual-inversion embedding (`TI hashes: "name: <this>"`). */
export function a1111EmbeddingShortHash(h: FileHashes): string {
  return h.sha256.slice(0, 12);
}
