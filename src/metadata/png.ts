/** Encoding generated images as PNG (sharp, loaded lazily) with sdgen's metadata chunks. */
import type { GenerationParams } from '../pipeline/types.js';
import { formatInfotext, type InfotextExtras } from './infotext.js';
import { insertPngText } from './png-text.js';
import type { AppliedLora } from '../lora/resolve.js';
import type { UsedEmbedding } from '../lora/embeddings.js';

/** The complete record stored in the `sdgen` iTXt chunk (JSON). */
export interface SdgenImageRecord {
  /** format marker and producing version */
  sdgen: string;
  params: GenerationParams;
  model?: string;
  tomeApplied: boolean;
  /** LoRAs applied (options and prompt tags): name, path, scale, SHA-256, A1111 short hash */
  loras?: AppliedLora[];
  /** textual-inversion embeddings the prompts used: name, path, SHA-256, A1111 short hash */
  embeddings?: UsedEmbedding[];
}

export const SDGEN_CHUNK = 'sdgen';
export const A1111_CHUNK = 'parameters';

/** uint8 RGB (row-major, width*height*3) → PNG bytes, without metadata. */
export async function encodeRgbPng(rgb: Uint8Array, width: number, height: number): Promise<Buffer> {
  if (rgb.length !== width * height * 3) {
    throw new Error(`RGB buffer has ${rgb.length} bytes, expected ${width * height * 3} for ${width}x${height}`);
  }
  const { default: sharp } = await import('sharp');
  return sharp(Buffer.from(rgb.buffer, rgb.byteOffset, rgb.byteLength), { raw: { width, height, channels: 3 } })
    .png()
    .toBuffer();
}

/** Adds the A1111 `parameters` chunk and the `sdgen` JSON chunk to an encoded PNG. */
export function addImageMetadata(png: Buffer, record: SdgenImageRecord, extras: InfotextExtras): Buffer {
  return insertPngText(png, [
    { keyword: A1111_CHUNK, text: formatInfotext(record.params, { ...extras, tomeApplied: record.tomeApplied, modelName: record.model, ...(record.loras ? { loras: record.loras } : {}), ...(record.embeddings ? { embeddings: record.embeddings } : {}) }) },
    { keyword: SDGEN_CHUNK, text: JSON.stringify(record), international: true },
  ]);
}

export async function encodeImagePng(
  rgb: Uint8Array,
  width: number,
  height: number,
  record: SdgenImageRecord,
  extras: InfotextExtras,
): Promise<Buffer> {
  return addImageMetadata(await encodeRgbPng(rgb, width, height), record, extras);
}
