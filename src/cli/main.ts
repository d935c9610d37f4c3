#!/usr/bin/env node
/**
 * sdgen's command line (commander 14). The default command generates images; subcommands:
 * synth, tokens, lora-info, metadata, samplers, presets, info, tome-patch, bench.
 * Errors: a UsageError exits 2, an SdgenError exits 1, each with one line on stderr (the stack
 * only with --verbose); any other error is a bug and prints its stack.
 */
import { spawn } from 'node:child_process';
import { closeSync, readFileSync, statSync } from 'node:fs';
import { Command, CommanderError, Option } from 'commander';
import { SdgenError, UsageError } from '../errors.js';
import { checkPromptLength } from '../text/limits.js';
import { errorLine, errorText, systemErrorLine } from './ui.js';
import { SDGEN_VERSION } from '../version.js';
import { addOptionFlags, explicitOptions, GENERATION_SPECS, TOME_SPECS } from './flags.js';

interface IO {
  argv: string[];
}

function addCommon(cmd: Command, json = true): Command {
  if (json) cmd.option('--json', 'machine-readable output (JSON lines on stdout)');
  cmd.option('--no-color', 'no colour (also: NO_COLOR=1; colour is only used on a terminal)');
  cmd.option('--verbose', 'print stack traces and details');
  return cmd;
}

function common(cmd: Command): { json: boolean; color: boolean; verbose: boolean; quiet: boolean } {
  const o = cmd.opts();
  return { json: o.json === true, color: o.color !== false, verbose: o.verbose === true, quiet: o.quiet === true };
}

let exitCode = 0;

