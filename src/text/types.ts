/** The CLIP tokenizer contract used by the pipeline. */
export interface Tokenizer {
  readonly bosId: number; // <|startoftext|>
  readonly eosId: number; // <|endoftext|>
  readonly padId: number; // from tokenizer_config / special_tokens_map
  readonly maxLength: number; // 77
  /** BPE ids of the text, without start/end tokens, not truncated. */
  encode(text: string): number[];
  /** start + ids + end, padded with padId / truncated to maxLength with end last. */
  encodePadded(text: string): number[];
  decode(ids: readonly number[]): string;
}
