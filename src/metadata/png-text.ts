/**
 * PNG text chunks: insert tEXt / iTXt chunks before IEND, read tEXt / zTXt / iTXt back.
 * Pure byte manipulation (no sharp): sharp writes no text chunks, so sdgen adds them itself.
 */
import * as zlib from 'node:zlib';

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

let crcTable: Uint32Array | undefined;
function tableCrc32(data: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < data.length; i++) crc = crcTable[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** CRC-32 (ISO-HDLC, as PNG uses): zlib.crc32 where Node has it (≥ 20.15), else a table. */
export function crc32(data: Uint8Array): number {
  const native = (zlib as { crc32?: (d: Uint8Array) => number }).crc32;
  return native ? native(data) >>> 0 : tableCrc32(data);
}
/** Exposed for tests: the fallback implementation. */
export const crc32Fallback = tableCrc32;

export interface PngChunk {
  type: string;
  data: Buffer;
  /** byte offset of the chunk's length field */
  offset: number;
  crcOk: boolean;
}

export interface PngTextEntry {
  keyword: string;
  text: string;
  chunk: 'tEXt' | 'zTXt' | 'iTXt';
}

export function isPng(buf: Uint8Array): boolean {
  return buf.length >= 8 && Buffer.from(buf.buffer, buf.byteOffset, 8).equals(PNG_SIGNATURE);
}

/** Splits a PNG into its chunks; throws on a buffer that is not a well-formed PNG. */
export function readPngChunks(buf: Buffer): PngChunk[] {
  if (!isPng(buf)) throw new Error('not a PNG file');
  const chunks: PngChunk[] = [];
  let pos = 8;
  while (pos + 12 <= buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.toString('latin1', pos + 4, pos + 8);
    const end = pos + 12 + len;
    if (end > buf.length) throw new Error(`truncated PNG chunk ${type}`);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    const crc = buf.readUInt32BE(pos + 8 + len);
    chunks.push({ type, data, offset: pos, crcOk: crc32(buf.subarray(pos + 4, pos + 8 + len)) === crc });
    pos = end;
    if (type === 'IEND') break;
  }
  if (chunks.length === 0 || chunks[chunks.length - 1]!.type !== 'IEND') throw new Error('PNG has no IEND chunk');
  return chunks;
}

/** One PNG chunk: length, type, data, CRC of type and data. */
export function makeChunk(type: string, data: Buffer): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

function checkKeyword(keyword: string): void {
  // PNG: 1-79 Latin-1 printable characters, no leading/trailing/double spaces.
  if (!/^[\x20-\x7e\xa1-\xff]{1,79}$/.test(keyword) || /^ | $| {2}/.test(keyword)) {
    throw new Error(`invalid PNG text keyword: ${JSON.stringify(keyword)}`);
  }
}

function isLatin1(text: string): boolean {
  // tEXt allows Latin-1 text with newlines (LF); no NUL, no other control characters.
  return /^[\n\x20-\x7e\xa0-\xff]*$/.test(text);
}

/** A tEXt chunk when the text is Latin-1, else an uncompressed iTXt chunk (UTF-8). */
export function textChunk(keyword: string, text: string, forceInternational = false): Buffer {
  checkKeyword(keyword);
  if (!forceInternational && isLatin1(text)) {
    return makeChunk('tEXt', Buffer.concat([Buffer.from(keyword, 'latin1'), Buffer.from([0]), Buffer.from(text, 'latin1')]));
  }
  return makeChunk(
    'iTXt',
    Buffer.concat([
      Buffer.from(keyword, 'latin1'),
      // NUL, compression flag 0, compression method 0, empty language tag + NUL, empty translated keyword + NUL
      Buffer.from([0, 0, 0, 0, 0]),
      Buffer.from(text, 'utf8'),
    ]),
  );
}

export interface TextToInsert {
  keyword: string;
  text: string;
  /** write iTXt (UTF-8) even when the text is Latin-1 */
  international?: boolean;
}

/**
 * Returns a new PNG with the given text chunks inserted before the first IDAT chunk (where PIL,
 * and so A1111, writes them). The PNG spec allows text chunks anywhere between IHDR and IEND,
 * but libvips/sharp (libspng) only reports those that come before the image data.
 */
export function insertPngText(png: Buffer, entries: readonly TextToInsert[]): Buffer {
  const chunks = readPngChunks(png);
  const at = (chunks.find((c) => c.type === 'IDAT') ?? chunks[chunks.length - 1]!).offset;
  const end = chunks[chunks.length - 1]!;
  const added = entries.map((e) => textChunk(e.keyword, e.text, e.international));
  return Buffer.concat([png.subarray(0, at), ...added, png.subarray(at, end.offset + 12 + end.data.length)]);
}

function decodeTextChunk(c: PngChunk): PngTextEntry | null {
  const nul = c.data.indexOf(0);
  if (nul < 0) return null;
  const keyword = c.data.toString('latin1', 0, nul);
  if (c.type === 'tEXt') return { keyword, text: c.data.toString('latin1', nul + 1), chunk: 'tEXt' };
  if (c.type === 'zTXt') {
    return { keyword, text: zlib.inflateSync(c.data.subarray(nul + 2)).toString('latin1'), chunk: 'zTXt' };
  }
  // iTXt
  const compressed = c.data[nul + 1] === 1;
  const langEnd = c.data.indexOf(0, nul + 3);
  if (langEnd < 0) return null;
  const transEnd = c.data.indexOf(0, langEnd + 1);
  if (transEnd < 0) return null;
  const body = c.data.subarray(transEnd + 1);
  return { keyword, text: (compressed ? zlib.inflateSync(body) : body).toString('utf8'), chunk: 'iTXt' };
}

/** All text chunks of a PNG, in file order. */
export function readPngText(png: Buffer): PngTextEntry[] {
  const out: PngTextEntry[] = [];
  for (const c of readPngChunks(png)) {
    if (c.type !== 'tEXt' && c.type !== 'zTXt' && c.type !== 'iTXt') continue;
    try {
      const e = decodeTextChunk(c);
      if (e) out.push(e);
    } catch {
      // a corrupt compressed chunk is skipped, not fatal
    }
  }
  return out;
}

/** keyword → text (the first chunk of each keyword wins). */
export function pngTextMap(png: Buffer): Record<string, string> {
  const map: Record<string, string> = {};
  for (const e of readPngText(png)) if (!(e.keyword in map)) map[e.keyword] = e.text;
  return map;
}