export function buildProgram(): Command {
  const program = new Command('sdgen');
  program
    .description('Stable Diffusion image generator on ONNX Runtime, with ToMe token merging applied to the UNet graph')
    .version(SDGEN_VERSION, '-V, --version')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({ outputError: (str, write) => write(errorLine(str.trimEnd().split('\n')[0]!) + '\n') })
    .addHelpText(
      'after',
      '\nGenerating is the default command: sdgen "a red fox" --model DIR [flags]\n' +
        'Every generation flag: sdgen generate --help   ·   Flags of a command: sdgen help COMMAND',
    );

  const gen = new Command('generate')
    .description('generate images (the default command)')
    .argument('[prompt]', 'the prompt')
    .exitOverride();
  addOptionFlags(gen, GENERATION_SPECS);
  gen
    .option('--preset <name>', 'apply a preset (see: sdgen presets)')
    .option('--config <file>', 'use this config file instead of searching for .sdgenrc')
    .option('--prompts <file>', 'prompt file, one job per line (- = stdin); .jsonl objects or A1111 "prompts from file" lines')
    .option('--strict', 'with --prompts: report every bad line and stop before generating anything')
    .option('--resume', 'continue an interrupted run into the same --out: same names, finished images skipped')
    .option('--dry-run', 'print the job list (prompt, seed, size, sampler, ToMe) without loading a model')
    .option('--shard <I/N|auto>', 'make only shard I (0-based) of N of the plan; auto: from the job engine (Kubernetes, Slurm, AWS Batch; see docs/scale-out.md)')
    .option('--shard-count <n>', 'N for --shard auto where the environment does not give it (also: SDGEN_SHARD_COUNT)')
    .option('--from <png>', "regenerate from an image's metadata (flags given explicitly still override)")
    .option('-q, --quiet', 'no progress, no summary; only errors');
  addCommon(gen);
  gen.action(async (prompt: string | undefined, _o: unknown, cmd: Command) => {
    const explicit = explicitOptions(cmd, GENERATION_SPECS);
    const o = cmd.opts();
    if (prompt !== undefined) checkPromptLength(prompt, 'prompt');
    if (explicit.negativePrompt !== undefined) checkPromptLength(explicit.negativePrompt, '--negative-prompt');
    if (explicit.cacheDir !== undefined) checkCacheDir(explicit.cacheDir, '--cache-dir');
    const { runGenerate } = await import('./generate.js');
    const res = await runGenerate(prompt, explicit, {
      ...common(cmd),
      preset: o.preset,
      config: o.config,
      prompts: o.prompts,
      strict: o.strict === true,
      resume: o.resume === true,
      dryRun: o.dryRun === true,
      from: o.from,
      shard: o.shard,
      shardCount: o.shardCount,
    });
    exitCode = res.exitCode;
  });
  program.addCommand(gen, { isDefault: true });

  const synth = new Command('synth')
    .description('write a synthetic Stable Diffusion ONNX model folder (seeded random weights; no download)')
    .addOption(new Option('--arch <arch>', 'architecture').choices(['tiny', 'sd15', 'sd21', 'sdxl', 'sdxl-tiny']).makeOptionMandatory())
    .requiredOption('--out <dir>', 'output folder')
    .option('--seed <n>', 'weight seed (default: 0)')
    .option('--fp16', 'float16 weights and inputs')
    .option('--opset <n>', 'ONNX opset 14 or 17 (default: 14; sdxl: 17)')
    .option('--style <style>', 'tiny only: sd1 or sd2 (v-prediction, "!" padding)')
    .option('--time-cond-proj-dim <n>', 'LCM-style UNet: timestep_cond input of width N (LCM models: 256) and an LCM scheduler')
    .option('-q, --quiet', 'no progress')
    .exitOverride();
  addCommon(synth);
  synth.action(async (_o: unknown, cmd: Command) => {
    const o = cmd.opts();
    const { cmdSynth } = await import('./commands.js');
    await cmdSynth({ ...common(cmd), arch: o.arch, out: o.out, seed: o.seed, fp16: o.fp16, opset: o.opset, style: o.style, timeCondProjDim: o.timeCondProjDim });
  });
  program.addCommand(synth);

  const tokens = new Command('tokens')
    .description('show the CLIP token ids of a prompt')
    .argument('<prompt>', 'the prompt')
    .option('--model <dir>', 'model folder (or its tokenizer folder)')
    .option('--no-emphasis', 'no emphasis syntax when splitting chunks')
    .exitOverride();
  addCommon(tokens);
  tokens.action(async (prompt: string, _o: unknown, cmd: Command) => {
    const o = cmd.opts();
    checkPromptLength(prompt, 'prompt');
    const { cmdTokens } = await import('./commands.js');
    await cmdTokens(prompt, o.model, { ...common(cmd), emphasis: o.emphasis !== false });
  });
  program.addCommand(tokens);

  const loraInfoCmd = new Command('lora-info')
    .description('what a LoRA file is (format, rank, alpha, touched layers) and, with --model, how many of its modules map onto the model')
    .argument('<file>', 'LoRA .safetensors file')
    .option('--model <dir>', 'model folder to map the LoRA onto')
    .exitOverride();
  addCommon(loraInfoCmd);
  loraInfoCmd.action(async (file: string, _o: unknown, cmd: Command) => {
    const { cmdLoraInfo } = await import('./lora-info.js');
    await cmdLoraInfo(file, cmd.opts().model, common(cmd));
  });
  program.addCommand(loraInfoCmd);

  const metadata = new Command('metadata').description('print the generation parameters stored in a PNG').argument('<file>', 'PNG file').exitOverride();
  addCommon(metadata);
  metadata.action(async (file: string, _o: unknown, cmd: Command) => {
    const { cmdMetadata } = await import('./commands.js');
    await cmdMetadata(file, common(cmd));
  });
  program.addCommand(metadata);

  const status = new Command('status')
    .description('what the runs in an output directory have done: images done / missing / failed per shard and overall')
    .argument('<dir>', 'output directory')
    .option('--merge <file>', 'also write every run\'s manifest records into one JSONL file')
    .exitOverride();
  addCommon(status);
  status.action(async (dir: string, _o: unknown, cmd: Command) => {
    const { cmdStatus } = await import('./status.js');
    exitCode = await cmdStatus(dir, { ...common(cmd), merge: cmd.opts().merge });
  });
  program.addCommand(status);

  const samplers = new Command('samplers').description('list the samplers with their A1111 names').exitOverride();
  addCommon(samplers);
  samplers.action(async (_o: unknown, cmd: Command) => {
    const { cmdSamplers } = await import('./commands.js');
    await cmdSamplers(common(cmd));
  });
  program.addCommand(samplers);

  const presets = new Command('presets').description('list the presets (shipped, user directory, .sdgenrc) with their values').option('--config <file>', 'config file').exitOverride();
  addCommon(presets);
  presets.action(async (_o: unknown, cmd: Command) => {
    const { cmdPresets } = await import('./commands.js');
    await cmdPresets({ ...common(cmd), config: cmd.opts().config });
  });
  program.addCommand(presets);

  const info = new Command('info')
    .description("list the UNet's transformer blocks and what ToMe would merge under the given options")
    .requiredOption('--model <dir>', 'model folder')
    .option('-W, --width <n>', 'image width to evaluate the ToMe thresholds at')
    .option('-H, --height <n>', 'image height to evaluate the ToMe thresholds at')
    .option('--config <file>', 'config file')
    .exitOverride();
  addOptionFlags(info, TOME_SPECS);
  addCommon(info);
  info.action(async (_o: unknown, cmd: Command) => {
    const explicit = explicitOptions(cmd, TOME_SPECS);
    const { cmdInfo } = await import('./tome-commands.js');
    const o = cmd.opts();
    await cmdInfo(o.model, explicit, { ...common(cmd), config: o.config, width: o.width, height: o.height });
  });
  program.addCommand(info);

  const patch = new Command('tome-patch')
    .description('write the ToMe-rewritten UNet (external data kept) for use in other runtimes')
    .argument('<in>', 'UNet model.onnx')
    .argument('<out>', 'output .onnx')
    .option('--config <file>', 'config file')
    .option('-q, --quiet', 'no progress')
    .option('--copy-weights', 'copy the external weights file instead of hard-linking it (same filesystem only)')
    .option('--overwrite', 'replace an existing OUT and its weights files (never the input model or its weights)')
    .exitOverride();
  addOptionFlags(patch, TOME_SPECS);
  addCommon(patch);
  patch.action(async (input: string, output: string, _o: unknown, cmd: Command) => {
    const explicit = explicitOptions(cmd, TOME_SPECS);
    const { cmdTomePatch } = await import('./tome-commands.js');
    await cmdTomePatch(input, output, explicit, {
      ...common(cmd),
      config: cmd.opts().config,
      copyWeights: cmd.opts().copyWeights === true,
      overwrite: cmd.opts().overwrite === true,
    });
  });
  program.addCommand(patch);

  const bench = new Command('bench')
    .description('benchmark UNet speed with and without ToMe across sizes, ratios and attention kernels (CPU)')
    .option('--model <dir>', 'model folder or UNet .onnx (default: a synthetic SD 1.5 model, made once in the cache)')
    .option('--sizes <list>', 'square image sizes, e.g. 512,768,1024 (none: no UNet grid)')
    .option('--ratios <list>', 'ToMe ratios, e.g. 0,0.3,0.5,0.6')
    .option('--attention <list>', 'attention modes: standard,fused')
    .option('--conv <mode>', 'convolutions of the fused (optimized) rows and the whole image: winograd|direct (default: winograd)')
    .option('--steps <n>', 'timed UNet calls per configuration (median reported)')
    .option('--rounds <n>', 'rounds the timed calls are split over')
    .option('--batch <n>', 'UNet batch (2 = with classifier-free guidance)')
    .option('--b1-sizes <list>', 'sizes also timed at batch 1 with ToMe 0 and 0.5 (default: 768; none = off)')
    .option('--image-size <n>', 'also time one whole image at this size (0 = skip)')
    .option('--image-steps <n>', 'denoising steps of the whole-image run')
    .option('--max-downsample <n>', 'ToMe max downsample of the UNet grid: 1|2|4|8|auto (default: auto, 2 on SDXL)')
    .option('--hires <base:target>', 'also time one hires-fix image, e.g. 512:1024, with --hires-preset ToMe and without')
    .option('--hires-steps <p1+p2>', 'steps of hires pass 1 and pass 2 (default: 20+10)')
    .option('--hires-preset <name>', 'preset whose ToMe settings the hires ToMe run uses (default: tome-hires)')
    .option('--hires-upscaler <name>', 'hires upscaler (default: Latent)')
    .option('--hires-strength <x>', 'hires denoising strength (default: 0.7)')
    .option('--config-timeout <s>', 'give up on a configuration after this many seconds')
    .option('--budget <minutes>', 'do not start work expected to end after this many minutes (0 = no limit; default 30)')
    .option('--profile', "summarize onnxruntime's profile per op type")
    .option('--out <path>', 'results directory or .json file (default: bench/results)')
    .option('--cache-dir <dir>', 'cache directory for the synthetic model and variants')
    .option('--device <name>', 'execution provider (the benchmark measures cpu)')
    .option('--threads <n>', 'intra-op threads')
    .exitOverride();
  addCommon(bench);
  bench.action(async (_o: unknown, cmd: Command) => {
    const { cmdBench } = await import('./tome-commands.js');
    await cmdBench(cmd.opts(), common(cmd));
  });
  program.addCommand(bench);

  return program;
}

