/**
 * The tensor names of a LoRA file, grouped into modules (pure: names and shapes in, modules out).
 *
 * Formats understood:
 * - kohya / sd-scripts (what A1111, ComfyUI and most shared LoRAs use): `lora_unet_<path>`,
 *   `lora_te_<path>` (SD 1/2 text encoder), SDXL `lora_te1_<path>` / `lora_te2_<path>`, each with
 *   `.lora_down.weight`, `.lora_up.weight` and optionally `.alpha` (absent: alpha = rank). The
 *   path is the module path with every `.` turned into `_`, which is ambiguous
 *   (`transformer_blocks` vs `transformer.blocks`); map.ts resolves it against the module paths
 *   present in the graph.
 * - diffusers: `<model>.<module>.lora.down.weight` / `.lora.up.weight` (LoRACompatibleLinear/Conv),
 *   the attention-processor form `<attn>.processor.to_q_lora.down.weight` (→ `<attn>.to_q`,
 *   `to_out_lora` → `to_out.0`; text encoder: → q_proj/k_proj/v_proj/out_proj) and
 *   `<module>.lora_linear_layer.down.weight`; alphas as `<down key>.alpha` (diffusers' own kohya
 *   conversion) or `<module>.alpha`.
 * - PEFT: `<module>.lora_A.weight` / `.lora_B.weight` (optionally `lora_A.<adapter>.weight`),
 *   prefixes `base_model.model.`, `unet.`, `text_encoder.`, `text_encoder_2.`; no prefix = UNet.
 * Convolution LoRAs (LoCon: down [r, in, kh, kw], up [out, r, 1, 1]) are modules like the others.
 * Other networks (LoHa, LoKr, OFT, DoRA, full diffs, LoCon with a Tucker core, ...) are refused
 * with one line naming the type.
 */
import { UsageError } from '../errors.js';

export type LoraTarget = 'unet' | 'text_encoder' | 'text_encoder_2';
export type LoraKeyFormat = 'kohya' | 'diffusers' | 'peft';

export interface TensorInfo {
  dtype: string;
  shape: readonly number[];
}

export interface LoraModule {
  /** the key prefix in the file that names this module */
  id: string;
  target: LoraTarget;
  format: LoraKeyFormat;
  /** module path: dotted (`down_blocks.0.attentions.0.proj_in`) or, for kohya, underscore-joined */
  path: string;
  /** true when `path` is kohya's underscore-joined form */
  underscored: boolean;
  down: string;
  up: string;
  /** the `.alpha` tensor, when the file has one */
  alpha?: string;
  rank: number;
  /** [in] for a linear layer, [in, kh, kw] for a convolution */
  inShape: number[];
  out: number;
  kind: 'linear' | 'conv';
}

export interface ParsedLora {
  format: LoraKeyFormat;
  modules: LoraModule[];
  /** keys read but not applied (embeddings bundled into the LoRA), with the reason */
  ignored: string[];
}

/** Key fragments of network types other than LoRA, with their names for the error. */
const OTHER_NETWORKS: readonly [RegExp, string][] = [
  [/\.hada_w[12]_[ab]$|\.hada_t[12]$/, 'LoHa (LyCORIS Hadamard product)'],
  [/\.lokr_w[12](_[ab])?$|\.lokr_t2$/, 'LoKr (LyCORIS Kronecker product)'],
  [/\.lora_mid\.weight$/, 'LoCon with a Tucker/CP core (lora_mid)'],
  [/\.oft_blocks$|\.oft_diag$|\.oft_R\./, 'OFT/BOFT (orthogonal finetuning)'],
  [/\.dora_scale$|\.lora_magnitude_vector/, 'DoRA (weight-decomposed LoRA)'],
  [/\.diff$|\.diff_b$/, 'a full weight difference (LyCORIS "full")'],
  [/\.w_norm$|\.b_norm$/, 'LyCORIS norm-layer training'],
  [/\.a1\.weight$|\.a2\.weight$|\.b1\.weight$|\.b2\.weight$/, 'GLoRA'],
  [/\.on_input$|\.ia3_l$/, '(IA)³'],
];

