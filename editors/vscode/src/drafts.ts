// dg/draft notifications: progress in the status bar, and a final draft for the cursor
// position that VS Code stopped waiting for is cached and shown by re-triggering the inline
// suggestion (answered from the cache, without a second denoising run).
import * as vscode from 'vscode';
import { LanguageClient } from 'vscode-languageclient/node';
import { DraftParams } from './protocol';
import { StatusBar } from './status';
import { retriggerOnFinalDraft } from './settings';
import { testLog } from './testlog';

interface Cached {
  uri: string;
  version: number;
  position: vscode.Position;
  item: vscode.InlineCompletionItem;
}

export interface Inflight {
  uri: string;
  version: number;
  position: vscode.Position;
  token: vscode.CancellationToken;
}

export class Drafts {
  private cached: Cached | undefined;
  /** The inline completion request VS Code is currently waiting for, if any. */
  inflight: Inflight | undefined;

  constructor(private readonly client: () => LanguageClient | undefined, private readonly status: StatusBar) {}

  onDraft(p: DraftParams): void {
    const editor = vscode.window.activeTextEditor;
    const client = this.client();
    if (!editor || !client) {
      return;
    }
    const doc = editor.document;
    if (client.code2ProtocolConverter.asUri(doc.uri) !== p.uri || doc.version !== p.version) {
      return; // another document, or an older version of this one
    }
    this.status.setProgress(p.step, p.maxSteps, p.final);
    testLog('draft', { requestId: p.requestId, version: p.version, step: p.step, maxSteps: p.maxSteps, final: p.final });
    if (!p.final || !retriggerOnFinalDraft()) {
      return;
    }
    const range = client.protocol2CodeConverter.asRange(p.range);
    const cursor = editor.selection.active;
    if (!editor.selection.isEmpty || !range.start.isEqual(cursor) || p.text === '') {
      return;
    }
    const waiting = this.inflight;
    if (waiting && waiting.uri === p.uri && waiting.version === p.version && waiting.position.isEqual(cursor)
      && !waiting.token.isCancellationRequested) {
      return; // the live request will deliver it
    }
    this.cached = { uri: p.uri, version: p.version, position: cursor, item: new vscode.InlineCompletionItem(p.text, range) };
    void vscode.commands.executeCommand('editor.action.inlineSuggest.trigger');
  }

  /** A cached final draft for exactly this document version and position (consumed). */
  take(uri: string, version: number, position: vscode.Position): vscode.InlineCompletionItem | undefined {
    const c = this.cached;
    if (c && c.uri === uri && c.version === version && c.position.isEqual(position)) {
      this.cached = undefined;
      return c.item;
    }
    if (c && (c.uri !== uri || c.version !== version)) {
      this.cached = undefined;
    }
    return undefined;
  }
}
