/** `sdgen info`, `sdgen tome-patch` and `sdgen bench`: the ToMe / performance commands. */
import { existsSync } from 'node:fs';
import { link, lstat, mkdtemp, readdir, readFile, realpath, rename, rm, stat, unlink } from 'node:fs/promises';
import { makeDirs } from '../files.js';
import path from 'node:path';
import { SdgenError, UsageError } from '../errors.js';
import { coerceOption, SPEC_BY_KEY, type PartialOptions } from '../config/options.js';
import type { GraphProto } from '../onnx/types.js';
import { tomeOptionsFor, type CommonFlags } from './commands.js';
import { escapeControls, makeChalk, safeJson } from './ui.js';

type Out = NodeJS.WritableStream;

export async function cmdInfo(
  model: string,
  explicit: PartialOptions,
  flags: CommonFlags & { config?: string; width?: string; height?: string },
  out: Out = process.stdout,
): Promise<void> {
  const tome = await tomeOptionsFor(explicit, flags.config);
  const width = flags.width !== undefined ? (coerceOption(SPEC_BY_KEY.get('width')!, flags.width, '--width') as number) : undefined;
  const height = flags.height !== undefined ? (coerceOption(SPEC_BY_KEY.get('height')!, flags.height, '--height') as number) : undefined;
  const [{ loadModelFolder }, { loadModel }, t] = await Promise.all([
    import('../models/folder.js'),
    import('../onnx/model-io.js'),
    import('../tome/index.js'),
  ]);
  const folder = await loadModelFolder(model);
  const unet = await loadModel(folder.paths.unet, { externalData: 'lazy' });
  const found = t.findTransformerBlocks(unet);
  const w = width ?? folder.defaultWidth;
  const h = height ?? folder.defaultHeight;
  const decision = t.tomeApplies(tome, w, h);
  if (flags.json) {
    out.write(
      safeJson({
        model: folder.name,
        dir: folder.dir,
        pipelineClass: folder.pipelineClass,
        defaultWidth: folder.defaultWidth,
        defaultHeight: folder.defaultHeight,
        defaultScheduler: folder.defaultScheduler,
        predictionType: folder.predictionType,
        tome,
        tomeApplies: { width: w, height: h, ...decision },
        ...('error' in found ? { error: found.error } : { blocks: found.blocks }),
      }) + '\n',
    );
    return;
  }
  const c = makeChalk(process.stdout, flags.color);
  // folder names, model_index.json values and graph node names are the files' text: escaped
  const e = escapeControls;
  out.write(`${c.bold(e(folder.name))}  ${e(folder.pipelineClass)}  default ${folder.defaultWidth}x${folder.defaultHeight}  scheduler ${e(folder.defaultScheduler)}  prediction ${e(folder.predictionType)}\n`);
  out.write(`unet: ${e(folder.paths.unet)}\n`);
  if ('error' in found) {
    out.write(`ToMe: cannot find the transformer blocks: ${e(found.error)} (sdgen would run this UNet unpatched)\n`);
    return;
  }
  for (const line of t.describeBlocks(found.blocks, tome)) out.write(e(line) + '\n');
  out.write(
    tome.ratio > 0
      ? `ToMe ratio ${tome.ratio} at ${w}x${h}: ${decision.apply ? 'applied' : `skipped (${decision.reason})`}\n`
      : 'ToMe off (pass --tome R to see what would be merged)\n',
  );
}

// ---------------------------------------------------------------------------------------------
// tome-patch's output files: never the input model or its weights; an existing file only with
// --overwrite, and then only OUT itself and the weights files the existing OUT uses.

/** The external data files a model file names (absolute), from its graphs and subgraphs; [] when it cannot be read as a model. */
export async function externalDataFiles(modelPath: string): Promise<string[]> {
  const { decodeModel } = await import('../onnx/proto.js');
  const { DataLocation } = await import('../onnx/types.js');
  let graph: GraphProto | undefined;
  try {
    graph = decodeModel(await readFile(modelPath)).graph;
  } catch {
    return [];
  }
  const dir = path.dirname(path.resolve(modelPath));
  const files = new Set<string>();
  const visit = (g: GraphProto): void => {
    for (const t of g.initializer) {
      if (t.dataLocation !== DataLocation.EXTERNAL) continue;
      const loc = t.externalData?.find((e) => e.key === 'location')?.value;
      if (loc) files.add(path.resolve(dir, loc));
    }
    for (const n of g.node) for (const a of n.attribute) for (const sg of [...(a.g ? [a.g] : []), ...(a.graphs ?? [])]) visit(sg);
  };
  if (graph) visit(graph);
  return [...files];
}