const KOHYA_RE = /^lora_(unet|te1|te2|te)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;
const KOHYA_TARGET: Readonly<Record<string, LoraTarget>> = { unet: 'unet', te: 'text_encoder', te1: 'text_encoder', te2: 'text_encoder_2' };

/** diffusers' text-encoder attention-processor names → the CLIP projection modules. */
const TE_PROCESSOR: Readonly<Record<string, string>> = { to_q: 'q_proj', to_k: 'k_proj', to_v: 'v_proj', to_out: 'out_proj' };

interface Slot {
  down?: string;
  up?: string;
  alpha?: string;
  target: LoraTarget;
  format: LoraKeyFormat;
  path: string;
  underscored: boolean;
}

/** Splits `unet.` / `text_encoder.` / `text_encoder_2.` / `base_model.model.` off a diffusers/PEFT key. */
function diffusersTarget(key: string): { target: LoraTarget; rest: string } {
  let k = key.startsWith('base_model.model.') ? key.slice('base_model.model.'.length) : key;
  if (k.startsWith('text_encoder_2.')) return { target: 'text_encoder_2', rest: k.slice(15) };
  if (k.startsWith('text_encoder.')) return { target: 'text_encoder', rest: k.slice(13) };
  if (k.startsWith('unet.')) k = k.slice(5);
  return { target: 'unet', rest: k };
}

