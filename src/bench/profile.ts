/**
 * onnxruntime profile analysis (the JSON trace written with `enableProfiling`): FLOPs of the
 * graph actually run, counted from each node event's input/output shapes, and time per op type.
 * Pure: takes the parsed JSON.
 *
 * Counted: MatMul-like ops (MatMul, FusedMatMul, Gemm: 2·M·N·K, with K = elements of the first
 * input ÷ rows of the output, so transposed inputs count right), convolutions (Conv, FusedConv,
 * NhwcConv and the NCHWc Conv: 2 · output elements · weight elements per output channel, the
 * weight's shape from the event or else from its `parameter_size`), and MultiHeadAttention
 * (2·B·S·L·(hidden_qk + hidden_v)). Element-wise ops, norms and softmax are memory-bound and not
 * counted: the floor they give is the MatMul/conv work at the machine's MatMul rate.
 */

export interface ProfileEvent {
  cat?: string;
  name?: string;
  ts?: number;
  dur?: number;
  args?: Record<string, unknown>;
}

export interface OpTypeStats {
  op: string;
  count: number;
  /** kernel time in milliseconds (sum over nodes) */
  ms: number;
  flops: number;
}

export interface ProfileSummary {
  /** model_run duration (ms) of the analysed run */
  runMs: number;
  /** sum of kernel times (ms) */
  kernelMs: number;
  flops: number;
  byOp: OpTypeStats[];
}

type Shape = number[];

function shapesOf(v: unknown): Shape[] {
  if (!Array.isArray(v)) return [];
  const out: Shape[] = [];
  for (const entry of v) {
    if (entry && typeof entry === 'object') {
      const dims = Object.values(entry as Record<string, unknown>)[0];
      if (Array.isArray(dims)) out.push(dims.map(Number));
    }
  }
  return out;
}

const prod = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

const MATMUL_OPS = new Set(['MatMul', 'FusedMatMul', 'Gemm', 'MatMulInteger', 'FusedGemm']);
const CONV_OPS = new Set(['Conv', 'FusedConv', 'NhwcConv', 'NhwcFusedConv', 'ConvTranspose']);

/**
 * The floor of a call (ms): each op type's counted FLOPs at the rate of its kernel class:
 * convolutions at the measured 3×3 convolution rate (when measured), everything else
 * (MatMul, Gemm, attention) at the MatMul rate.
 */
export function floorMsOf(byOp: readonly OpTypeStats[], rates: { matmulGflops: number; convGflops?: number }): number {
  let ms = 0;
  for (const o of byOp) {
    if (!(o.flops > 0)) continue;
    const rate = CONV_OPS.has(o.op) && rates.convGflops ? rates.convGflops : rates.matmulGflops;
    ms += o.flops / (rate * 1e6);
  }
  return ms;
}

/** FLOPs of one node event (0 for uncounted ops). */
export function nodeFlops(op: string, args: Record<string, unknown>): number {
  const ins = shapesOf(args['input_type_shape']);
  const outs = shapesOf(args['output_type_shape']);
  const out = outs[0];
  if (!out || out.length === 0) return 0;
  if (MATMUL_OPS.has(op)) {
    const a = ins[0];
    if (!a || a.length === 0) return 0;
    // K = A's elements per row of one output matrix; A's batch may be broadcast over the
    // output's (a constant [B, M, K] times [N, B, K, P]), so rows are counted per A batch
    const rows = out.length >= 2 ? out[out.length - 2]! * (a.length >= 3 ? prod(a.slice(0, -2)) : 1) : 1;
    const k = prod(a) / (rows || 1);
    return 2 * prod(out) * k;
  }
  if (CONV_OPS.has(op)) {
    const w = ins[1];
    // NCHWc keeps 4-D tensors with (padded) channels; output channels are dim 1 of the output
    const cout = out[1] ?? 0;
    let perOut = 0;
    if (w && w.length >= 3) perOut = prod(w.slice(1));
    else {
      const bytes = Number(args['parameter_size'] ?? 0);
      if (cout > 0 && bytes > 0) perOut = Math.max(0, bytes / 4 - cout) / cout; // float32 weights + bias
    }
    return 2 * prod(out) * perOut;
  }
  if (op === 'MultiHeadAttention') {
    const [q, k, v] = ins;
    if (!q || !k || q.length !== 3 || k.length !== 3) return 0;
    const [b, s, hqk] = q as [number, number, number];
    const l = k[1]!;
    const hv = v && v.length === 3 ? v[2]! : hqk;
    return 2 * b * s * l * (hqk + hv);
  }
  return 0;
}

/**
 * Summarizes the last `model_run` of a profile (earlier runs, e.g. a warm-up, are ignored
 * unless `runIndex` picks one; negative indices count from the end).
 */
export function summarizeProfile(events: readonly ProfileEvent[], runIndex = -1): ProfileSummary {
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run' && e.ts !== undefined && e.dur !== undefined);
  const run = runs.length > 0 ? runs[runIndex < 0 ? runs.length + runIndex : runIndex] : undefined;
  const lo = run ? run.ts! : -Infinity;
  const hi = run ? run.ts! + run.dur! : Infinity;
  const byOp = new Map<string, OpTypeStats>();
  let kernelUs = 0;
  let flops = 0;
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name?.endsWith('_kernel_time') || e.ts === undefined) continue;
    if (e.ts < lo || e.ts > hi) continue;
    const args = e.args ?? {};
    const op = String(args['op_name'] ?? 'unknown');
    const f = nodeFlops(op, args);
    const us = e.dur ?? 0;
    kernelUs += us;
    flops += f;
    const s = byOp.get(op) ?? { op, count: 0, ms: 0, flops: 0 };
    s.count++;
    s.ms += us / 1000;
    s.flops += f;
    byOp.set(op, s);
  }
  return {
    runMs: run ? run.dur! / 1000 : kernelUs / 1000,
    kernelMs: kernelUs / 1000,
    flops,
    byOp: [...byOp.values()].sort((a, b) => b.ms - a.ms),
  };
}
