/**
 * Memory: what a configuration is predicted to need (so one that cannot fit is skipped rather
 * than taking the machine down), what the machine has available, and a process's RSS.
 *
 * The estimate is calibrated on the SD 1.5 UNet on the CPU provider (docs/performance.md):
 * peak ≈ weights × 1.25 + activations (≈ 40 tensors of [B, N, 320] float32 at full
 * resolution) + for the decomposed attention ≈ 2.75 live score tensors [B·heads, N', N'] of
 * the full-resolution self-attention, N' the token count after ToMe (measured 1.7–2.5 with the
 * memory pattern off, sdgen's default; it was 5.5 with the pattern on). The fused attention
 * never materializes the scores. An SDXL UNet's first attention level is downsampled twice
 * (its first level has no transformer blocks) with 10 heads: the scores are of that level's
 * tokens (`attentionLevel` 2), as is ToMe's merging at max downsample 'auto'. Not calibrated on
 * SDXL.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';

export interface PeakEstimateInput {
  weightsBytes: number;
  size: number;
  batch: number;
  ratio: number;
  attention: 'standard' | 'fused';
  /** heads of the full-resolution attention (SD 1.5: 8) */
  heads?: number;
  /** channels at full resolution (SD 1.5: 320) */
  channels?: number;
  /** latent downscale (8) */
  vaeScale?: number;
  /** downsample of the highest-resolution attention level (SD 1.x/2.x: 1; SDXL: 2) */
  attentionLevel?: number;
}

/** The attention heads and level of the estimate for an SD 1.x/2.x or an SDXL UNet. */
export const attentionShape = (sdxl: boolean): Pick<PeakEstimateInput, 'heads' | 'attentionLevel'> => (sdxl ? { heads: 10, attentionLevel: 2 } : { heads: 8, attentionLevel: 1 });

export const WEIGHT_FACTOR = 1.25;
export const SCORE_TENSORS = 2.75;
export const ACTIVATION_TENSORS = 40;

export function predictPeakBytes(e: PeakEstimateInput): number {
  const heads = e.heads ?? 8;
  const ch = e.channels ?? 320;
  const latent = Math.ceil(e.size / (e.vaeScale ?? 8));
  const n = latent ** 2;
  const na = Math.ceil(latent / (e.attentionLevel ?? 1)) ** 2;
  const merged = na - Math.floor(na * e.ratio);
  const acts = ACTIVATION_TENSORS * e.batch * n * ch * 4;
  const scores = e.attention === 'standard' ? SCORE_TENSORS * e.batch * heads * merged * merged * 4 : 0;
  return WEIGHT_FACTOR * e.weightsBytes + acts + scores;
}

/** MemAvailable from /proc/meminfo (bytes), else os.freemem(). */
export function availableMemory(): number {
  try {
    const m = /^MemAvailable:\s+(\d+)\s+kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return os.freemem();
}

/** Resident set size of a process (bytes) from /proc/<pid>/status; undefined when unreadable. */
export function processRss(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * This process's peak RSS (bytes). On Linux, VmHWM of /proc/self/status:
 * `process.resourceUsage().maxRSS` (getrusage) keeps the high-water mark from before exec — the
 * parent's RSS at spawn time — so it over-reports a small child by the parent's size.
 */
export function maxRssBytes(): number {
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS * 1024;
}

export const GB = 1024 ** 3;
export const fmtGB = (b: number | undefined): string => (b === undefined ? '–' : (b / GB).toFixed(2));
