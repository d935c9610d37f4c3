/**
 * A1111's extra-network prompt syntax for LoRAs (pure): `<lora:NAME>`, `<lora:NAME:SCALE>`,
 * `<lora:NAME:TE:UNET>` (A1111: the second number is the UNet's multiplier, defaulting to the
 * first) and the named forms `te=`/`unet=`; `lyco` is accepted as a synonym, as A1111 does. The
 * tags are removed from the prompt text before it is tokenized (A1111 leaves what surrounds them
 * as it is); other `<...:...>` tags (hypernetworks) are left alone.
 */
import { UsageError } from '../errors.js';

export interface LoraTag {
  name: string;
  /** text encoder multiplier (and the UNet's unless `unetScale` is given) */
  scale: number;
  unetScale?: number;
  /** the tag as written */
  text: string;
}

const TAG_RE = /<(lora|lyco):([^>]+)>/gi;

function num(s: string, tag: string): number {
  const v = Number(s.trim());
  if (s.trim() === '' || !Number.isFinite(v)) throw new UsageError(`LoRA tag ${tag}: "${s}" is not a number`);
  return v;
}

/** Splits the LoRA tags off a prompt: the text without them, and the tags in order. */
export function extractLoraTags(prompt: string): { prompt: string; tags: LoraTag[] } {
  const tags: LoraTag[] = [];
  const text = prompt.replace(TAG_RE, (whole: string, _kind: string, body: string) => {
    const parts = body.split(':');
    const name = parts[0]!.trim();
    if (name === '') throw new UsageError(`LoRA tag ${whole} has no name`);
    const positional: string[] = [];
    let te: number | undefined;
    let unet: number | undefined;
    for (const p of parts.slice(1)) {
      const eq = p.indexOf('=');
      if (eq < 0) {
        positional.push(p);
        continue;
      }
      const key = p.slice(0, eq).trim().toLowerCase();
      if (key === 'te') te = num(p.slice(eq + 1), whole);
      else if (key === 'unet') unet = num(p.slice(eq + 1), whole);
      else throw new UsageError(`LoRA tag ${whole}: sdgen knows the te= and unet= weights, not ${key}=`);
    }
    if (positional.length > 2) throw new UsageError(`LoRA tag ${whole} has too many values (expected <lora:NAME:SCALE> or <lora:NAME:TE:UNET>)`);
    const scale = te ?? (positional[0] !== undefined ? num(positional[0], whole) : 1);
    const unetScale = unet ?? (positional[1] !== undefined ? num(positional[1], whole) : undefined);
    tags.push({ name, scale, ...(unetScale !== undefined && unetScale !== scale ? { unetScale } : {}), text: whole });
    return '';
  });
  return { prompt: text, tags };
}

/** `FILE[:SCALE]` as `--lora` takes it (a Windows drive letter's colon is not a scale). Pure. */
export function parseLoraFlag(value: string): { path: string; scale: number } {
  const m = /^(.*):([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)$/i.exec(value);
  const path = m && m[1] !== '' && !/^[A-Za-z]$/.test(m[1]!) ? m[1]! : value;
  const scale = m && path !== value ? Number(m[2]) : 1;
  if (path.trim() === '') throw new UsageError(`--lora needs a file, got "${value}"`);
  return { path, scale };
}
