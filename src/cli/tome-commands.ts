/** `sdgen info`, `sdgen tome-patch` and `sdgen bench`: the ToMe / performance commands. */
import { existsSync } from 'node:fs';
import { SdgenError, UsageError } from '../errors.js';
import { coerceOption, SPEC_BY_KEY, type PartialOptions } from '../config/options.js';
import { tomeOptionsFor, type CommonFlags } from './commands.js';
import { makeChalk } from './ui.js';

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
      JSON.stringify({
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
  out.write(`${c.bold(folder.name)}  ${folder.pipelineClass}  default ${folder.defaultWidth}x${folder.defaultHeight}  scheduler ${folder.defaultScheduler}  prediction ${folder.predictionType}\n`);
  out.write(`unet: ${folder.paths.unet}\n`);
  if ('error' in found) {
    out.write(`ToMe: cannot find the transformer blocks: ${found.error} (sdgen would run this UNet unpatched)\n`);
    return;
  }
  for (const line of t.describeBlocks(found.blocks, tome)) out.write(line + '\n');
  out.write(
    tome.ratio > 0
      ? `ToMe ratio ${tome.ratio} at ${w}x${h}: ${decision.apply ? 'applied' : `skipped (${decision.reason})`}\n`
      : 'ToMe off (pass --tome R to see what would be merged)\n',
  );
}

export async function cmdTomePatch(input: string, output: string, explicit: PartialOptions, flags: CommonFlags & { config?: string; copyWeights?: boolean }, out: Out = process.stdout): Promise<void> {
  const tome = await tomeOptionsFor(explicit, flags.config);
  if (!(tome.ratio > 0)) throw new UsageError('tome-patch: give a ratio with --tome R (R > 0)');
  if (!existsSync(input)) throw new SdgenError(`model not found: ${input}`);
  const { patchModelFile } = await import('../models/tome-cache.js');
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
    result = await patchModelFile(input, output, tome, (stage: string, done: number, total: number) => {
      if (!bar) return;
      if (stage !== stageNow) {
        if (stageNow) bar.stop();
        bar.start(Math.max(total, 1), done, { stage });
        stageNow = stage;
      } else bar.update(done);
    }, { copyWeights: flags.copyWeights });
  } finally {
    bar?.stop();
  }
  const secs = (performance.now() - started) / 1000;
  if (flags.json) {
    out.write(JSON.stringify({ input, output, tome, seconds: secs, ...result }) + '\n');
    return;
  }
  if (!result.patched) {
    out.write(`${output}: not patched: ${result.reason ?? 'no transformer block found'}\n`);
    return;
  }
  const n = result.blocks.length;
  const rand = result.randInputs.length ? `; extra inputs ${result.randInputs.join(', ')}` : '';
  out.write(`wrote ${output} (${n} block${n === 1 ? '' : 's'} patched${rand}) in ${secs.toFixed(1)} s\n`);
}

/** `sdgen bench`: forwards its flags to the benchmark module (src/bench parses and checks them). */
export async function cmdBench(opts: Record<string, unknown>, flags: CommonFlags): Promise<void> {
  const { runBench } = await import('../bench/index.js');
  await runBench({ ...opts, json: flags.json });
}
