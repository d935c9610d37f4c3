/**
 * Runs one benchmark job in a child process of its own, watching its RSS: a child that grows
 * past the memory limit is killed (reported, not fatal) before it can take the machine down.
 */
import { fork } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { processRss, fmtGB } from './memory.js';
import type { JobResult, WorkerJob, WorkerReply } from './jobs.js';

export type ChildOutcome =
  | { ok: true; result: JobResult; peakRss: number }
  | { ok: false; error: string; peakRss?: number; killed?: boolean };

/** The worker entry: compiled JS beside this module, else the TypeScript source through tsx. */
function workerEntry(): { file: string; execArgv: string[] } {
  const js = fileURLToPath(new URL('./worker.js', import.meta.url));
  if (existsSync(js)) return { file: js, execArgv: [] };
  const ts = fileURLToPath(new URL('./worker.ts', import.meta.url));
  const argv = process.execArgv.some((a) => a.includes('tsx')) ? process.execArgv : ['--import', 'tsx'];
  return { file: ts, execArgv: argv };
}

export function runInChild(job: WorkerJob, opts: { memoryLimit: number; timeoutMs?: number }): Promise<ChildOutcome> {
  const { file, execArgv } = workerEntry();
  return new Promise((resolve) => {
    const child = fork(file, [], { execArgv, serialization: 'advanced', stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    let peak = 0;
    let killed = false;
    let settled = false;
    const finish = (o: ChildOutcome): void => {
      if (settled) return;
      settled = true;
      clearInterval(watch);
      if (timer) clearTimeout(timer);
      resolve(o);
    };
    const watch = setInterval(() => {
      if (child.pid === undefined) return;
      const rss = processRss(child.pid);
      if (rss === undefined) return;
      peak = Math.max(peak, rss);
      if (rss > opts.memoryLimit && !killed) {
        killed = true;
        child.kill('SIGKILL');
      }
    }, 100);
    const timer = opts.timeoutMs
      ? setTimeout(() => {
          child.kill('SIGKILL');
          finish({ ok: false, error: `timed out after ${(opts.timeoutMs! / 1000).toFixed(0)} s`, peakRss: peak });
        }, opts.timeoutMs)
      : undefined;
    child.on('message', (reply: WorkerReply) => {
      if (reply.ok) finish({ ok: true, result: reply.result, peakRss: Math.max(peak, reply.result.maxRss) });
      else finish({ ok: false, error: reply.error, peakRss: Math.max(peak, reply.maxRss) });
    });
    child.on('exit', (code, signal) => {
      if (killed) {
        finish({ ok: false, killed: true, peakRss: peak, error: `killed at ${fmtGB(peak)} GB RSS (memory limit ${fmtGB(opts.memoryLimit)} GB)` });
      } else {
        const last = stderr.trim().split('\n').slice(-3).join(' | ');
        finish({ ok: false, peakRss: peak, error: `worker exited (${signal ?? `code ${code}`})${last ? `: ${last}` : ''}` });
      }
    });
    child.send(job);
  });
}