/** A cache directory given explicitly must be a directory (or not exist yet). */
function checkCacheDir(dir: string, what: string): void {
  let isDir: boolean;
  try {
    isDir = statSync(dir).isDirectory();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return; // made when first used
    throw new UsageError(`${what}: cannot use ${dir} (${code ?? (e as Error).message})`);
  }
  if (!isDir) throw new UsageError(`${what}: ${dir} is not a directory`);
}

/**
 * Long command lines. onnxruntime-node 1.30 reads the process's command line
 * (/proc/self/cmdline) when it creates its first session and matches it recursively, about
 * 290 bytes of stack per byte of command line: past ~29 KB on an 8 MB main-thread stack the
 * process dies with SIGSEGV and no message (a 30,000-character prompt on argv; gdb shows ~87,000
 * recursive frames inside libonnxruntime). Node cannot shorten its own /proc/self/cmdline
 * (process.argv is a copy; process.title only reuses argv[0]'s bytes), so a command line over
 * ARGV_RELAY_BYTES runs the CLI again in a child process whose command line is short and whose
 * arguments arrive through a pipe (fd 3); stdin, stdout and stderr are the parent's.
 */
export const ARGV_RELAY_BYTES = 4096;
const ARGV_FD_ENV = 'SDGEN_ARGV_FD';

