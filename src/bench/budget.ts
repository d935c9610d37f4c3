/**
 * The benchmark's time budget. A configuration's process costs a load, one warm-up call and its
 * timed calls; once some configurations have been timed, the cost of the next one is estimated
 * from them (same ToMe ratio and attention at another size, scaled by the work, else the
 * slowest seen at its size). `runBench` runs a process only if it is expected to end within the
 * budget, with time kept back for the whole-image run, so `npm run bench` finishes in time on a
 * slow machine too: what does not fit is dropped (round 2 first: round 1 runs every
 * configuration, then the whole image, before round 2 starts) and the table says so. Pure logic.
 */

/** A configuration already timed. */
export interface TimedConfig {
  size: number;
  batch: number;
  ratio: number;
  attention: string;
  /** median time of one steady-state call (ms) */
  perCallMs: number;
  /** session creation (ms) */
  loadMs: number;
  /** the first (warm-up, profiled) call (ms), when known */
  warmupMs?: number;
}

export interface CostTarget {
  size: number;
  batch: number;
  ratio: number;
  attention: string;
}

/**
 * Growth of a call's time with its pixel count × batch. Convolutions grow linearly, attention
 * faster (quadratically for the exported graph); 1.15 is an upper-middle estimate over the
 * UNet's mix at 512–1024² (measured on SD 1.5, fused attention: 768²/512² batch 1 → ×2.4 time
 * for ×2.25 pixels).
 */
export const WORK_EXPONENT = 1.15;

const work = (c: CostTarget): number => c.size * c.size * c.batch;

/** Estimated steady-state call time of `t` (ms), or null when nothing has been timed yet. */
export function estimateCallMs(t: CostTarget, done: readonly TimedConfig[]): number | null {
  const scaled = (d: TimedConfig): number => d.perCallMs * (work(t) / work(d)) ** WORK_EXPONENT;
  const same = done.filter((d) => d.ratio === t.ratio && d.attention === t.attention);
  if (same.length > 0) {
    // the nearest size at or below the target's, else the smallest above
    const below = same.filter((d) => work(d) <= work(t)).sort((a, b) => work(b) - work(a));
    const above = same.filter((d) => work(d) > work(t)).sort((a, b) => work(a) - work(b));
    return scaled((below[0] ?? above[0])!);
  }
  const sameWork = done.filter((d) => work(d) === work(t));
  if (sameWork.length > 0) return Math.max(...sameWork.map((d) => d.perCallMs));
  if (done.length > 0) return Math.max(...done.map(scaled));
  return null;
}

/**
 * Estimated cost of one process of `t` with `calls` timed calls: load + warm-up + calls (ms). The
 * warm-up (first call, profiled, arena growing) is the steady call times the largest warm-up /
 * call ratio seen (same variant first; at least 1): at 1024² it is about twice a steady call.
 */
export function estimateProcessMs(t: CostTarget, calls: number, done: readonly TimedConfig[]): number | null {
  const call = estimateCallMs(t, done);
  if (call === null) return null;
  const sameVariant = done.filter((d) => d.ratio === t.ratio && d.attention === t.attention);
  const pool = sameVariant.length > 0 ? sameVariant : done;
  const warmFactor = Math.max(1, ...pool.map((d) => (d.warmupMs !== undefined && d.perCallMs > 0 ? d.warmupMs / d.perCallMs : 1)));
  return Math.max(0, ...pool.map((d) => d.loadMs)) + (warmFactor + calls) * call;
}

/**
 * Estimated cost of the whole-image run (ms): load, `steps` UNet calls, and the text encoder,
 * VAE decoder and PNG, counted as three more calls (measured at 512²: VAE ≈ 2 UNet calls).
 */
export function estimateImageMs(t: CostTarget, steps: number, done: readonly TimedConfig[]): number | null {
  return estimateProcessMs(t, steps + 2, done);
}

/** Does work estimated at `estimateMs` (null: unknown) fit before `deadline`, keeping `reserveMs`? */
export function fits(nowMs: number, estimateMs: number | null, reserveMs: number, deadlineMs: number): boolean {
  if (!Number.isFinite(deadlineMs)) return true;
  if (estimateMs === null) return nowMs + reserveMs < deadlineMs;
  return nowMs + estimateMs + reserveMs <= deadlineMs;
}

/**
 * Timed calls of a configuration's round-1 process: one more than the round's share for the rows
 * the speed-up targets are ratios of — batch 1, and the smallest size's ToMe 0 and `keyRatio` at
 * batch 2 — so that each of their medians rests on two calls even when the budget leaves no
 * second round (single calls of the same row vary by 10–20 % on a shared VM). Later rounds: the
 * round's share.
 */
export function roundCalls<T extends CostTarget>(c: T, round: number, share: number, keyRatio: number, smallestSize: number): number {
  if (round !== 0) return share;
  const speedupRow = c.batch === 1 || (c.size === smallestSize && (c.ratio === 0 || c.ratio === keyRatio));
  return speedupRow ? share + 1 : share;
}

/**
 * The order in which a round visits the configurations: first the rows the targets are read
 * from — the batch-1 rows, then ToMe 0 and `keyRatio` at batch 2, least work first — so that a
 * tight budget drops other rows before those; then the rest, in grid order in round 1 and in
 * reverse grid order in later rounds (so that the samples of a row are taken at different
 * points of the run and drift spreads over the grid).
 */
export function roundOrder<T extends CostTarget>(configs: readonly T[], round: number, keyRatio: number): T[] {
  const rank = (c: T): number => (c.batch === 1 ? 0 : c.ratio === 0 || c.ratio === keyRatio ? 1 : 2);
  const first = configs.filter((c) => rank(c) < 2).sort((a, b) => rank(a) - rank(b) || work(a) - work(b));
  const rest = configs.filter((c) => rank(c) === 2);
  return [...first, ...(round === 0 ? rest : rest.reverse())];
}
