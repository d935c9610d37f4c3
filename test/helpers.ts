/** Helpers shared by the test files (not a test file itself). */
export { generationParams } from '../src/pipeline/params.js';
