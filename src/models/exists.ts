/** Whether a path exists (anything `stat` reaches: file, folder, or a link to one). */
import { stat } from 'node:fs/promises';

export async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}