/** The file names tome-patch may write for OUT, given the number of external data files of IN (tome-cache.ts: `<OUT>_data`, `<OUT>_data.1`, …). */
export function tomePatchOutputs(output: string, inputWeightFiles: number): string[] {
  const abs = path.resolve(output);
  const names = [abs, `${abs}_data`];
  for (let i = 1; i < inputWeightFiles; i++) names.push(`${abs}_data.${i}`);
  return names;
}

type Ident = { dev: number; ino: number };

async function identity(p: string): Promise<Ident | null> {
  try {
    const st = await stat(p);
    return { dev: st.dev, ino: st.ino };
  } catch {
    return null;
  }
}

async function realOrResolved(p: string): Promise<string> {
  try {
    return await realpath(p);
  } catch {
    // not there yet: its folder's real path (a symlinked folder) and its own name
    try {
      return path.join(await realpath(path.dirname(p)), path.basename(p));
    } catch {
      return path.resolve(p);
    }
  }
}

/**
 * Do `a` and `b` name the same directory entry, so that writing `a` replaces `b`? Same real
 * path; or the same file (device and inode) where no second entry exists, i.e. the names are
 * aliases of one entry (another case on a case-insensitive filesystem, a bind mount). Two hard
 * links are two entries: replacing one by rename leaves the other's content as it was.
 */
export async function sameEntry(a: string, b: string): Promise<boolean> {
  const [ra, rb] = await Promise.all([realOrResolved(a), realOrResolved(b)]);
  if (ra === rb) return true;
  const [ia, ib] = await Promise.all([identity(ra), identity(rb)]);
  if (!ia || !ib || ia.dev !== ib.dev || ia.ino !== ib.ino) return false;
  const [da, db] = await Promise.all([identity(path.dirname(ra)), identity(path.dirname(rb))]);
  if (!da || !db || da.dev !== db.dev || da.ino !== db.ino) return false; // same file in two folders: hard links
  // one folder, one file, two spellings: two entries only if the folder lists both names
  try {
    const names = new Set(await readdir(path.dirname(ra)));
    return !(names.has(path.basename(ra)) && names.has(path.basename(rb)));
  } catch {
    return true;
  }
}

async function lexists(p: string): Promise<'file' | 'dir' | null> {
  try {
    return (await lstat(p)).isDirectory() ? 'dir' : 'file';
  } catch {
    return null;
  }
}

/**
 * Throws a one-line UsageError unless every file in `targets` may be written: none is the input
 * model or one of its weights files (whatever --overwrite says); none exists, or --overwrite is
 * given and it is OUT itself or a weights file the existing OUT uses.
 */
export async function checkTomePatchTargets(input: string, inputWeights: readonly string[], output: string, targets: readonly string[], overwrite: boolean): Promise<void> {
  const outAbs = path.resolve(output);
  const existingOutWeights = overwrite && (await lexists(outAbs)) === 'file' ? await externalDataFiles(outAbs) : [];
  for (const target of targets) {
    const shown = target === outAbs ? output : target;
    if (await sameEntry(target, input)) {
      throw new UsageError(`tome-patch: ${shown} is the input model ${input}; write the patched model to another file`);
    }
    for (const w of inputWeights) {
      if (await sameEntry(target, w)) throw new UsageError(`tome-patch: ${shown} would replace ${w}, a weights file of the input model; choose another OUT`);
    }
    const kind = await lexists(target);
    if (kind === null) continue;
    if (kind === 'dir') throw new UsageError(`tome-patch: ${shown} is a directory`);
    if (!overwrite) throw new UsageError(`tome-patch: ${shown} exists (pass --overwrite to replace it)`);
    if (target === outAbs) continue;
    let owned = false;
    for (const w of existingOutWeights) if (await sameEntry(target, w)) owned = true;
    if (!owned) {
      throw new UsageError(`tome-patch: ${target} exists and is not a weights file of ${output}; move it away or choose another OUT (--overwrite replaces only OUT and its own weights)`);
    }
  }
}

/**
 * Moves `from` to `to`: without `overwrite` only if `to` does not exist, atomically (a hard link
 * fails with EEXIST rather than replacing; where the filesystem has no hard links, an existence
 * check then rename); with `overwrite` by rename (replacing).
 */
async function placeFile(from: string, to: string, overwrite: boolean): Promise<void> {
  if (overwrite) return rename(from, to);
  try {
    await link(from, to);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new UsageError(`tome-patch: ${to} appeared while patching (pass --overwrite to replace it)`);
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'EXDEV' && code !== 'EMLINK') throw e;
    if ((await lexists(to)) !== null) throw new UsageError(`tome-patch: ${to} appeared while patching (pass --overwrite to replace it)`);
    return rename(from, to);
  }
  await unlink(from);
}

