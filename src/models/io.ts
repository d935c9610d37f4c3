/**
 * What each Stable Diffusion model expects, read from its session metadata: input/output
 * names, element types and ranks. A model whose inputs do not fit is an SdgenError naming the
 * input. Pure logic over SessionInfo (testable with hand-written metadata).
 */
import { SdgenError } from '../errors.js';
import type { SessionInfo, ValueInfo } from './session.js';

/** Float element types a model may take for latents / embeddings. */
export type FloatType = 'float32' | 'float16';

export interface TextEncoderIO {
  inputIds: { name: string; type: 'int32' | 'int64'; /** fixed sequence length, else null */ seqLen: number | null };
  /** the final (layer-normed) hidden state */
  lastHiddenState: { name: string; type: FloatType };
  /**
   * Per-layer hidden states when the export has them (`hidden_states.0` … `hidden_states.L`,
   * index 0 = embeddings, L = last layer before the final layer norm); empty otherwise.
   */
  hiddenStates: { name: string; type: FloatType }[];
  /** the projected pooled output of a CLIPTextModelWithProjection (`text_embeds`, SDXL's text_encoder_2), else null */
  textEmbeds?: { name: string; type: FloatType } | null;
}

/** A [B, dim] float input of the UNet that is not the sample, timestep or text embeddings (SDXL's `text_embeds`, `time_ids`). */
export interface UnetExtraInput {
  name: string;
  type: FloatType;
  /** fixed width, else null */
  dim: number | null;
}

export interface UnetIO {
  /** `dims`: [B, C, H, W], a number where the export fixed it, else null */
  sample: { name: string; type: FloatType; dims?: (number | null)[] };
  timestep: {
    name: string;
    type: 'float32' | 'float16' | 'int64' | 'int32';
    /** 0: scalar; 1: one value per batch row (or a fixed length, see `length`) */
    rank: 0 | 1;
    /** fixed length of a rank-1 timestep (e.g. 1), else null (= batch) */
    length: number | null;
  };
  encoderHiddenStates: { name: string; type: FloatType; /** fixed embedding width, else null */ dim: number | null };
  /** LCM guidance embedding input, when present */
  timestepCond: { name: string; type: FloatType; dim: number | null } | null;
  /** SDXL's added conditioning (`addition_embed_type: text_time`): pooled text embeddings [B, 1280] and time ids [B, 6]; null otherwise */
  textEmbeds?: UnetExtraInput | null;
  timeIds?: UnetExtraInput | null;
  /** `tome_rand_<k>` inputs of a ToMe-patched UNet, in k order */
  tomeRand: { name: string; type: 'int64' | 'int32' }[];
  output: { name: string; type: FloatType };
}

export interface VaeDecoderIO {
  latent: { name: string; type: FloatType };
  output: { name: string; type: FloatType };
}

function floatType(v: ValueInfo, what: string): FloatType {
  if (v.type === 'float32' || v.type === 'float16') return v.type;
  throw new SdgenError(`${what}: input "${v.name}" has element type ${v.type}; expected float32 or float16`);
}

function fixedDim(d: number | string | undefined): number | null {
  return typeof d === 'number' && d > 0 ? d : null;
}

function pick(list: ValueInfo[], names: readonly string[]): ValueInfo | null {
  for (const n of names) {
    const v = list.find((x) => x.name === n);
    if (v) return v;
  }
  return null;
}

function rejectUnknownInputs(info: SessionInfo, known: Set<string>, what: string): void {
  for (const v of info.inputs) {
    if (!known.has(v.name)) {
      throw new SdgenError(
        `${what}: unsupported input "${v.name}" (${v.type} [${v.shape.join(', ')}]); sdgen supports SD 1.x/2.x and SDXL exports`,
      );
    }
  }
}

export function textEncoderIO(info: SessionInfo, what = 'text encoder'): TextEncoderIO {
  const ids = pick(info.inputs, ['input_ids']);
  if (!ids) throw new SdgenError(`${what}: no "input_ids" input (inputs: ${info.inputs.map((v) => v.name).join(', ')})`);
  if (ids.type !== 'int32' && ids.type !== 'int64') {
    throw new SdgenError(`${what}: input "input_ids" has element type ${ids.type}; expected int32 or int64`);
  }
  if (ids.shape.length !== 2) throw new SdgenError(`${what}: input "input_ids" has rank ${ids.shape.length}; expected 2 [batch, 77]`);
  rejectUnknownInputs(info, new Set([ids.name]), what);
  const last = pick(info.outputs, ['last_hidden_state']) ?? info.outputs[0];
  if (!last) throw new SdgenError(`${what}: no outputs`);
  const hs: { name: string; type: FloatType; index: number }[] = [];
  for (const o of info.outputs) {
    const m = /^hidden_states[._](\d+)$/.exec(o.name);
    if (m) hs.push({ name: o.name, type: floatType(o, what), index: Number(m[1]) });
  }
  hs.sort((a, b) => a.index - b.index);
  const pooled = pick(info.outputs, ['text_embeds']);
  return {
    inputIds: { name: ids.name, type: ids.type, seqLen: fixedDim(ids.shape[1]) },
    lastHiddenState: { name: last.name, type: floatType(last, what) },
    hiddenStates: hs.every((h, i) => h.index === i) ? hs.map(({ name, type }) => ({ name, type })) : [],
    textEmbeds: pooled ? { name: pooled.name, type: floatType(pooled, what) } : null,
  };
}

