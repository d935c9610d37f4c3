/** Options and results of `sdgen bench` (runBench). */
import type { ProfileSummary } from './profile.js';
import type { ConvRate, MatMulRate } from './matmul-rate.js';
import type { HiresReport } from './hires.js';

export type BenchAttention = 'standard' | 'fused';
export type BenchConv = 'direct' | 'winograd';

export interface BenchOptions {
  /** image sides in pixels (square images) of the UNet grid; default [512, 768, 1024]; [] = no grid (`--sizes none`) */
  sizes: number[];
  /** ToMe ratios; default [0, 0.3, 0.5, 0.6] (sx = sy = 2, no rand, max downsample `maxDownsample`) */
  ratios: number[];
  /**
   * ToMe's max downsample in the grid's variants: 1, 2, 4, 8 or 'auto' (default): the
   * highest-resolution level with transformer blocks, read from the graph — 1 on SD 1.x/2.x
   * (tomesd's default), 2 on SDXL, whose first level has none (src/tome/options.ts)
   */
  maxDownsample: number | 'auto';
  /** attention modes; default ['standard', 'fused'] */
  attention: BenchAttention[];
  /**
   * convolutions of the 'fused' configurations (sdgen's optimized graph) and of the whole image;
   * 'standard' rows run the exported convolutions. Default winograd (sdgen's CPU default).
   */
  conv: BenchConv;
  /** timed UNet calls per configuration (median reported); default 2 */
  steps: number;
  /**
   * processes per configuration: the timed calls are split over this many rounds, each round
   * visiting every configuration (order reversed every other round) so machine drift cancels;
   * default 2 (1 when steps is 1)
   */
  rounds: number;
  /** UNet batch; default 2 (classifier-free guidance) */
  batch: number;
  /**
   * of the sizes, those also timed at batch 1 (no classifier-free guidance, as the 768²
   * target), with ToMe 0 and 0.5 (those of the ratios) under every attention mode; default [768]
   */
  batch1Sizes: number[];
  /** summarize onnxruntime's profile per op type for every configuration */
  profile: boolean;
  /** model folder (diffusers layout) or UNet .onnx; default: the synthetic sd15 model in the cache */
  model?: string;
  /** results directory; default bench/results */
  out: string;
  /** cache directory (synthetic model, bench variants); default sdgen's cache dir */
  cacheDir?: string;
  /** intra-op threads; default physical cores */
  threads?: number;
  /** time one whole image (text encoder, steps, VAE, PNG) at this size; 0 = skip; default 512 */
  imageSize: number;
  /** denoising steps of the whole-image run; default 20 */
  imageSteps: number;
  /** ToMe ratio of the whole-image run; default 0.5 */
  imageRatio?: number;
  /** attention of the whole-image run; default fused */
  imageAttention?: BenchAttention;
  /**
   * minutes the run may take (0 = no limit; default 30): work not expected to end in time is not
   * started (see ./budget.ts) and the table says what was dropped
   */
  budget: number;
  /** give up on a configuration's process after this many seconds (0 = no limit; default 0) */
  configTimeout?: number;
  /** side of the square float32 MatMul that measures the machine's rate; default 2048 */
  matmulSize?: number;
  /** memory available to one configuration (bytes); default: MemAvailable now, less a margin */
  memoryLimit?: number;
  /**
   * hires fix (issue 19): one image BASE² → TARGET² through the pipeline's hires fix, once with
   * `hiresPreset`'s ToMe settings and once with ToMe off, each in a process of its own
   * (`--hires 512:1024`); absent: not measured. Needs a model folder.
   */
  hires?: { base: number; target: number };
  /** steps of pass 1 and pass 2 (`--hires-steps 20+10`, the default) */
  hiresSteps: [number, number];
  /** the preset whose ToMe settings the ToMe run uses (`--hires-preset`, default tome-hires) */
  hiresPreset: string;
  /** A1111's upscaler name (`--hires-upscaler`, default Latent; Lanczos or Nearest: pixel space) */
  hiresUpscaler: string;
  /** pass 2's denoising strength (`--hires-strength`, default 0.7, A1111's) */
  hiresStrength: number;
  /** progress lines (default: console.log) */
  log?: (line: string) => void;
}

export type BenchStatus = 'ok' | 'skipped' | 'failed';

export interface ConfigResult {
  size: number;
  batch: number;
  ratio: number;
  attention: BenchAttention;
  status: BenchStatus;
  /** why skipped / failed */
  note?: string;
  /** every timed call (ms) */
  samplesMs: number[];
  medianMs?: number;
  /** max RSS over this configuration's processes (bytes) */
  peakRss?: number;
  /** memory the estimate predicted (bytes) */
  predictedPeak: number;
  /** session creation time (ms), first process */
  loadMs?: number;
  /** first (warm-up) call (ms) */
  warmupMs?: number;
  /** FLOPs of one UNet call, counted from onnxruntime's profile */
  flops?: number;
  /** floor time: each kernel class's counted FLOPs ÷ its measured rate (ms) */
  floorMs?: number;
  /** floorMs / medianMs */
  efficiency?: number;
  /** vs the same attention mode at ratio 0 */
  speedup?: number;
  memRatio?: number;
  /** vs standard attention at ratio 0 */
  speedupVsBaseline?: number;
  /**
   * the speed-up the counted FLOPs allow: FLOPs of the same attention at ratio 0 ÷ this row's
   * (ToMe's bound if time followed the counted work)
   */
  flopSpeedup?: number;
  /** speedup ÷ flopSpeedup: the part of the FLOP-implied speed-up the measurement achieved */
  achieved?: number;
  /** ToMe's max downsample as applied (resolved from the graph for 'auto'; ratio > 0 rows) */
  maxDownsample?: number;
  /** per op type summary of one steady-state call (--profile) */
  profile?: ProfileSummary;
  /** per op type summary of the warm-up call (always; first call, so one-time costs included) */
  warmupProfile?: ProfileSummary;
}

export interface ImageResult {
  size: number;
  steps: number;
  ratio: number;
  attention: BenchAttention;
  status: BenchStatus;
  note?: string;
  loadMs?: number;
  textEncoderMs?: number;
  unetMs?: number;
  vaeMs?: number;
  pngMs?: number;
  totalMs?: number;
  peakRss?: number;
}

export interface MachineInfo {
  cpuModel: string;
  logicalCpus: number;
  threads: number;
  totalMem: number;
  availableMemAtStart: number;
  loadAverage: number[];
  node: string;
  ort: string;
  sdgen: string;
  platform: string;
}

export interface BenchReport {
  started: string;
  finished: string;
  machine: MachineInfo;
  model: string;
  options: Omit<BenchOptions, 'log'>;
  matmul?: MatMulRate;
  /** onnxruntime's 3×3 convolution rate on this machine */
  conv?: ConvRate;
  /** the rate the floor divides by: the faster of the MatMul and convolution rates (GFLOP/s) */
  floorGflops?: number;
  configs: ConfigResult[];
  image?: ImageResult;
  /** the hires-fix measurement (`--hires`) */
  hires?: HiresReport;
  /** files written */
  files: string[];
}
