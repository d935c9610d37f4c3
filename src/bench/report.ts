/** Benchmark report: derived ratios and the Markdown rendering. Pure. */
import { fmtGB } from './memory.js';
import type { BenchReport, ConfigResult } from './types.js';
import type { HiresReport } from './hires.js';

export function median(xs: readonly number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * Fills speed-up / memory ratios vs ratio 0 (same attention) and vs standard ratio 0, and for
 * ToMe rows the FLOP-implied speed-up (counted FLOPs at ratio 0 ÷ this row's) and the part of
 * it the measured speed-up achieved.
 */
export function deriveRatios(configs: ConfigResult[]): void {
  const find = (c: ConfigResult, ratio: number, attention: string): ConfigResult | undefined =>
    configs.find((x) => x.size === c.size && x.batch === c.batch && x.ratio === ratio && x.attention === attention && x.status === 'ok');
  for (const c of configs) {
    if (c.status !== 'ok' || c.medianMs === undefined) continue;
    const base = find(c, 0, c.attention);
    if (base?.medianMs) c.speedup = base.medianMs / c.medianMs;
    if (c.ratio > 0 && base?.flops && c.flops) {
      c.flopSpeedup = base.flops / c.flops;
      if (c.speedup !== undefined) c.achieved = c.speedup / c.flopSpeedup;
    }
    if (base?.peakRss && c.peakRss) c.memRatio = c.peakRss / base.peakRss;
    const std = find(c, 0, 'standard');
    if (std?.medianMs) c.speedupVsBaseline = std.medianMs / c.medianMs;
  }
}

const s = (ms: number | undefined, digits = 2): string => (ms === undefined ? '–' : (ms / 1000).toFixed(digits));
const x = (v: number | undefined): string => (v === undefined ? '–' : `${v.toFixed(2)}×`);
const pct = (v: number | undefined): string => (v === undefined ? '–' : `${(v * 100).toFixed(0)}%`);

export function configTable(configs: readonly ConfigResult[]): string {
  const head =
    '| size | batch | ToMe | attention | s/call (median) | calls | speed-up vs r0 | FLOP-implied | achieved | vs standard r0 | peak RSS GB | mem vs r0 | GFLOP/call | floor s | efficiency | note |\n' +
    '|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|';
  const rows = configs.map((c) => {
    const note = c.status === 'ok' ? c.note ?? '' : `${c.status}: ${c.note ?? ''}`;
    return `| ${c.size}² | ${c.batch} | ${c.ratio} | ${c.attention} | ${s(c.medianMs)} | ${c.samplesMs.length} | ${x(c.speedup)} | ${x(c.flopSpeedup)} | ${pct(c.achieved)} | ${x(c.speedupVsBaseline)} | ${fmtGB(c.peakRss)} | ${c.memRatio === undefined ? '–' : pct(c.memRatio)} | ${c.flops === undefined ? '–' : (c.flops / 1e9).toFixed(0)} | ${s(c.floorMs)} | ${pct(c.efficiency)} | ${note.replace(/\|/g, '/')} |`;
  });
  return [head, ...rows].join('\n');
}

export function profileTables(configs: readonly ConfigResult[], top = 12): string {
  const parts: string[] = [];
  for (const c of configs) {
    if (!c.profile) continue;
    const p = c.profile;
    const lines = [
      `#### ${c.size}² batch ${c.batch}, ToMe ${c.ratio}, ${c.attention} — ${(p.runMs / 1000).toFixed(2)} s profiled call, ${(p.flops / 1e9).toFixed(0)} GFLOP`,
      '',
      '| op type | nodes | time s | share | GFLOP | GFLOP/s |',
      '|---|---:|---:|---:|---:|---:|',
    ];
    for (const o of p.byOp.slice(0, top)) {
      lines.push(
        `| ${o.op} | ${o.count} | ${(o.ms / 1000).toFixed(3)} | ${pct(o.ms / p.kernelMs)} | ${o.flops ? (o.flops / 1e9).toFixed(1) : '–'} | ${o.flops && o.ms ? (o.flops / (o.ms * 1e6)).toFixed(0) : '–'} |`,
      );
    }
    const rest = p.byOp.slice(top);
    if (rest.length > 0) {
      const ms = rest.reduce((a, o) => a + o.ms, 0);
      lines.push(`| (${rest.length} other op types) | ${rest.reduce((a, o) => a + o.count, 0)} | ${(ms / 1000).toFixed(3)} | ${pct(ms / p.kernelMs)} | | |`);
    }
    parts.push(lines.join('\n'));
  }
  return parts.join('\n\n');
}

/** The hires-fix section: one row per configuration, then the speed-ups. */
export function hiresSection(h: HiresReport): string {
  const pixel = h.runs.some((r) => (r.upscaleEncodeMs ?? 0) > 0 || (r.upscaleDecodeMs ?? 0) > 0);
  const out: string[] = [];
  out.push(`## Hires fix (${h.base}² → ${h.target}², ${h.steps[0]} + ${h.steps[1]} steps, upscaler ${h.upscaler}, denoising ${h.strength}, ${h.attention} attention)`);
  out.push('');
  out.push(
    '| ToMe | pass 1 ToMe | pass 2 ToMe | pass 1 UNet s/call | calls | pass 1 UNet s | pass 2 UNet s/call | calls | pass 2 UNet s | between passes s |' +
      (pixel ? ' upscale decode s | upscale encode s |' : '') +
      ' VAE decode s | text s | total s | peak RSS GB | note |',
  );
  out.push(`|---|---|---|---:|---:|---:|---:|---:|---:|---:|${pixel ? '---:|---:|' : ''}---:|---:|---:|---:|---|`);
  const yes = (b: boolean | undefined): string => (b === undefined ? '–' : b ? 'yes' : 'no');
  for (const r of h.runs) {
    const note = r.status === 'ok' ? r.note ?? '' : `${r.status}: ${r.note ?? ''}`;
    out.push(
      `| ${r.label === 'off' ? 'off' : `${r.label} (${r.tome})`} | ${yes(r.pass1Tome)} | ${yes(r.pass2Tome)} | ${s(r.pass1?.perCallMs)} | ${r.pass1?.calls ?? '–'} | ${s(r.pass1?.unetMs)} | ` +
        `${s(r.pass2?.perCallMs)} | ${r.pass2?.calls ?? '–'} | ${s(r.pass2?.unetMs)} | ${s(r.betweenMs)} |` +
        (pixel ? ` ${s(r.upscaleDecodeMs)} | ${s(r.upscaleEncodeMs)} |` : '') +
        ` ${s(r.vaeDecodeMs)} | ${s(r.textEncoderMs)} | ${s(r.totalMs)} | ${fmtGB(r.peakRss)} | ${note.replace(/\|/g, '/')} |`,
    );
  }
  out.push('');
  out.push(
    `Pass-2 UNet speed-up (ToMe off ÷ ${h.preset}): ${x(h.pass2PerCallSpeedup)} per call (medians), ${x(h.pass2Speedup)} in total; whole image ${x(h.imageSpeedup)}. ` +
      'Each image in a process of its own after an untimed warm-up run; total = generate() to the image plus the PNG encode (model load not included); ' +
      '"between passes" = the upscale, pass 2\'s prompt encoding and the UNet switch; peak RSS includes the load.',
  );
  return out.join('\n');
}

export function renderMarkdown(r: BenchReport): string {
  const m = r.machine;
  const out: string[] = [];
  out.push(`# sdgen bench — ${r.started}`);
  out.push('');
  out.push(
    `Machine: ${m.cpuModel}, ${m.logicalCpus} logical CPUs, ${m.threads} threads, ${fmtGB(m.totalMem)} GB RAM ` +
      `(${fmtGB(m.availableMemAtStart)} GB available at start, load average ${m.loadAverage.map((v) => v.toFixed(1)).join('/')}); ` +
      `Node ${m.node}, onnxruntime-node ${m.ort}, sdgen ${m.sdgen}.`,
  );
  out.push(`Model: \`${r.model}\`. Options: sizes ${r.options.sizes.join(',') || 'none'}, ratios ${r.options.ratios.join(',')} (max downsample ${r.options.maxDownsample ?? 1}), attention ${r.options.attention.join(',')}, convolutions of the fused rows and the image ${r.options.conv ?? 'direct'} (standard rows: the exported graph as it is), ${r.options.steps} timed calls in ${r.options.rounds} round(s), batch ${r.options.batch}.`);
  if (r.matmul) {
    const mm = r.matmul;
    const conv = r.conv;
    out.push(
      `MatMul rate (onnxruntime, float32 ${mm.n}×${mm.n}·${mm.n}×${mm.n}${(mm.depth ?? 1) > 1 ? `, ${mm.depth} chained per call` : ''}, ${mm.threads} threads): ` +
        `median ${mm.gflops.toFixed(0)} GFLOP/s, best ${mm.bestGflops.toFixed(0)} GFLOP/s.` +
        (conv ? ` 3×3 convolution rate (${conv.channels} channels, ${conv.size}², batch ${conv.batch}): median ${conv.gflops.toFixed(0)} GFLOP/s, best ${conv.bestGflops.toFixed(0)} GFLOP/s.` : '') +
        ` Floor = each kernel class's counted FLOPs ÷ its median rate (${conv ? 'convolutions at the convolution rate, MatMul and attention at the MatMul rate' : 'all at the MatMul rate'}).`,
    );
  }

  out.push('');
  if (r.configs.length > 0) {
    out.push('## UNet calls');
    out.push('');
    out.push(configTable(r.configs));
    out.push('');
    out.push('Speed-up and memory are ratios of medians / peaks within this run; "vs r0" compares with ToMe 0 under the same attention, "vs standard r0" with the exported graph unmerged. "FLOP-implied" is the speed-up the counted FLOPs allow (ToMe 0 ÷ this row, same attention), "achieved" the measured speed-up ÷ that. Skipped rows were predicted (estimate, see docs/performance.md) not to fit in memory.');
  }
  if (r.image) {
    const i = r.image;
    out.push('');
    out.push(`## One image (${i.size}², ${i.steps} steps, ToMe ${i.ratio}, ${i.attention} attention)`);
    out.push('');
    if (i.status !== 'ok') out.push(`${i.status}: ${i.note ?? ''}`);
    else {
      const tot = i.totalMs ?? 0;
      const row = (label: string, ms: number | undefined): string => `| ${label} | ${s(ms)} | ${pct(ms !== undefined && tot ? ms / tot : undefined)} |`;
      const other = tot - (i.textEncoderMs ?? 0) - (i.unetMs ?? 0) - (i.vaeMs ?? 0) - (i.pngMs ?? 0);
      out.push('| stage | s | share |\n|---|---:|---:|');
      out.push(row('text encoder', i.textEncoderMs));
      out.push(row(`UNet (${i.steps} steps)`, i.unetMs));
      out.push(row('VAE decoder', i.vaeMs));
      out.push(row('PNG encode', i.pngMs));
      out.push(row('other (scheduler, latents, guidance)', Math.max(0, other)));
      out.push(row('**total**', tot));
      out.push('');
      out.push(`Model load: ${s(i.loadMs)} s (not in the total). Peak RSS ${fmtGB(i.peakRss)} GB.`);
    }
  }
  if (r.hires) {
    out.push('');
    out.push(hiresSection(r.hires));
  }
  const prof = profileTables(r.configs);
  if (prof) {
    out.push('');
    out.push('## Profile (onnxruntime, one steady-state call, per op type)');
    out.push('');
    out.push(prof);
  }
  out.push('');
  return out.join('\n');
}