export async function cmdTomePatch(
  input: string,
  output: string,
  explicit: PartialOptions,
  flags: CommonFlags & { config?: string; copyWeights?: boolean; overwrite?: boolean },
  out: Out = process.stdout,
): Promise<void> {
  const tome = await tomeOptionsFor(explicit, flags.config);
  if (!(tome.ratio > 0)) throw new UsageError('tome-patch: give a ratio with --tome R (R > 0)');
  if (!existsSync(input)) throw new SdgenError(`model not found: ${input}`);
  const overwrite = flags.overwrite === true;
  const inputWeights = await externalDataFiles(input);
  // before the work: everything tome-patch could write
  await checkTomePatchTargets(input, inputWeights, output, tomePatchOutputs(output, inputWeights.length), overwrite);
  const { patchModelFile } = await import('../models/tome-cache.js');
  // The patch is written into a private folder beside OUT under OUT's own name (so the weights
  // file names it records are OUT's), then moved into place: weights first, OUT last.
  const outAbs = path.resolve(output);
  const outDir = path.dirname(outAbs);
  let work: string;
  try {
    makeDirs(outDir);
    work = await mkdtemp(path.join(outDir, `.${path.basename(outAbs)}.tome-patch-`));
  } catch (e) {
    throw new SdgenError(`tome-patch: cannot write in ${outDir} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const started = performance.now();
  const showBar = !flags.quiet && !flags.json && process.stderr.isTTY;
  let bar: import('cli-progress').SingleBar | null = null;
  if (showBar) {
    const cp = (await import('cli-progress')).default;
    bar = new cp.SingleBar({ stream: process.stderr, format: '{stage} {bar} {percentage}%', hideCursor: true }, cp.Presets.shades_classic);
  }
  let stageNow = '';
  let result: Awaited<ReturnType<typeof patchModelFile>>;
  try {
    result = await patchModelFile(input, path.join(work, path.basename(outAbs)), tome, (stage: string, done: number, total: number) => {
      if (!bar) return;
      if (stage !== stageNow) {
        if (stageNow) bar.stop();
        bar.start(Math.max(total, 1), done, { stage });
        stageNow = stage;
      } else bar.update(done);
    }, { copyWeights: flags.copyWeights });
    bar?.stop();
    bar = null;
    const written = (await readdir(work)).filter((n) => !/\.tmp$|\.tmp-/.test(n));
    written.sort((a, b) => (a === path.basename(outAbs) ? 1 : 0) - (b === path.basename(outAbs) ? 1 : 0));
    const targets = written.map((n) => path.join(outDir, n));
    // what was actually written, checked again (the same rules) just before it is placed
    await checkTomePatchTargets(input, inputWeights, output, targets, overwrite);
    const placed: string[] = [];
    try {
      for (const n of written) {
        await placeFile(path.join(work, n), path.join(outDir, n), overwrite);
        placed.push(path.join(outDir, n));
      }
    } catch (e) {
      // files this run created are removed; with --overwrite the old ones are already replaced
      if (!overwrite) for (const p of placed) await unlink(p).catch(() => undefined);
      throw e;
    }
  } finally {
    bar?.stop();
    await rm(work, { recursive: true, force: true }).catch(() => undefined);
  }
  const secs = (performance.now() - started) / 1000;
  if (flags.json) {
    out.write(safeJson({ input, output, tome, seconds: secs, ...result }) + '\n');
    return;
  }
  if (!result.patched) {
    out.write(`${escapeControls(output)}: not patched: ${escapeControls(result.reason ?? 'no transformer block found')}\n`);
    return;
  }
  // the blocks that merge (result.blocks lists every block found, merging or not)
  const n = result.blocks.filter((b) => b.merged.attn || b.merged.crossattn || b.merged.mlp).length;
  const rand = result.randInputs.length ? `; extra inputs ${result.randInputs.join(', ')}` : '';
  out.write(`wrote ${escapeControls(output)} (${n} block${n === 1 ? '' : 's'} patched${escapeControls(rand)}) in ${secs.toFixed(1)} s\n`);
}

/** `sdgen bench`: forwards its flags to the benchmark module (src/bench parses and checks them). */
export async function cmdBench(opts: Record<string, unknown>, flags: CommonFlags): Promise<void> {
  const { runBench } = await import('../bench/index.js');
  await runBench({ ...opts, json: flags.json });
}