/** Bytes of the command line as the kernel holds it (each argument NUL-terminated). */
export function commandLineBytes(argv: readonly string[] = process.argv, execArgv: readonly string[] = process.execArgv): number {
  let n = 0;
  for (const a of [...execArgv, ...argv]) n += Buffer.byteLength(a) + 1;
  return n;
}

/** In a relayed child: the arguments the parent sent (argv[0], argv[1] are this process's); else null. */
function relayedArgv(): string[] | null {
  const fd = process.env[ARGV_FD_ENV];
  if (fd === undefined) return null;
  delete process.env[ARGV_FD_ENV]; // not for this process's own children
  let args: unknown;
  try {
    args = JSON.parse(readFileSync(Number(fd), 'utf8'));
    closeSync(Number(fd));
  } catch (e) {
    throw new SdgenError(`cannot read the arguments passed on by the parent sdgen process (${(e as Error).message})`);
  }
  if (!Array.isArray(args) || !args.every((a) => typeof a === 'string')) throw new SdgenError('the arguments passed on by the parent sdgen process are damaged');
  return [process.argv[0]!, process.argv[1]!, ...(args as string[])];
}

/** Runs this CLI again with `argv`'s arguments sent through a pipe; resolves to its exit code. */
function relay(argv: readonly string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!], {
      stdio: ['inherit', 'inherit', 'inherit', 'pipe'],
      env: { ...process.env, [ARGV_FD_ENV]: '3' },
    });
    // Ctrl-C reaches the child from the terminal itself (same process group): the parent only
    // waits. A SIGTERM or SIGHUP sent to the parent alone is passed on.
    const ignore = (): void => {};
    const forward = (sig: NodeJS.Signals): void => {
      child.kill(sig);
    };
    process.on('SIGINT', ignore);
    process.on('SIGTERM', forward);
    process.on('SIGHUP', forward);
    const done = (): void => {
      process.off('SIGINT', ignore);
      process.off('SIGTERM', forward);
      process.off('SIGHUP', forward);
    };
    child.on('error', (e) => {
      done();
      process.stderr.write(`sdgen: cannot start sdgen for a long command line (${(e as NodeJS.ErrnoException).code ?? e.message})\n`);
      resolve(1);
    });
    child.on('exit', (code, signal) => {
      done();
      if (signal) {
        // end the same way the child did (a shell then reports the signal)
        process.kill(process.pid, signal);
        resolve(128 + (osSignals[signal] ?? 0));
      } else resolve(code ?? 1);
    });
    const pipe = child.stdio[3] as NodeJS.WritableStream;
    pipe.on('error', () => {}); // a child that died early: its exit reports it
    pipe.end(JSON.stringify(argv.slice(2)));
  });
}

