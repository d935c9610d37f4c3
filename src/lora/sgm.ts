/**
 * SGM (Stability's original SDXL code, `sgm.modules.diffusionmodules.openaimodel.UNetModel`) module
 * names → diffusers module names, for kohya LoRAs trained on the original UNet (pure).
 *
 * kohya's sd-scripts trains SDXL LoRAs on the original UNet, so most SDXL LoRAs name UNet modules
 * `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`, `…_middle_block_1_…`,
 * `…_output_blocks_0_1_…` and ResNet layers `input_blocks_1_0_in_layers_2`. The exported graph
 * carries diffusers' names (`down_blocks.1.attentions.0.…`). Which diffusers block an SGM index
 * is depends on the UNet's topology, as in diffusers 0.27.2 `_maybe_map_sgm_blocks_to_diffusers`:
 *
 * - `input_blocks.0.0` is `conv_in`; `input_blocks.i` (i ≥ 1) runs through the down blocks in
 *   order: each block's layers (`.0` its ResNet, `.1` its transformer), then, for every block but
 *   the last, one entry for its downsampler (`.0.op`). With L layers per block the block is
 *   ⌊(i−1)/(L+1)⌋ and the layer (i−1) mod (L+1), L meaning the downsampler.
 * - `middle_block.0` / `.1` / `.2` are `mid_block.resnets.0`, `attentions.0`, `resnets.1`.
 * - `output_blocks.i` runs through the up blocks (L+1 layers each): `.0` ResNet, `.1` transformer,
 *   and the upsampler after the last layer of each block but the last: `.2.conv` in a block with
 *   transformers. Here sdgen goes beyond diffusers 0.27.2, which always reads `.1` as a transformer:
 *   in an up block without transformers (SD 1.5's first, `UpBlock2D`) the upsampler is `.1.conv`.
 * - inside ResNets: `in_layers.2` → `conv1`, `out_layers.3` → `conv2`, `emb_layers.1` →
 *   `time_emb_proj`, `skip_connection` → `conv_shortcut`; a downsampler's `op` → `conv`.
 * - outside the blocks: `time_embed.0/2` → `time_embedding.linear_1/2`, `label_emb.0.0/0.2` →
 *   `add_embedding.linear_1/2`, `out.2` → `conv_out` (later diffusers versions map these too).
 * Transformer internals (`transformer_blocks_0_attn1_to_q`, `proj_in`, `ff_net_0_proj`) have the
 * same names in both.
 *
 * The layout (layers per block, which blocks have transformers) comes from the UNet's
 * config.json (unetLayoutFromConfig) or, without one, from the module paths of the graph itself
 * (unetLayoutFromPaths).
 */

