/** `sdgen lora-info FILE [--model DIR]`: what a LoRA file is and how it fits a model (src/lora/info.ts). */
import { loadModelFolder } from '../models/folder.js';
import { formatLoraInfo, loraInfo } from '../lora/info.js';
import { escapeControls, safeJson } from './ui.js';

type Out = { write(s: string): unknown };

export async function cmdLoraInfo(file: string, model: string | undefined, flags: { json: boolean }, out: Out = process.stdout): Promise<void> {
  let models: { unet: string; text_encoder: string; text_encoder_2?: string } | undefined;
  if (model !== undefined) {
    const folder = await loadModelFolder(model);
    models = { unet: folder.paths.unet, text_encoder: folder.paths.textEncoder, ...(folder.paths.textEncoder2 ? { text_encoder_2: folder.paths.textEncoder2 } : {}) };
  }
  const info = await loraInfo(file, models);
  // module names and metadata come from the file: escaped before they reach a terminal
  out.write(flags.json ? safeJson(info) + '\n' : escapeControls(formatLoraInfo(info), { newline: true }));
}