const osSignals: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };

const EPIPE_HOOK = Symbol.for('sdgen.epipe-hook');

/** Runs the CLI; returns the exit code (never calls process.exit except on a second Ctrl-C). */
export async function main(argv: string[] = process.argv): Promise<number> {
  // the process's own command line: passed on by a relaying parent, or relayed when too long
  if (argv === process.argv) {
    let passed: string[] | null;
    try {
      passed = relayedArgv();
    } catch (e) {
      process.stderr.write(`sdgen: ${(e as Error).message}\n`);
      return 1;
    }
    if (passed) argv = process.argv = passed;
    else if (commandLineBytes() > ARGV_RELAY_BYTES) return relay(argv);
  }
  const verbose = argv.includes('--verbose');
  exitCode = 0;
  // `sdgen … | head`: a closed pipe ends the output quietly.
  // Hooked once per stream (main may run several times in one process), whatever other listeners
  // exist: a loader such as tsx pipes into stdout, and that pipe's listener re-emits the error.
  for (const stream of [process.stdout, process.stderr] as Array<NodeJS.WriteStream & { [EPIPE_HOOK]?: true }>) {
    if (stream[EPIPE_HOOK]) continue;
    stream[EPIPE_HOOK] = true;
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(exitCode);
      throw e;
    });
  }
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
      // commander already printed its one-line message
      return 2;
    }
    if (e instanceof SdgenError) {
      process.stderr.write(`sdgen: ${errorText(e, verbose)}\n`);
      return e instanceof UsageError ? 2 : e.exitCode;
    }
    // a failure of the machine (permissions, full disk, a file where a folder should be)
    const sys = systemErrorLine(e);
    if (sys !== null) {
      process.stderr.write(`sdgen: ${verbose ? errorText(e, true) : sys}\n`);
      return 1;
    }
    process.stderr.write(`sdgen: internal error (please report): ${errorText(e, true)}\n`);
    return 1;
  }
}

const isEntry = (() => {
  const arg = process.argv[1];
  if (!arg) return false;
  try {
    const here = new URL(import.meta.url).pathname;
    return arg === here || here.endsWith(arg.replace(/\\/g, '/')) || /\/cli\/main\.(ts|js)$/.test(arg);
  } catch {
    return false;
  }
})();

if (isEntry) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      process.stderr.write(String((e as Error)?.stack ?? e) + '\n');
      process.exitCode = 1;
    },
  );
}
