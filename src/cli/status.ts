/** `sdgen status DIR [--json] [--merge FILE]`: done / missing / failed per shard and overall. */
import path from 'node:path';
import { dirStatus, writeMergedManifest, type PartStatus, type RunStatus } from '../run/status.js';
import type { UiOptions } from './ui.js';

function counts(p: { done: number; failed: number; missing: number }, planned: number): string {
  return `${p.done}/${planned} done, ${p.missing} missing, ${p.failed} failed`;
}

function partLine(p: PartStatus): string {
  const label = p.shard === null ? 'run' : `shard ${p.shard}`;
  const torn = p.badLines > 0 ? ` (${p.badLines} torn manifest line${p.badLines === 1 ? '' : 's'} ignored)` : '';
  return `  ${label.padEnd(14)} ${p.started ? counts(p, p.planned) : `not started, ${p.missing} missing`}${torn}`;
}

function runLines(r: RunStatus): string[] {
  const head = `run ${r.plan}${r.shards ? `, ${r.shards} shard${r.shards === 1 ? '' : 's'}` : ''}: ${counts(r, r.total)} (since ${r.created})`;
  return r.shards ? [head, ...r.parts.map(partLine)] : [head];
}

export async function cmdStatus(dirArg: string, opts: UiOptions & { merge?: string }): Promise<number> {
  const dir = path.resolve(dirArg);
  const { status, records } = dirStatus(dir);
  if (opts.merge !== undefined) writeMergedManifest(path.resolve(opts.merge), records);
  if (opts.json) {
    process.stdout.write(JSON.stringify({ ...status, merged: opts.merge !== undefined ? path.resolve(opts.merge) : undefined }) + '\n');
    return 0;
  }
  const lines: string[] = [];
  for (const r of status.runs) lines.push(...runLines(r));
  lines.push(`overall: ${counts(status, status.total)}`);
  if (opts.merge !== undefined) lines.push(`merged manifest: ${records.length} records → ${opts.merge}`);
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}
