// DG-LSP for VS Code: starts `dg-lsp serve`, provides inline completions through the LSP 3.18
// inlineCompletion feature of vscode-languageclient, reflects dg/draft progress, and offers
// "DG: Rewrite Selection" with a diff preview.
import * as vscode from 'vscode';
import {
  CloseAction,
  DidChangeConfigurationNotification,
  ErrorAction,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
} from 'vscode-languageclient/node';
import { Drafts } from './drafts';
import { DraftNotification, INFO_COMMAND, InfoResult, REWRITE_COMMAND } from './protocol';
import { Rewriter } from './rewrite';
import * as settings from './settings';
import { StatusBar } from './status';
import { testLog } from './testlog';

let client: LanguageClient | undefined;
let status: StatusBar;
let drafts: Drafts;
let rewriter: Rewriter;
let log: vscode.LogOutputChannel;
let infoTimer: NodeJS.Timeout | undefined;

/** For tests and other extensions. */
export interface DgLspApi {
  client(): LanguageClient | undefined;
  lastLatencyMs(): number | undefined;
}
let lastLatency: number | undefined;

function isCancel(e: unknown): boolean {
  return e instanceof vscode.CancellationError || (e as { code?: number } | undefined)?.code === -32800;
}

async function refreshInfo(): Promise<InfoResult | undefined> {
  if (!client || client.state !== State.Running) {
    return undefined;
  }
  try {
    const info = (await client.sendRequest(ExecuteCommandRequest.type, { command: INFO_COMMAND, arguments: [] })) as InfoResult;
    status.setInfo(info);
    testLog('info', { status: info.status, model: info.model, device: info.device, prefetch: info.prefetch ?? null });
    return info;
  } catch (e) {
    log.warn(`dg.info failed: ${String(e)}`);
    return undefined;
  }
}

/** Poll dg.info until the model is loaded (or failed). */
function pollInfo(): void {
  if (infoTimer) {
    clearTimeout(infoTimer);
  }
  let tries = 0;
  const tick = async () => {
    const info = await refreshInfo();
    tries += 1;
    if ((!info || info.status === 'loading') && tries < 600 && client?.state === State.Running) {
      infoTimer = setTimeout(tick, 1000);
    }
  };
  void tick();
}

function clientOptions(): LanguageClientOptions {
  const selector = settings.languages().flatMap((language) => [
    { scheme: 'file', language },
    { scheme: 'untitled', language },
  ]);
  return {
    documentSelector: selector,
    initializationOptions: settings.initOptions(),
    outputChannel: log,
    errorHandler: {
      error: () => ({ action: ErrorAction.Continue }),
      closed: () => {
        status.setState('stopped');
        return { action: CloseAction.DoNotRestart };
      },
    },
    middleware: {
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        const c = client;
        if (!c) {
          return null;
        }
        const uri = c.code2ProtocolConverter.asUri(document.uri);
        const cached = drafts.take(uri, document.version, position);
        if (cached) {
          return new vscode.InlineCompletionList([cached]);
        }
        const t0 = Date.now();
        const mine = { uri, version: document.version, position, token };
        drafts.inflight = mine;
        try {
          const result = await next(document, position, context, token);
          if (!token.isCancellationRequested) {
            lastLatency = Date.now() - t0;
            status.setLatency(lastLatency);
          }
          const items = !result ? [] : Array.isArray(result) ? result : result.items;
          testLog('inlineCompletion', {
            uri,
            version: document.version,
            position: { line: position.line, character: position.character },
            cancelled: token.isCancellationRequested,
            latencyMs: Date.now() - t0,
            items: items.map((i) => ({
              insertText: typeof i.insertText === 'string' ? i.insertText : i.insertText.value,
              range: i.range && {
                start: { line: i.range.start.line, character: i.range.start.character },
                end: { line: i.range.end.line, character: i.range.end.character },
              },
            })),
          });
          return result;
        } catch (e) {
          if (isCancel(e)) {
            return null;
          }
          testLog('inlineCompletionError', { uri, version: document.version, message: String((e as Error).message ?? e) });
          throw e;
        } finally {
          if (drafts.inflight === mine) {
            drafts.inflight = undefined;
          }
        }
      },
      provideCodeActions: async (document, range, context, token, next) => {
        const actions = await next(document, range, context, token);
        if (!actions) {
          return actions;
        }
        // Route the server's rewrite action through the diff preview.
        for (const a of actions) {
          const cmd = a instanceof vscode.CodeAction ? a.command : (a as vscode.Command);
          if (cmd && cmd.command === REWRITE_COMMAND && client) {
            const args = cmd.arguments ?? [];
            const r = args[1] ? client.protocol2CodeConverter.asRange(args[1]) : range;
            cmd.command = 'dgLsp.rewriteRange';
            cmd.arguments = [document.uri, r];
          }
        }
        return actions;
      },
    },
  };
}