/** What SGM indices mean for one UNet: per down block its layer count and whether it has transformers. */
export interface UnetLayout {
  /** per down block: ResNet layers */
  downLayers: number[];
  downAttn: boolean[];
  /** per up block (in up order): layers (the down block's count + 1) */
  upLayers: number[];
  upAttn: boolean[];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * The layout of a diffusers UNet2DConditionModel config (`layers_per_block` an integer or a list,
 * `down_block_types`, `up_block_types`); undefined when the config does not say.
 */
export function unetLayoutFromConfig(config: unknown): UnetLayout | undefined {
  if (!isRecord(config)) return undefined;
  const down = config['down_block_types'];
  const up = config['up_block_types'];
  const lpb = config['layers_per_block'];
  if (!Array.isArray(down) || !Array.isArray(up) || down.length === 0 || up.length !== down.length) return undefined;
  if (!down.every((t) => typeof t === 'string') || !up.every((t) => typeof t === 'string')) return undefined;
  let downLayers: number[];
  if (Number.isInteger(lpb) && (lpb as number) > 0) downLayers = down.map(() => lpb as number);
  else if (Array.isArray(lpb) && lpb.length === down.length && lpb.every((n) => Number.isInteger(n) && n > 0)) downLayers = [...(lpb as number[])];
  else return undefined;
  const attn = (t: string): boolean => t.includes('CrossAttn') || t.startsWith('Attn');
  return {
    downLayers,
    downAttn: (down as string[]).map(attn),
    // diffusers: up block i has reversed(layers_per_block)[i] + 1 layers
    upLayers: [...downLayers].reverse().map((n) => n + 1),
    upAttn: (up as string[]).map(attn),
  };
}

/** The layout read off a UNet graph's module paths (`down_blocks.1.resnets.0`, `up_blocks.0.attentions.2`, …). */
export function unetLayoutFromPaths(paths: Iterable<string>): UnetLayout | undefined {
  const layers = { down: new Map<number, number>(), up: new Map<number, number>() };
  const attn = { down: new Set<number>(), up: new Set<number>() };
  for (const p of paths) {
    const m = /^(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\./.exec(p);
    if (!m) continue;
    const side = m[1] as 'down' | 'up';
    const b = Number(m[2]);
    if (m[3] === 'attentions') attn[side].add(b);
    else layers[side].set(b, Math.max(layers[side].get(b) ?? 0, Number(m[4]) + 1));
  }
  const n = layers.down.size;
  if (n === 0 || layers.up.size !== n) return undefined;
  const range = [...Array(n).keys()];
  if (!range.every((b) => layers.down.has(b) && layers.up.has(b))) return undefined;
  return {
    downLayers: range.map((b) => layers.down.get(b)!),
    downAttn: range.map((b) => attn.down.has(b)),
    upLayers: range.map((b) => layers.up.get(b)!),
    upAttn: range.map((b) => attn.up.has(b)),
  };
}

/** Whether a kohya UNet path (underscore-joined) uses SGM names. */
export function isSgmPath(path: string): boolean {
  return /^(input_blocks|middle_block|output_blocks|time_embed|label_emb|out)_\d/.test(path);
}

/** ResNet layer names, SGM → diffusers (underscore-joined). */
const RESNET_LAYERS: Readonly<Record<string, string>> = {
  in_layers_2: 'conv1',
  out_layers_3: 'conv2',
  emb_layers_1: 'time_emb_proj',
  skip_connection: 'conv_shortcut',
};

const OUTSIDE: Readonly<Record<string, string>> = {
  input_blocks_0_0: 'conv_in',
  time_embed_0: 'time_embedding_linear_1',
  time_embed_2: 'time_embedding_linear_2',
  label_emb_0_0: 'add_embedding_linear_1',
  label_emb_0_2: 'add_embedding_linear_2',
  out_2: 'conv_out',
};

function resnet(prefix: string, rest: string): string | undefined {
  const leaf = RESNET_LAYERS[rest];
  return leaf === undefined ? undefined : `${prefix}_${leaf}`;
}

/**
 * The diffusers module path (underscore-joined, as kohya writes it) of an SGM kohya path, or
 * undefined when the path names nothing in a UNet of this layout. Pure.
 */
export function sgmToDiffusers(path: string, layout: UnetLayout): string | undefined {
  const outside = OUTSIDE[path];
  if (outside !== undefined) return outside;
  let m = /^input_blocks_(\d+)_(\d+)_(.+)$/.exec(path);
  if (m) {
    let i = Number(m[1]) - 1;
    const inner = Number(m[2]);
    const rest = m[3]!;
    if (i < 0) return undefined;
    for (let b = 0; b < layout.downLayers.length; b++) {
      const n = layout.downLayers[b]!;
      if (i < n) {
        if (inner === 0) return resnet(`down_blocks_${b}_resnets_${i}`, rest);
        if (inner === 1 && layout.downAttn[b]) return `down_blocks_${b}_attentions_${i}_${rest}`;
        return undefined;
      }
      i -= n;
      if (b === layout.downLayers.length - 1) return undefined; // the last block has no downsampler
      if (i === 0) return inner === 0 && rest === 'op' ? `down_blocks_${b}_downsamplers_0_conv` : undefined;
      i -= 1;
    }
    return undefined;
  }
  m = /^middle_block_(\d+)_(.+)$/.exec(path);
  if (m) {
    const rest = m[2]!;
    if (m[1] === '0') return resnet('mid_block_resnets_0', rest);
    if (m[1] === '1') return `mid_block_attentions_0_${rest}`;
    if (m[1] === '2') return resnet('mid_block_resnets_1', rest);
    return undefined;
  }
  m = /^output_blocks_(\d+)_(\d+)_(.+)$/.exec(path);
  if (m) {
    let i = Number(m[1]);
    const inner = Number(m[2]);
    const rest = m[3]!;
    for (let b = 0; b < layout.upLayers.length; b++) {
      const n = layout.upLayers[b]!;
      if (i < n) {
        const last = i === n - 1 && b < layout.upLayers.length - 1;
        if (inner === 0) return resnet(`up_blocks_${b}_resnets_${i}`, rest);
        const upsampler = last && rest === 'conv' && inner === (layout.upAttn[b] ? 2 : 1);
        if (upsampler) return `up_blocks_${b}_upsamplers_0_conv`;
        if (inner === 1 && layout.upAttn[b]) return `up_blocks_${b}_attentions_${i}_${rest}`;
        return undefined;
      }
      i -= n;
    }
    return undefined;
  }
  return undefined;
}
