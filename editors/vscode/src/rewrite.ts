// "DG: Rewrite Selection": dg.rewriteSelection with apply=false, a diff preview
// (vscode.diff of the document against a virtual document holding the proposal) and
// Accept/Reject. The edit is applied only while the document is at the proposal's version.
import * as path from 'path';
import * as vscode from 'vscode';
import { ExecuteCommandRequest, LanguageClient } from 'vscode-languageclient/node';
import { REWRITE_COMMAND, RewriteResult } from './protocol';
import { testLog } from './testlog';

export const PROPOSAL_SCHEME = 'dg-rewrite';

interface Pending {
  document: vscode.TextDocument;
  result: RewriteResult;
  proposalUri: vscode.Uri;
}

export class Rewriter implements vscode.TextDocumentContentProvider, vscode.Disposable {
  private readonly contents = new Map<string, string>();
  private readonly changed = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.changed.event;
  private pending: Pending | undefined;
  private counter = 0;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(private readonly client: () => LanguageClient | undefined, private readonly log: vscode.LogOutputChannel) {
    this.disposables.push(
      vscode.workspace.registerTextDocumentContentProvider(PROPOSAL_SCHEME, this),
      vscode.workspace.onDidChangeTextDocument((e) => {
        if (this.pending && e.document === this.pending.document && e.contentChanges.length > 0
          && e.document.version !== this.pending.result.version) {
          void this.reject('the document changed; rewrite proposal dropped');
        }
      }),
    );
  }

  provideTextDocumentContent(uri: vscode.Uri): string {
    return this.contents.get(uri.toString()) ?? '';
  }

  /** Rewrite the selection of `editor` (or the given range of `uri`, from a code action). */
  async rewrite(target?: { uri: vscode.Uri; range: vscode.Range }): Promise<void> {
    const client = this.client();
    if (!client) {
      void vscode.window.showWarningMessage('DG: the server is not running');
      return;
    }
    let document: vscode.TextDocument;
    let range: vscode.Range;
    if (target) {
      document = await vscode.workspace.openTextDocument(target.uri);
      range = target.range;
    } else {
      const editor = vscode.window.activeTextEditor;
      if (!editor) {
        return;
      }
      document = editor.document;
      range = editor.selection.isEmpty ? document.lineAt(editor.selection.active.line).range : editor.selection;
    }
    if (range.isEmpty) {
      void vscode.window.showInformationMessage('DG: select the code to rewrite');
      return;
    }
    await this.reject();
    const version = document.version;
    const params = {
      command: REWRITE_COMMAND,
      arguments: [client.code2ProtocolConverter.asUri(document.uri), client.code2ProtocolConverter.asRange(range), { apply: false }],
    };
    let result: RewriteResult | null;
    try {
      result = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: 'DG: rewriting selection…', cancellable: true },
        (_progress, token) => client.sendRequest(ExecuteCommandRequest.type, params, token) as Promise<RewriteResult | null>,
      );
    } catch (e) {
      if (e instanceof vscode.CancellationError || (e as { code?: number }).code === -32800) {
        return;
      }
      this.log.error(`rewrite failed: ${String(e)}`);
      void vscode.window.showErrorMessage(`DG: rewrite failed: ${(e as Error).message ?? String(e)}`);
      return;
    }
    if (!result || typeof result.text !== 'string') {
      const why = result?.error;
      void vscode.window.showInformationMessage(`DG: no rewrite proposal${why ? ` (${why})` : ''}`);
      return;
    }
    if (document.version !== version || document.version !== result.version) {
      void vscode.window.showWarningMessage('DG: the document changed while rewriting; proposal dropped');
      return;
    }
    const r = client.protocol2CodeConverter.asRange(result.range);
    const text = document.getText();
    const proposal = text.slice(0, document.offsetAt(r.start)) + result.text + text.slice(document.offsetAt(r.end));
    testLog('rewriteProposal', { result, documentVersion: document.version });
    this.log.info(`rewrite proposal for ${document.uri.toString()} v${result.version}: ${JSON.stringify(result.text)}`);
    const proposalUri = vscode.Uri.from({
      scheme: PROPOSAL_SCHEME,
      path: document.uri.path,
      query: `proposal=${++this.counter}`,
    });
    this.contents.set(proposalUri.toString(), proposal);
    this.pending = { document, result, proposalUri };
    await vscode.commands.executeCommand('setContext', 'dgLsp.rewritePending', true);
    const title = `${path.basename(document.uri.path)} ↔ DG rewrite proposal`;
    await vscode.commands.executeCommand('vscode.diff', document.uri, proposalUri, title, { preview: true });
    const me = this.pending;
    const choice = await vscode.window.showInformationMessage('DG: apply the rewrite proposal?', 'Accept', 'Reject');
    if (this.pending !== me) {
      return; // accepted/rejected some other way meanwhile
    }
    if (choice === 'Accept') {
      await this.accept();
    } else if (choice === 'Reject') {
      await this.reject();
    }
  }

  async accept(): Promise<boolean> {
    const p = this.pending;
    const client = this.client();
    if (!p || !client) {
      return false;
    }
    if (p.document.version !== p.result.version) {
      testLog('rewriteStale', { version: p.document.version, proposalVersion: p.result.version });
      await this.reject('the document changed since the proposal; not applied');
      return false;
    }
    let edit: vscode.WorkspaceEdit;
    if (p.result.edit) {
      edit = await client.protocol2CodeConverter.asWorkspaceEdit(p.result.edit);
    } else {
      edit = new vscode.WorkspaceEdit();
      edit.replace(p.document.uri, client.protocol2CodeConverter.asRange(p.result.range), p.result.text ?? '');
    }
    await this.finish();
    const ok = await vscode.workspace.applyEdit(edit);
    testLog('rewriteApplied', { ok, version: p.document.version });
    if (!ok) {
      void vscode.window.showWarningMessage('DG: the rewrite could not be applied');
    }
    await vscode.window.showTextDocument(p.document, { preview: false });
    return ok;
  }

  async reject(message?: string): Promise<void> {
    if (!this.pending) {
      return;
    }
    await this.finish();
    if (message) {
      void vscode.window.showWarningMessage(`DG: ${message}`);
    }
  }

  private async finish(): Promise<void> {
    const p = this.pending;
    this.pending = undefined;
    await vscode.commands.executeCommand('setContext', 'dgLsp.rewritePending', false);
    if (!p) {
      return;
    }
    const tabs: vscode.Tab[] = [];
    for (const group of vscode.window.tabGroups.all) {
      for (const tab of group.tabs) {
        const input = tab.input;
        if (input instanceof vscode.TabInputTextDiff && input.modified.toString() === p.proposalUri.toString()) {
          tabs.push(tab);
        }
      }
    }
    if (tabs.length > 0) {
      await vscode.window.tabGroups.close(tabs, true);
    }
    this.contents.delete(p.proposalUri.toString());
  }

  dispose(): void {
    for (const d of this.disposables) {
      d.dispose();
    }
    this.changed.dispose();
  }
}
