/** Reading sdgen / A1111 metadata back from a PNG file. */
import { readFile } from 'node:fs/promises';
import { SdgenError } from '../errors.js';
import { infotextToParams, parseInfotext, type InfotextParams, type ParsedInfotext } from './infotext.js';
import { A1111_CHUNK, SDGEN_CHUNK, type SdgenImageRecord } from './png.js';
import { isPng, readPngText, type PngTextEntry } from './png-text.js';

export interface ImageMetadata {
  file: string;
  chunks: PngTextEntry[];
  /** the A1111 infotext, when present */
  parameters?: string;
  parsed?: ParsedInfotext;
  infotextParams?: InfotextParams;
  /** the sdgen JSON record, when present and valid */
  sdgen?: SdgenImageRecord;
}

export function metadataFromPng(buf: Buffer, file: string): ImageMetadata {
  if (!isPng(buf)) throw new SdgenError(`${file}: not a PNG file`);
  let chunks: PngTextEntry[];
  try {
    chunks = readPngText(buf);
  } catch (e) {
    throw new SdgenError(`${file}: damaged PNG (${(e as Error).message})`);
  }
  const meta: ImageMetadata = { file, chunks };
  const params = chunks.find((c) => c.keyword === A1111_CHUNK);
  if (params) {
    meta.parameters = params.text;
    meta.parsed = parseInfotext(params.text);
    meta.infotextParams = infotextToParams(meta.parsed);
  }
  const sd = chunks.find((c) => c.keyword === SDGEN_CHUNK);
  if (sd) {
    try {
      const rec = JSON.parse(sd.text) as SdgenImageRecord;
      if (rec && typeof rec === 'object' && rec.params && typeof rec.params === 'object') meta.sdgen = rec;
    } catch {
      // an unreadable sdgen chunk: fall back to the infotext
    }
  }
  return meta;
}

export async function readImageMetadata(file: string): Promise<ImageMetadata> {
  let buf: Buffer;
  try {
    buf = await readFile(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new SdgenError(code === 'ENOENT' ? `${file}: no such file` : `${file}: cannot read (${code ?? (e as Error).message})`);
  }
  return metadataFromPng(buf, file);
}
