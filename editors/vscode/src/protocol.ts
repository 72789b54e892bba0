// dg-lsp's custom messages.
import { NotificationType, Range, WorkspaceEdit } from 'vscode-languageclient/node';

export interface DraftParams {
  uri: string;
  version: number;
  requestId: number | string;
  range: Range;
  text: string;
  step: number;
  maxSteps: number;
  final: boolean;
}

export const DraftNotification = new NotificationType<DraftParams>('dg/draft');

export interface RewriteResult {
  uri: string;
  version: number;
  range: Range;
  text: string | null;
  edit?: WorkspaceEdit | null;
  applied?: boolean;
  error?: string | null;
  steps?: number;
}

export interface InfoResult {
  model?: string | null;
  modelPath?: string | null;
  device?: string | null;
  dtype?: string | null;
  languages?: string[];
  parameters?: number | null;
  status?: 'loading' | 'ready' | 'failed';
  error?: string | null;
  /** Prompt prefetch counters (scheduled, encoded, dropped, unsupported, failed, joined) and whether one runs. */
  prefetch?: Record<string, number | boolean> | null;
}

export const REWRITE_COMMAND = 'dg.rewriteSelection';
export const INFO_COMMAND = 'dg.info';
