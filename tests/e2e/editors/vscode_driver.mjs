// Drives VS Code (code-server in Debian's Chromium, through playwright-core) like a person:
// opens a file, types until the DG-LSP extension shows an inline suggestion, reads the ghost
// text from the DOM, accepts it with Tab, saves; selects lines, runs "DG: Rewrite Selection",
// accepts the proposal from the notification, saves. Writes what it saw to a JSON file; the
// pytest side (test_editor_vscode.py) makes the assertions.
//
//   node vscode_driver.mjs config.json
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const out = { steps: [], errors: [] };
const T0 = Date.now();
const step = (name, data = {}) => {
  out.steps.push({ name, ms: Date.now() - T0, ...data });
  console.log(`[vscode-driver] ${((Date.now() - T0) / 1000).toFixed(1)}s ${name}`);
};
const save = () => fs.writeFileSync(cfg.result, JSON.stringify(out, null, 2));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function logEvents() {
  if (!fs.existsSync(cfg.testLog)) return [];
  return fs
    .readFileSync(cfg.testLog, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
}

async function waitFor(what, fn, timeoutMs, intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(intervalMs);
  }
}

async function shot(page, name) {
  const p = path.join(cfg.artifacts, `${name}.png`);
  await page.screenshot({ path: p });
  return p;
}

// Ghost text of the focused editor: the inline part on the cursor line plus the lines of the
// ghost-text view zone below it.
async function readGhost(page) {
  return page.evaluate(() => {
    const ed = document.querySelector('.monaco-editor.focused') || document.querySelector('.editor-instance .monaco-editor');
    if (!ed) return null;
    const norm = (s) => (s || '').replace(/\u00a0/g, ' ');
    const inline = [...ed.querySelectorAll('.view-lines [class*="ghost-text-decoration"]')]
      .filter((e) => !e.className.includes('preview'))
      .map((e) => norm(e.textContent));
    const zone = [...ed.querySelectorAll('.ghost-text .view-line')].map((e) => norm(e.textContent));
    if (inline.length === 0 && zone.length === 0) return null;
    return {
      inline,
      zone,
      text: [inline.join(''), ...zone].join('\n'),
      classes: [...new Set([...ed.querySelectorAll('[class*="ghost"]')].map((e) => e.className))],
    };
  });
}

