/** The subcommands other than generate. Each loads only what it needs. */
import path from 'node:path';
import { existsSync } from 'node:fs';
import { SdgenError, UsageError } from '../errors.js';
import { resolveOptions, type PartialOptions } from '../config/options.js';
import { loadRc } from '../config/rc.js';
import { listPresets } from '../config/presets.js';
import { tomeFromFlat, validateToMeOptions } from '../tome/options.js';
import { escapeControls, makeChalk, safeJson } from './ui.js';
import type { ToMeOptions } from '../tome/types.js';

type Out = NodeJS.WritableStream;

export interface CommonFlags {
  json?: boolean;
  color: boolean;
  verbose: boolean;
  quiet?: boolean;
}

function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

export async function cmdSamplers(flags: CommonFlags, out: Out = process.stdout): Promise<void> {
  const { SAMPLERS } = await import('../schedulers/index.js');
  if (flags.json) {
    for (const s of SAMPLERS) out.write(JSON.stringify(s) + '\n');
    return;
  }
  const c = makeChalk(process.stdout, flags.color);
  const rows = [['NAME', 'A1111 NAME', 'DIFFUSERS CLASS', 'DESCRIPTION'].map((h) => c.bold(h))];
  for (const s of SAMPLERS) rows.push([s.name, s.a1111, s.diffusersClass, s.description]);
  out.write(table(rows));
}

export async function cmdPresets(flags: CommonFlags & { config?: string }, out: Out = process.stdout): Promise<void> {
  const rc = await loadRc({ configFile: flags.config });
  const presets = listPresets({ rc });
  if (flags.json) {
    for (const p of presets.values()) out.write(safeJson({ name: p.name, kind: p.kind, source: p.source, description: p.description, options: p.options }) + '\n');
    return;
  }
  const c = makeChalk(process.stdout, flags.color);
  // names, descriptions and values come from preset and config files: printed with controls escaped
  for (const p of presets.values()) {
    out.write(`${c.bold(escapeControls(p.name))}  ${c.dim(`(${p.kind}: ${escapeControls(p.source)})`)}\n`);
    if (p.description) out.write(`  ${escapeControls(p.description)}\n`);
    const vals = Object.entries(p.options).map(([k, v]) => `${k}=${typeof v === 'string' ? safeJson(v) : String(v)}`);
    out.write(`  ${escapeControls(vals.join(' ')) || '(no options)'}\n`);
  }
}

export async function cmdMetadata(file: string, flags: CommonFlags, out: Out = process.stdout): Promise<void> {
  const { readImageMetadata } = await import('../metadata/metadata.js');
  const meta = await readImageMetadata(file);
  if (flags.json) {
    // safeJson: JSON.stringify leaves DEL and C1 controls raw
    out.write(
      safeJson({
        file,
        parameters: meta.parameters ?? null,
        parsed: meta.parsed ?? null,
        sdgen: meta.sdgen ?? null,
        text: Object.fromEntries(meta.chunks.filter((c) => c.keyword !== 'parameters' && c.keyword !== 'sdgen').map((c) => [c.keyword, c.text])),
      }) + '\n',
    );
    return;
  }
  if (meta.chunks.length === 0) throw new SdgenError(`${file}: no text metadata in this PNG`);
  const c = makeChalk(process.stdout, flags.color);
  // The chunks are the file's text, whoever wrote it: control characters (ESC, OSC, CSI, CR, …)
  // are shown escaped, not sent to the terminal; line breaks and tabs are kept.
  const text = (t: string): string => escapeControls(t, { newline: true, tab: true });
  if (meta.parameters !== undefined) out.write(`${c.bold('parameters')}\n${text(meta.parameters)}\n`);
  if (meta.sdgen) out.write(`${c.bold('sdgen')}\n${safeJson(meta.sdgen, 2)}\n`);
  for (const ch of meta.chunks) {
    if (ch.keyword === 'parameters' || (ch.keyword === 'sdgen' && meta.sdgen)) continue;
    out.write(`${c.bold(escapeControls(ch.keyword))}\n${text(ch.text)}\n`);
  }
}

function modelTokenizerDir(model: string): string {
  const sub = path.join(model, 'tokenizer');
  return existsSync(path.join(sub, 'vocab.json')) ? sub : model;
}

export async function cmdTokens(prompt: string, model: string | undefined, flags: CommonFlags & { emphasis: boolean }, out: Out = process.stdout): Promise<void> {
  if (!model) throw new UsageError('tokens: --model DIR is required (a model folder or its tokenizer folder)');
  if (!existsSync(model)) throw new SdgenError(`model folder not found: ${model}`);
  const [{ loadTokenizer }, { tokenizeChunks }] = await Promise.all([import('../text/load.js'), import('../text/chunks.js')]);
  const tok = await loadTokenizer(modelTokenizerDir(model));
  const ids = tok.encode(prompt);
  const inputIds = tok.encodePadded(prompt);
  const chunked = tokenizeChunks(tok, prompt, { emphasis: flags.emphasis });
  if (flags.json) {
    const o: Record<string, unknown> = { ids, input_ids: inputIds, count: ids.length };
    if (chunked.chunks.length > 1 || chunked.tokenCount !== ids.length) {
      o.chunks = chunked.chunks.map((ch) => ({ ids: ch.ids, weights: ch.weights }));
      o.token_count = chunked.tokenCount;
    }
    out.write(safeJson(o) + '\n');
    return;
  }
  out.write(`count: ${ids.length}${ids.length > tok.maxLength - 2 ? ` (more than ${tok.maxLength - 2}: ${chunked.chunks.length} chunks)` : ''}\n`);
  out.write(`ids: ${ids.join(' ')}\n`);
  out.write(`tokens: ${ids.map((i) => escapeControls(tok.decode([i]).trim()) || '·').join(' | ')}\n`);
  out.write(`input_ids (${inputIds.length}): ${inputIds.join(' ')}\n`);
  if (chunked.chunks.length > 1) {
    chunked.chunks.forEach((ch, k) => {
      const weights = ch.weights.some((w) => w !== 1) ? `\n  weights: ${ch.weights.map((w) => Number(w.toFixed(4))).join(' ')}` : '';
      out.write(`chunk ${k + 1}: ${ch.ids.join(' ')}${weights}\n`);
    });
  }
}

