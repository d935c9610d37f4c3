/** Public API of the text stage: CLIP tokenizer, loading, A1111 prompt syntax, chunking. */
export type { Tokenizer } from './types.js';
export { ClipTokenizer, START_TOKEN, END_TOKEN } from './clip-tokenizer.js';
export type { ClipTokenizerData, ClipTokenizerOptions, TokenizeDetail } from './clip-tokenizer.js';
export { loadTokenizer, parseMerges } from './load.js';
export { cleanText } from './clean.js';
export { fixText } from './ftfy.js';
export { htmlUnescape } from './html-entities.js';
export { parsePromptAttention, parsePrompt, isBreak, BREAK_WEIGHT } from './prompt-parser.js';
export type { WeightedText, ParseOptions } from './prompt-parser.js';
export {
  tokenizeChunks,
  padChunks,
  emptyChunk,
  applyEmphasis,
  CHUNK_LENGTH,
  DEFAULT_COMMA_BACKTRACK,
} from './chunks.js';
export type { PromptChunk, ChunkedPrompt, ChunkOptions, ChunkSpecialIds } from './chunks.js';
export { generateTinyVocab, tinyVocabWords } from './tiny-vocab.js';
export type { TinyVocab } from './tiny-vocab.js';