async function runCommand(page, title) {
  await page.keyboard.press('F1');
  await page.waitForSelector('.quick-input-widget input', { state: 'visible' });
  await page.keyboard.type(title);
  await page.waitForSelector(`.quick-input-list .monaco-list-row:has-text("${title.replace(/^.*?: /, '')}")`, { timeout: 15000 });
  await page.keyboard.press('Enter');
}

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  page.setDefaultTimeout(30000);
  await page.goto(cfg.url);
  await page.waitForSelector('.monaco-workbench', { timeout: 90000 });
  step('workbench');

  // Open the file with Quick Open.
  await waitFor('quick open', async () => {
    await page.keyboard.press('Control+P');
    try {
      await page.waitForSelector('.quick-input-widget input', { state: 'visible', timeout: 3000 });
      return true;
    } catch {
      return false;
    }
  }, 30000);
  await page.keyboard.type(cfg.fileName);
  await page.waitForSelector(`.quick-input-list .monaco-list-row:has-text("${cfg.fileName}")`);
  await page.keyboard.press('Enter');
  await page.waitForSelector('.editor-instance .monaco-editor .view-lines');
  step('file open');

  // The extension activates on Python, starts the server and reports the model in the status bar.
  await waitFor('the model to load', () => logEvents().some((e) => e.event === 'info' && e.status === 'ready'), cfg.readyTimeoutMs, 250);
  out.statusBar = await waitFor(
    'the status bar item',
    async () => (await page.locator('.statusbar-item', { hasText: 'DG:' }).allInnerTexts()).find((t) => / · /.test(t) && !/loading|starting/.test(t)),
    30000,
  );
  step('model ready', { statusBar: out.statusBar });

  // Type at the end of the file until a suggestion is shown.
  await page.click('.editor-instance .monaco-editor .view-lines');
  await page.keyboard.press('Control+End');
  const line = cfg.lastLine;
  let typed = '';
  let ghost = null;
  let entry = null;
  for (const ch of cfg.typeText) {
    const seen = logEvents().length;
    await page.keyboard.type(ch);
    typed += ch;
    const ev = await waitFor(
      `an inline completion at ${line}:${typed.length}`,
      () =>
        logEvents()
          .slice(seen)
          .find(
            (e) =>
              (e.event === 'inlineCompletion' && !e.cancelled && e.position.line === line && e.position.character === typed.length) ||
              e.event === 'inlineCompletionError',
          ),
      cfg.completionTimeoutMs,
    );
    if (ev.event === 'inlineCompletionError') throw new Error(`inline completion failed: ${ev.message}`);
    if (!ev.items.some((i) => i.insertText)) continue;
    try {
      ghost = await waitFor('ghost text', () => readGhost(page), 10000);
      entry = ev;
      break;
    } catch {
      // VS Code chose not to show it (or it was superseded): type on.
    }
  }
  if (!ghost) throw new Error(`no inline suggestion shown after typing ${JSON.stringify(typed)}`);
  // Let the rendering settle, then read again.
  await sleep(300);
  ghost = (await readGhost(page)) || ghost;
  out.ghost = { typed, dom: ghost, entry };
  out.screenshots = { ghost: await shot(page, 'vscode-ghost-text') };
  step('ghost text', { text: ghost.text });

  // Accept with Tab and save.
  const before = fs.readFileSync(cfg.filePath, 'utf8');
  await page.keyboard.press('Tab');
  await sleep(300);
  await page.keyboard.press('Control+S');
  out.afterAccept = await waitFor('the saved file', () => {
    const now = fs.readFileSync(cfg.filePath, 'utf8');
    return now !== before ? now : null;
  }, 15000);
  step('accepted and saved');

  // The keystrokes' edits reached the server before VS Code asked: the server prefetched prompts for them.
  {
    const seen = logEvents().length;
    await runCommand(page, 'DG: Show Model Info');
    const info = await waitFor('dg.info after typing', () => logEvents().slice(seen).find((e) => e.event === 'info' && e.prefetch), 15000);
    out.prefetch = info.prefetch;
    step('prefetch counters', out.prefetch);
    await runCommand(page, 'Notifications: Clear All Notifications'); // the info toast must not cover the editor
  }

  // Rewrite: select whole lines, run the command, accept from the notification.
  await page.keyboard.press('Escape');
  await page.keyboard.press('Control+G');
  await page.waitForSelector('.quick-input-widget input', { state: 'visible' });
  await page.keyboard.type(String(cfg.rewrite.line));
  await page.keyboard.press('Enter');
  await sleep(200);
  for (let i = 0; i < cfg.rewrite.lines; i++) await page.keyboard.press('Shift+ArrowDown');
  const seen = logEvents().length;
  await runCommand(page, 'DG: Rewrite Selection');
  step('rewrite requested');
  const proposal = await waitFor(
    'the rewrite proposal',
    () => logEvents().slice(seen).find((e) => e.event === 'rewriteProposal'),
    cfg.rewriteTimeoutMs,
  );
  out.rewrite = { proposal: proposal.result };
  await page.waitForSelector('.monaco-diff-editor', { state: 'visible' });
  const accept = page.locator('.notifications-toasts .notification-toast .monaco-button', { hasText: 'Accept' });
  await accept.first().waitFor({ state: 'visible' });
  await sleep(500);
  out.screenshots.rewrite = await shot(page, 'vscode-rewrite-diff');
  out.rewrite.diffEditorTitle = await page.locator('.tabs-container .tab.active').first().innerText();
  step('diff preview');
  const savedBefore = fs.readFileSync(cfg.filePath, 'utf8');
  await accept.first().click();
  const applied = await waitFor('the rewrite to apply', () => logEvents().slice(seen).find((e) => e.event === 'rewriteApplied' || e.event === 'rewriteStale'), 15000);
  out.rewrite.applied = applied;
  await waitFor('the diff editor to close', async () => (await page.locator('.monaco-diff-editor').count()) === 0, 10000);
  await page.click('.editor-instance .monaco-editor .view-lines');
  await page.keyboard.press('Control+S');
  out.afterRewrite = await waitFor('the saved rewrite', () => {
    const now = fs.readFileSync(cfg.filePath, 'utf8');
    return now !== savedBefore ? now : null;
  }, 15000);
  out.screenshots.afterRewrite = await shot(page, 'vscode-after-rewrite');
  step('rewrite accepted and saved');
  out.ok = true;
} catch (e) {
  out.errors.push(String(e && e.stack ? e.stack : e));
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages[0]) await pages[0].screenshot({ path: path.join(cfg.artifacts, 'vscode-failure.png') });
  } catch {
    // ignore
  }
} finally {
  save();
  await browser.close();
}
process.exit(out.ok ? 0 : 1);
