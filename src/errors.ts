/**
 * Errors that end a run with one clear line (no stack trace unless --verbose).
 * UsageError → exit code 2 (bad flags, bad values); SdgenError → exit code 1 (runtime: missing
 * model, bad ONNX, unwritable output, ...). Anything else is a bug and prints its stack.
 */
export class SdgenError extends Error {
  readonly exitCode: number = 1;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SdgenError';
  }
}

export class UsageError extends SdgenError {
  override readonly exitCode: number = 2;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UsageError';
  }
}