/** A diffusers/PEFT key as (module path, role); undefined when it is no LoRA key. */
function parseDiffusersKey(key: string): { target: LoraTarget; path: string; role: 'down' | 'up' | 'alpha'; format: LoraKeyFormat } | undefined {
  const { target, rest } = diffusersTarget(key);
  let m = /^(.+)\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight$/.exec(rest);
  if (m) return { target, path: m[1]!, role: m[2] === 'A' ? 'down' : 'up', format: 'peft' };
  m = /^(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight(\.alpha)?$/.exec(rest);
  if (m) return { target, path: m[1]!, role: m[3] ? 'alpha' : (m[2] as 'down' | 'up'), format: 'diffusers' };
  m = /^(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight(\.alpha)?$/.exec(rest);
  if (m) {
    const proj = m[2]!;
    const leaf = target === 'unet' ? (proj === 'to_out' ? 'to_out.0' : proj) : TE_PROCESSOR[proj]!;
    return { target, path: `${m[1]}.${leaf}`, role: m[4] ? 'alpha' : (m[3] as 'down' | 'up'), format: 'diffusers' };
  }
  // legacy text-encoder form without `.processor`: `<attn>.to_q_lora.down.weight`
  m = /^(.+)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight(\.alpha)?$/.exec(rest);
  if (m && target !== 'unet') return { target, path: `${m[1]}.${TE_PROCESSOR[m[2]!]}`, role: m[4] ? 'alpha' : (m[3] as 'down' | 'up'), format: 'diffusers' };
  m = /^(.+)\.alpha$/.exec(rest);
  if (m) return { target, path: m[1]!, role: 'alpha', format: 'diffusers' };
  return undefined;
}

/** Name of the non-LoRA network a key belongs to, if it is one. */
export function otherNetworkType(key: string): string | undefined {
  for (const [re, name] of OTHER_NETWORKS) if (re.test(key)) return name;
  return undefined;
}

function shapeText(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

/**
 * Groups the tensors of a LoRA file into modules. Throws UsageError (one line, prefixed with
 * `label`) for another network type, an unrecognized key, a module missing its down or up
 * weight, or shapes that do not form a LoRA.
 */
export function parseLoraKeys(tensors: ReadonlyMap<string, TensorInfo>, label: string): ParsedLora {
  const slots = new Map<string, Slot>();
  const ignored: string[] = [];
  const formats = new Set<LoraKeyFormat>();
  for (const key of tensors.keys()) {
    const other = otherNetworkType(key);
    if (other !== undefined) throw new UsageError(`${label}: this is ${other}, not a LoRA; sdgen applies LoRA (and LoCon) networks only (key "${key}")`);
    if (key.startsWith('bundle_emb.')) {
      ignored.push(`${key}: a textual-inversion embedding bundled in the LoRA (put it in --embeddings-dir as its own file)`);
      continue;
    }
    let slotKey: string;
    let role: 'down' | 'up' | 'alpha';
    let init: Omit<Slot, 'down' | 'up' | 'alpha'>;
    const k = KOHYA_RE.exec(key);
    if (k) {
      slotKey = `kohya:${k[1]}:${k[2]}`;
      role = k[3] === 'alpha' ? 'alpha' : k[3] === 'lora_down.weight' ? 'down' : 'up';
      init = { target: KOHYA_TARGET[k[1]!]!, format: 'kohya', path: k[2]!, underscored: true };
    } else {
      const d = parseDiffusersKey(key);
      if (d === undefined) throw new UsageError(`${label}: unrecognized key "${key}" (not a kohya, diffusers or PEFT LoRA)`);
      slotKey = `${d.format === 'peft' ? 'diffusers' : d.format}:${d.target}:${d.path}`;
      role = d.role;
      init = { target: d.target, format: d.format, path: d.path, underscored: false };
    }
    let slot = slots.get(slotKey);
    if (slot === undefined) {
      slot = { ...init };
      slots.set(slotKey, slot);
    } else if (init.format === 'peft') {
      slot.format = 'peft';
    }
    if (slot[role] !== undefined) throw new UsageError(`${label}: module ${slot.path} has two ${role} tensors ("${slot[role]}", "${key}")`);
    slot[role] = key;
  }

  const modules: LoraModule[] = [];
  for (const s of slots.values()) {
    if (s.down === undefined && s.up === undefined) {
      // a lone alpha: kohya files of some trainers keep alphas of modules they did not train
      ignored.push(`${s.alpha}: an alpha without LoRA weights`);
      continue;
    }
    if (s.down === undefined || s.up === undefined) {
      throw new UsageError(`${label}: module ${s.path} has ${s.down ? 'a down' : 'an up'} weight but no ${s.down ? 'up' : 'down'} weight`);
    }
    const down = tensors.get(s.down)!.shape;
    const up = tensors.get(s.up)!.shape;
    const bad = (why: string): UsageError =>
      new UsageError(`${label}: module ${s.path}: ${why} (down ${shapeText(down)}, up ${shapeText(up)})`);
    let kind: 'linear' | 'conv';
    if (down.length === 2 && up.length === 2) kind = 'linear';
    else if (down.length === 4 && up.length === 4) {
      kind = 'conv';
      if (up[2] !== 1 || up[3] !== 1) throw bad('the up weight of a convolution LoRA must be 1×1');
    } else throw bad('down and up weights must both be 2-D (linear) or 4-D (convolution)');
    const rank = down[0]!;
    if (rank === 0 || up[1] !== rank) throw bad(`the rank of the down weight (${rank}) and of the up weight (${up[1]}) differ`);
    if (s.alpha !== undefined) {
      const a = tensors.get(s.alpha)!.shape;
      if (!(a.length === 0 || (a.length === 1 && a[0] === 1))) throw new UsageError(`${label}: module ${s.path}: alpha must be a single value, got shape ${shapeText(a)}`);
    }
    formats.add(s.format);
    modules.push({
      id: s.path, target: s.target, format: s.format, path: s.path, underscored: s.underscored,
      down: s.down, up: s.up, ...(s.alpha !== undefined ? { alpha: s.alpha } : {}),
      rank, inShape: down.slice(1), out: up[0]!, kind,
    });
  }
  if (modules.length === 0) throw new UsageError(`${label}: no LoRA weights in this file`);
  const format: LoraKeyFormat = formats.has('kohya') ? 'kohya' : formats.has('peft') ? 'peft' : 'diffusers';
  return { format, modules, ignored };
}

/** The delta's shape in the layout of the module's weight W: [out, in] or [out, in, kh, kw]. */
export function deltaShape(m: LoraModule): number[] {
  return [m.out, ...m.inShape];
}
