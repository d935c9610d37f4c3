/** ToMe options, with tomesd / the A1111 extension's meanings. */
export interface ToMeOptions {
  /** Fraction of tokens merged; 0 = off. Valid: 0 ≤ ratio ≤ 1 − 1/(sx·sy). */
  ratio: number;
  sx: number;
  sy: number;
  /** 1 | 2 | 4 | 8 */
  maxDownsample: number;
  /** Random destination per cell (forced off at runtime for odd batch sizes). */
  useRand: boolean;
  mergeAttn: boolean;
  mergeCrossattn: boolean;
  mergeMlp: boolean;
  /** ToMe only when the output image (pixels) is at least this wide and high. */
  minWidth: number;
  minHeight: number;
}

export const DEFAULT_TOME: Readonly<ToMeOptions> = Object.freeze({
  ratio: 0,
  sx: 2,
  sy: 2,
  maxDownsample: 1,
  useRand: false,
  mergeAttn: true,
  mergeCrossattn: false,
  mergeMlp: false,
  minWidth: 0,
  minHeight: 0,
});
