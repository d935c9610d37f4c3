/**
 * onnxruntime's own logging, routed through sdgen.
 *
 * onnxruntime-node's native logger writes straight to the process's stderr (ANSI-coloured
 * whether or not stderr is a terminal), before any JavaScript sees the error, and it knows
 * nothing of `-q`, `--no-color` or NO_COLOR. Every failure it logs at error level is also the
 * message of the exception onnxruntime-node throws (a model it cannot load, a shape the UNet
 * cannot take), so sdgen silences the logger and reports that exception as its own one line:
 * condensed by `ortErrorMessage`, in full (as the error's cause) with --verbose.
 *
 * Measured with onnxruntime-node 1.30: the session option `logSeverityLevel` governs both the
 * load-time log ("Exception during initialization: …") and the per-run log of that session
 * (sequential_executor "Non-zero status code returned while running …"), since run options that
 * do not set their own level inherit it; `env.logLevel` governs the process-wide default logger
 * and is read once, when the first session is created. Both are set to fatal.
 *
 * `SDGEN_ORT_LOG=verbose|info|warning|error|fatal` lets onnxruntime's raw log through again, for
 * debugging onnxruntime itself.
 */

export type OrtLogLevel = 'verbose' | 'info' | 'warning' | 'error' | 'fatal';

/** The environment variable that lets onnxruntime's own log through (a level name). */
export const ORT_LOG_ENV = 'SDGEN_ORT_LOG';

const LEVELS: readonly OrtLogLevel[] = ['verbose', 'info', 'warning', 'error', 'fatal'];

/** The level onnxruntime logs at: fatal (nothing sdgen would not report itself) unless SDGEN_ORT_LOG says otherwise. */
export function ortLogLevel(env: NodeJS.ProcessEnv = process.env): OrtLogLevel {
  const v = env[ORT_LOG_ENV]?.trim().toLowerCase();
  return v !== undefined && (LEVELS as readonly string[]).includes(v) ? (v as OrtLogLevel) : 'fatal';
}

/** onnxruntime's numeric severity of a level (0 verbose … 4 fatal). */
export function ortSeverity(level: OrtLogLevel): 0 | 1 | 2 | 3 | 4 {
  return LEVELS.indexOf(level) as 0 | 1 | 2 | 3 | 4;
}

/** The session options that keep a session's own log at the level of `ortLogLevel`. */
export function ortLogOptions(env: NodeJS.ProcessEnv = process.env): { logSeverityLevel: 0 | 1 | 2 | 3 | 4; logVerbosityLevel: number } {
  return { logSeverityLevel: ortSeverity(ortLogLevel(env)), logVerbosityLevel: 0 };
}

/**
 * onnxruntime's exception text, condensed to one line for users (pure): the C++ source
 * locations and signatures (`/onnxruntime_src/…/initializer.cc:79 onnxruntime::Initializer::…(…)`,
 * `tensorprotoutils.cc:1763 GetExtDataFromTensorProto`) and the status prefix
 * (`[ONNXRuntimeError] : 1 : FAIL :`) are dropped, line breaks and runs of spaces become one
 * space. What remains is onnxruntime's own sentence, e.g. "Exception during initialization:
 * External initializer: conv_in.weight offset: 0 size to read: 4608 given file_length: 1000 are
 * out of bounds or can not be read in full."
 */
export function ortErrorMessage(err: unknown): string {
  const raw = err instanceof Error ? err.message : String(err);
  const text = raw
    // an absolute source path with its line, and the C++ signature that follows it
    .replace(/\S*onnxruntime_src\/\S+:\d+\s+(?:[\w:~]+(?:<[^>]*>)?\((?:[^()]|\([^()]*\))*\)\s*)?/g, '')
    .replace(/\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*/g, '')
    // a bare source file with its line and the function name after it
    .replace(/\b[\w-]+\.(?:cc|cpp|h|hpp|cu):\d+\s+[A-Za-z_][\w:~]*\s+/g, '')
    .replace(/\s+/g, ' ')
    .trim();
  return text || raw.replace(/\s+/g, ' ').trim();
}

/** An onnxruntime exception as an Error whose message is `ortErrorMessage`; the original is its cause. */
export function foldOrtError(err: unknown): Error {
  if (!(err instanceof Error)) return new Error(ortErrorMessage(err), { cause: err });
  const short = ortErrorMessage(err);
  if (short === err.message) return err;
  return new Error(short, { cause: err });
}
