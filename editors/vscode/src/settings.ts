// Reading the dgLsp.* settings: the server command line and the initializationOptions.
import * as os from 'os';
import * as path from 'path';
import * as vscode from 'vscode';

export interface ServerCommand {
  command: string;
  args: string[];
}

function expand(value: string): string {
  let v = value;
  const folder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath ?? '';
  v = v.replace(/\$\{workspaceFolder\}/g, folder).replace(/\$\{userHome\}/g, os.homedir());
  if (v === '~' || v.startsWith('~/')) {
    v = path.join(os.homedir(), v.slice(1));
  }
  return v;
}

function cfg(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration('dgLsp');
}

export function model(): string | undefined {
  const m = cfg().get<string | null>('model');
  return m ? expand(m) : undefined;
}

/** The command that starts the server (`dg-lsp serve` or `python -m dg_lsp serve`). */
export function serverCommand(): ServerCommand {
  const c = cfg();
  const extra: string[] = [];
  const m = model();
  if (m) {
    extra.push('--model', m);
  }
  const log = c.get<string>('logFile');
  if (log) {
    extra.push('--log-file', expand(log));
  }
  const explicit = (c.get<string[]>('serverCommand') ?? []).filter((s) => s !== '').map(expand);
  if (explicit.length > 0) {
    return { command: explicit[0], args: [...explicit.slice(1), ...extra] };
  }
  const python = c.get<string>('pythonPath');
  if (python) {
    return { command: expand(python), args: ['-m', 'dg_lsp', 'serve', ...extra] };
  }
  return { command: 'dg-lsp', args: ['serve', ...extra] };
}

function pick(c: vscode.WorkspaceConfiguration, section: string, keys: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of keys) {
    const v = c.get<unknown>(`${section}.${k}`);
    if (v !== null && v !== undefined) {
      out[k] = v;
    }
  }
  return out;
}

/** initializationOptions, also sent as `{settings: {dgLsp: ...}}` on configuration changes. */
export function initOptions(): Record<string, unknown> {
  const c = cfg();
  const init: Record<string, unknown> = {};
  const m = model();
  if (m) {
    init.model = m;
  }
  const device = c.get<string>('device');
  if (device) {
    init.device = device;
  }
  const promptFormat = c.get<string>('promptFormat');
  if (promptFormat && promptFormat !== 'auto') {
    init.promptFormat = promptFormat;
  }
  const completion = pick(c, 'completion', ['maxSteps', 'contextTokens', 'draftIntervalMs', 'parseCheck', 'prefetch', 'speculate', 'seed']);
  if (Object.keys(completion).length > 0) {
    init.completion = completion;
  }
  const engine = pick(c, 'engine', ['kind', 'url', 'tokenFile', 'dialect', 'model', 'fimTemplate']);
  if (engine.kind === 'remote') {
    init.engine = engine;
  }
  const rewrite = pick(c, 'rewrite', ['maxSteps', 'noise']);
  if (Object.keys(rewrite).length > 0) {
    init.rewrite = rewrite;
  }
  return init;
}

export function languages(): string[] {
  return cfg().get<string[]>('languages') ?? [];
}

export function retriggerOnFinalDraft(): boolean {
  return cfg().get<boolean>('retriggerOnFinalDraft') ?? true;
}

/** Settings whose change needs a server restart (the rest go through didChangeConfiguration). */
export const RESTART_KEYS = ['dgLsp.serverCommand', 'dgLsp.pythonPath', 'dgLsp.logFile', 'dgLsp.languages'];
