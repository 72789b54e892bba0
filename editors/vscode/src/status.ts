// Status-bar items: model/device/last latency, and denoising progress.
import * as vscode from 'vscode';
import { InfoResult } from './protocol';

export class StatusBar implements vscode.Disposable {
  private readonly main: vscode.StatusBarItem;
  private readonly progress: vscode.StatusBarItem;
  private info: InfoResult | undefined;
  private latencyMs: number | undefined;
  private state: 'starting' | 'running' | 'stopped' | 'error' = 'starting';
  private hideTimer: NodeJS.Timeout | undefined;

  constructor() {
    this.main = vscode.window.createStatusBarItem('dgLsp.status', vscode.StatusBarAlignment.Right, 100);
    this.main.name = 'DG-LSP';
    this.main.command = 'dgLsp.showInfo';
    this.progress = vscode.window.createStatusBarItem('dgLsp.progress', vscode.StatusBarAlignment.Right, 99);
    this.progress.name = 'DG-LSP denoising';
    this.render();
    this.main.show();
  }

  setState(state: 'starting' | 'running' | 'stopped' | 'error'): void {
    this.state = state;
    this.render();
  }

  setInfo(info: InfoResult | undefined): void {
    this.info = info;
    this.render();
  }

  setLatency(ms: number): void {
    this.latencyMs = ms;
    this.render();
  }

  /** Denoising progress; `final` hides the item shortly after. */
  setProgress(step: number, maxSteps: number, final: boolean): void {
    if (this.hideTimer) {
      clearTimeout(this.hideTimer);
      this.hideTimer = undefined;
    }
    this.progress.text = `$(loading~spin) DG ${step}/${maxSteps}`;
    this.progress.tooltip = 'DG-LSP: denoising';
    this.progress.show();
    this.hideTimer = setTimeout(() => this.progress.hide(), final ? 800 : 5000);
  }

  clearProgress(): void {
    if (this.hideTimer) {
      clearTimeout(this.hideTimer);
      this.hideTimer = undefined;
    }
    this.progress.hide();
  }

  private render(): void {
    const i = this.info;
    if (this.state === 'stopped') {
      this.main.text = '$(circle-slash) DG: stopped';
      this.main.tooltip = 'DG-LSP server is not running';
      return;
    }
    if (this.state === 'error') {
      this.main.text = '$(error) DG: error';
      this.main.tooltip = 'DG-LSP server failed to start; see the DG-LSP output channel';
      return;
    }
    if (!i) {
      this.main.text = '$(sync~spin) DG: starting';
      this.main.tooltip = 'DG-LSP: starting the server';
      return;
    }
    const latency = this.latencyMs === undefined ? '' : ` · ${Math.round(this.latencyMs)} ms`;
    const model = i.model ?? 'model';
    const device = i.device ?? '?';
    if (i.status === 'loading') {
      this.main.text = `$(sync~spin) DG: ${model} · ${device} · loading`;
    } else if (i.status === 'failed') {
      this.main.text = `$(error) DG: ${model} · failed`;
    } else {
      this.main.text = `$(sparkle) DG: ${model} · ${device}${latency}`;
    }
    const md = new vscode.MarkdownString();
    md.appendMarkdown(`**DG-LSP** — ${i.status ?? '?'}\n\n`);
    md.appendMarkdown(`- model: \`${model}\`\n- path: \`${i.modelPath ?? '?'}\`\n- device: ${device}, dtype ${i.dtype ?? '?'}\n`);
    if (i.parameters) {
      md.appendMarkdown(`- parameters: ${i.parameters}\n`);
    }
    if (this.latencyMs !== undefined) {
      md.appendMarkdown(`- last completion: ${Math.round(this.latencyMs)} ms\n`);
    }
    if (i.error) {
      md.appendMarkdown(`\nerror: ${i.error}\n`);
    }
    this.main.tooltip = md;
  }

  dispose(): void {
    this.clearProgress();
    this.main.dispose();
    this.progress.dispose();
  }
}
