// Optional JSON-lines log of what the extension received from the server, for end-to-end tests
// (enabled by the DG_LSP_TEST_LOG environment variable of the VS Code / code-server process).
import * as fs from 'fs';

const path = process.env.DG_LSP_TEST_LOG;

export function testLog(event: string, data: Record<string, unknown>): void {
  if (!path) {
    return;
  }
  try {
    fs.appendFileSync(path, JSON.stringify({ event, time: Date.now(), ...data }) + '\n');
  } catch {
    // never let test logging break the extension
  }
}