async function startClient(): Promise<void> {
  const cmd = settings.serverCommand();
  log.info(`starting: ${cmd.command} ${cmd.args.join(' ')}`);
  const serverOptions: ServerOptions = {
    command: cmd.command,
    args: cmd.args,
    // stdio without `transport`: a transport would append `--stdio` to the command line.
    options: { env: process.env },
  };
  const c = new LanguageClient('dgLsp', 'DG-LSP', serverOptions, clientOptions());
  client = c;
  c.onNotification(DraftNotification, (p) => drafts.onDraft(p));
  let everRan = false;
  c.onDidChangeState((e) => {
    if (client !== c) {
      return;
    }
    if (e.newState === State.Running) {
      everRan = true;
      status.setState('running');
    } else if (e.newState === State.Stopped) {
      status.setState(everRan ? 'stopped' : 'error');
    }
  });
  status.setInfo(undefined);
  status.setState('starting');
  try {
    await c.start();
  } catch (e) {
    status.setState('error');
    log.error(`could not start the server: ${String(e)}`);
    void vscode.window.showErrorMessage(
      `DG: could not start the server (${cmd.command}). Set dgLsp.serverCommand or dgLsp.pythonPath.`,
    );
    return;
  }
  status.setState('running');
  pollInfo();
}

async function stopClient(): Promise<void> {
  if (infoTimer) {
    clearTimeout(infoTimer);
    infoTimer = undefined;
  }
  const c = client;
  client = undefined;
  if (c) {
    try {
      await c.stop(2000);
    } catch (e) {
      log.warn(`stop: ${String(e)}`);
    }
  }
  status.setState('stopped');
}

export async function activate(context: vscode.ExtensionContext): Promise<DgLspApi> {
  log = vscode.window.createOutputChannel('DG-LSP', { log: true });
  status = new StatusBar();
  drafts = new Drafts(() => client, status);
  rewriter = new Rewriter(() => client, log);
  await vscode.commands.executeCommand('setContext', 'dgLsp.active', true);
  context.subscriptions.push(
    log,
    status,
    rewriter,
    vscode.commands.registerCommand('dgLsp.rewriteSelection', () => rewriter.rewrite()),
    vscode.commands.registerCommand('dgLsp.rewriteRange', (uri: vscode.Uri, range: vscode.Range) => rewriter.rewrite({ uri, range })),
    vscode.commands.registerCommand('dgLsp.acceptRewrite', () => rewriter.accept()),
    vscode.commands.registerCommand('dgLsp.rejectRewrite', () => rewriter.reject()),
    vscode.commands.registerCommand('dgLsp.restartServer', async () => {
      await stopClient();
      await startClient();
    }),
    vscode.commands.registerCommand('dgLsp.showInfo', async () => {
      const t0 = Date.now();
      const info = await refreshInfo();
      if (!info) {
        void vscode.window.showWarningMessage('DG: the server did not answer dg.info');
        return;
      }
      const ms = Date.now() - t0;
      void vscode.window.showInformationMessage(
        `DG: ${info.model ?? '?'} (${info.modelPath ?? '?'}) on ${info.device ?? '?'}/${info.dtype ?? '?'}, ` +
          `status ${info.status ?? '?'}${info.error ? ` (${info.error})` : ''}; dg.info round trip ${ms} ms`,
      );
    }),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration('dgLsp')) {
        return;
      }
      if (settings.RESTART_KEYS.some((k) => e.affectsConfiguration(k))) {
        await stopClient();
        await startClient();
        return;
      }
      if (client && client.state === State.Running) {
        await client.sendNotification(DidChangeConfigurationNotification.type, {
          settings: { dgLsp: settings.initOptions() },
        });
        pollInfo();
      }
    }),
    vscode.window.onDidChangeTextEditorSelection(() => status.clearProgress()),
  );
  await startClient();
  return { client: () => client, lastLatencyMs: () => lastLatency };
}

export async function deactivate(): Promise<void> {
  await stopClient();
}