export function unetIO(info: SessionInfo, what = 'unet'): UnetIO {
  const names = info.inputs.map((v) => v.name).join(', ');
  const sample = pick(info.inputs, ['sample']);
  const ts = pick(info.inputs, ['timestep', 'timesteps', 't']);
  const ehs = pick(info.inputs, ['encoder_hidden_states']);
  if (!sample) throw new SdgenError(`${what}: no "sample" input (inputs: ${names})`);
  if (!ts) throw new SdgenError(`${what}: no "timestep" input (inputs: ${names})`);
  if (!ehs) throw new SdgenError(`${what}: no "encoder_hidden_states" input (inputs: ${names})`);
  if (sample.shape.length !== 4) throw new SdgenError(`${what}: input "sample" has rank ${sample.shape.length}; expected 4 [B,4,H,W]`);
  if (ehs.shape.length !== 3) {
    throw new SdgenError(`${what}: input "encoder_hidden_states" has rank ${ehs.shape.length}; expected 3 [B,S,D]`);
  }
  const tsType = ts.type;
  if (tsType !== 'float32' && tsType !== 'float16' && tsType !== 'int64' && tsType !== 'int32') {
    throw new SdgenError(`${what}: input "${ts.name}" has element type ${tsType}; expected float32, float16 or int64`);
  }
  if (ts.shape.length > 1) throw new SdgenError(`${what}: input "${ts.name}" has rank ${ts.shape.length}; expected a scalar or [B]`);
  const cond = pick(info.inputs, ['timestep_cond']);
  const extra = (n: string): UnetExtraInput | null => {
    const v = pick(info.inputs, [n]);
    if (!v) return null;
    if (v.shape.length !== 2) throw new SdgenError(`${what}: input "${n}" has rank ${v.shape.length}; expected 2 [B, dim]`);
    return { name: v.name, type: floatType(v, what), dim: fixedDim(v.shape[1]) };
  };
  const textEmbeds = extra('text_embeds');
  const timeIds = extra('time_ids');
  if ((textEmbeds === null) !== (timeIds === null)) {
    throw new SdgenError(`${what}: has input "${textEmbeds ? 'text_embeds' : 'time_ids'}" without "${textEmbeds ? 'time_ids' : 'text_embeds'}" (SDXL UNets take both)`);
  }
  const tomeRand: UnetIO['tomeRand'] = [];
  const rands = info.inputs
    .map((v) => ({ v, m: /^tome_rand_(\d+)$/.exec(v.name) }))
    .filter((x) => x.m !== null)
    .sort((a, b) => Number(a.m![1]) - Number(b.m![1]));
  for (const { v } of rands) {
    if (v.type !== 'int64' && v.type !== 'int32') throw new SdgenError(`${what}: input "${v.name}" has element type ${v.type}; expected int64`);
    tomeRand.push({ name: v.name, type: v.type });
  }
  const known = new Set([
    sample.name, ts.name, ehs.name, ...(cond ? [cond.name] : []), ...tomeRand.map((r) => r.name),
    ...(textEmbeds ? [textEmbeds.name] : []), ...(timeIds ? [timeIds.name] : []),
  ]);
  rejectUnknownInputs(info, known, what);
  const out = pick(info.outputs, ['out_sample', 'sample']) ?? info.outputs[0];
  if (!out) throw new SdgenError(`${what}: no outputs`);
  if (cond && cond.shape.length !== 2) throw new SdgenError(`${what}: input "timestep_cond" has rank ${cond.shape.length}; expected 2 [B, dim]`);
  return {
    sample: { name: sample.name, type: floatType(sample, what), dims: sample.shape.map(fixedDim) },
    timestep: {
      name: ts.name,
      type: tsType,
      rank: ts.shape.length === 0 ? 0 : 1,
      length: ts.shape.length === 1 ? fixedDim(ts.shape[0]) : null,
    },
    encoderHiddenStates: { name: ehs.name, type: floatType(ehs, what), dim: fixedDim(ehs.shape[2]) },
    timestepCond: cond ? { name: cond.name, type: floatType(cond, what), dim: fixedDim(cond.shape[1]) } : null,
    textEmbeds,
    timeIds,
    tomeRand,
    output: { name: out.name, type: floatType(out, what) },
  };
}

export function vaeDecoderIO(info: SessionInfo, what = 'vae decoder'): VaeDecoderIO {
  const latent = pick(info.inputs, ['latent_sample', 'latent', 'z']);
  if (!latent) throw new SdgenError(`${what}: no "latent_sample" input (inputs: ${info.inputs.map((v) => v.name).join(', ')})`);
  if (latent.shape.length !== 4) throw new SdgenError(`${what}: input "${latent.name}" has rank ${latent.shape.length}; expected 4`);
  rejectUnknownInputs(info, new Set([latent.name]), what);
  const out = pick(info.outputs, ['sample']) ?? info.outputs[0];
  if (!out) throw new SdgenError(`${what}: no outputs`);
  return { latent: { name: latent.name, type: floatType(latent, what) }, output: { name: out.name, type: floatType(out, what) } };
}