export async function cmdSynth(
  flags: CommonFlags & { arch?: string; out?: string; seed?: string; fp16?: boolean; opset?: string; style?: string; timeCondProjDim?: string },
  out: Out = process.stdout,
): Promise<void> {
  const archs = ['tiny', 'sd15', 'sd21', 'sdxl', 'sdxl-tiny'];
  if (!flags.arch || !archs.includes(flags.arch)) throw new UsageError(`--arch: expected one of ${archs.join(', ')}, got ${JSON.stringify(flags.arch ?? '')}`);
  if (!flags.out) throw new UsageError('synth: --out DIR is required');
  let seed: number | undefined;
  if (flags.seed !== undefined) {
    if (!/^\d+$/.test(flags.seed) || !Number.isSafeInteger(Number(flags.seed))) throw new UsageError(`--seed: expected an integer ≥ 0, got ${JSON.stringify(flags.seed)}`);
    seed = Number(flags.seed);
  }
  let opset: 14 | 17 | undefined;
  if (flags.opset !== undefined) {
    if (flags.opset !== '14' && flags.opset !== '17') throw new UsageError(`--opset: expected 14 or 17, got ${JSON.stringify(flags.opset)}`);
    opset = Number(flags.opset) as 14 | 17;
  }
  let style: 'sd1' | 'sd2' | undefined;
  if (flags.style !== undefined) {
    if (flags.style !== 'sd1' && flags.style !== 'sd2') throw new UsageError(`--style: expected sd1 or sd2, got ${JSON.stringify(flags.style)}`);
    if (flags.arch !== 'tiny') throw new UsageError('--style applies only to --arch tiny');
    style = flags.style;
  }
  const { synthesize, MAX_TIME_COND_PROJ_DIM } = await import('../synth/index.js');
  let timeCondProjDim: number | undefined;
  if (flags.timeCondProjDim !== undefined) {
    const v = flags.timeCondProjDim;
    if (!/^\d+$/.test(v) || Number(v) < 4 || Number(v) > MAX_TIME_COND_PROJ_DIM) {
      throw new UsageError(`--time-cond-proj-dim: expected an integer from 4 to ${MAX_TIME_COND_PROJ_DIM}, got ${JSON.stringify(v)}`);
    }
    timeCondProjDim = Number(v);
  }
  const showBar = !flags.quiet && !flags.json && process.stderr.isTTY;
  let bar: import('cli-progress').SingleBar | null = null;
  let stageNow = '';
  if (showBar) {
    const cp = (await import('cli-progress')).default;
    bar = new cp.SingleBar({ stream: process.stderr, format: '{stage} {bar} {percentage}%', hideCursor: true }, cp.Presets.shades_classic);
  }
  const started = performance.now();
  let res;
  try {
    res = await synthesize({
      arch: flags.arch as import('../synth/index.js').Arch,
      outDir: flags.out,
      seed,
      fp16: flags.fp16,
      opset,
      style,
      timeCondProjDim,
      onProgress: (stage, done, total) => {
        if (!bar) {
          if (stage !== stageNow && !flags.quiet && !flags.json) process.stderr.write(`writing ${stage}\n`);
          stageNow = stage;
          return;
        }
        if (stage !== stageNow) {
          if (stageNow) bar.stop();
          bar.start(Math.max(total, 1), done, { stage: stage.padEnd(12) });
          stageNow = stage;
        } else bar.update(done);
      },
    });
  } finally {
    bar?.stop();
  }
  const p = res.params;
  if (flags.json) {
    out.write(JSON.stringify({ out: flags.out, arch: flags.arch, params: p, files: res.files, seconds: (performance.now() - started) / 1000 }) + '\n');
    return;
  }
  const fmt = (n: number) => n.toLocaleString('en-US');
  out.write(
    `wrote ${flags.arch} model to ${flags.out} in ${((performance.now() - started) / 1000).toFixed(1)} s\n` +
      `parameters: unet ${fmt(p.unet)}, text encoder ${fmt(p.textEncoder)}${p.textEncoder2 !== undefined ? `, text encoder 2 ${fmt(p.textEncoder2)}` : ''}, vae decoder ${fmt(p.vaeDecoder)}, vae encoder ${fmt(p.vaeEncoder)}, total ${fmt(p.unet + p.textEncoder + (p.textEncoder2 ?? 0) + p.vaeDecoder + p.vaeEncoder)}\n`,
  );
}

/** ToMe options from defaults < rc < preset-free flags, validated. */
export async function tomeOptionsFor(explicit: PartialOptions, configFile?: string): Promise<ToMeOptions> {
  const rc = await loadRc({ configFile });
  const o = tomeFromFlat(resolveOptions(rc.options, explicit));
  validateToMeOptions(o);
  return o;
}
