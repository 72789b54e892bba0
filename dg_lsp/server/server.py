"""The dg-lsp language server: inline completion, rewrite selection, drafts, configuration."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from dg_lsp import __version__
from dg_lsp.config import ServerOptions, options_to_json, parse_options
from dg_lsp.engine.backend import InfillBackend
from dg_lsp.engine.background_compile import BackgroundCompile, CompileState
from dg_lsp.engine.denoiser import Cancelled
from dg_lsp.engine.engine import Engine, sampler_json
from dg_lsp.engine.remote import RemoteEngineError, RemoteSettings
from dg_lsp.infill import Completion, complete, completion_request, rewrite
from dg_lsp.languages import detect_language
from dg_lsp.model.loader import ModelLoadError
from dg_lsp.server.drafts import DraftNotifier, DraftRelay, DraftSink
from dg_lsp.server.jobs import JobRunner
from dg_lsp.server.model_manager import (
    BackendSpec,
    ModelManager,
    ModelStatus,
    engine_facts,
    model_spec,
    remote_settings,
)
from dg_lsp.server.prefetch import PrefetchPlan, Prefetcher, edit_end, typing_like
from dg_lsp.server.protocol_guard import GuardedProtocol, strict_converter
from dg_lsp.server.suggestions import SuggestionMemory
from dg_lsp.special_tokens import LANGUAGES
from dg_lsp.syntax import DocumentTree

log = logging.getLogger(__name__)

REWRITE_COMMAND = "dg.rewriteSelection"
INFO_COMMAND = "dg.info"
REWRITE_TITLE = "Rewrite selection (diffusion)"


@dataclass
class OpenDocument:
    """An open document: its tree-sitter state and LSP version."""

    tree: DocumentTree
    version: int


class DgServer(LanguageServer):
    """pygls server holding the backend (resident model or engine server), open documents and suggestion memory."""

    def __init__(self, model_override: str | None = None) -> None:
        super().__init__(
            "dg-lsp",
            __version__,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=GuardedProtocol,
            converter_factory=strict_converter,
        )
        self.options = ServerOptions()
        self.model_override = model_override
        self.models = ModelManager()
        self.jobs = JobRunner()
        self.prefetcher = Prefetcher(self.jobs)
        self.documents: dict[str, OpenDocument] = {}
        self.memory = SuggestionMemory()
        self._announced: set[str] = set()
        self._load_task: asyncio.Task[None] | None = None
        #: Starts the background compile of a freshly loaded model's step (see :meth:`_compile_in_background`).
        self._compile_task: asyncio.Future[None] | None = None

    # -- helpers ---------------------------------------------------------------------------
    def document(self, uri: str) -> OpenDocument:
        """The open document for ``uri``; unknown URIs are a clear request error."""
        doc = self.documents.get(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"document {uri} is not open (send textDocument/didOpen first)")
        return doc

    def offset(self, doc: OpenDocument, position: types.Position, uri: str) -> int:
        """The character offset of ``position``; positions past the last line are an error."""
        lines = doc.tree.line_count
        if position.line < 0 or position.character < 0 or position.line >= lines:
            raise JsonRpcInvalidParams(
                f"position {position.line}:{position.character} is outside {uri} ({lines} lines)"
            )
        return doc.tree.offset_at(position)

    def prefetch_after_edit(self, uri: str, changes: Any) -> None:
        """Schedule the prompt prefetch for the cursor an edit left (see :mod:`dg_lsp.server.prefetch`)."""
        self.prefetcher.cancel()  # whatever it was for, the edit made it stale
        options, backend = self.options.completion, self.models.backend
        doc = self.documents.get(uri)
        if doc is None or not (options.enabled and options.prefetch) or backend is None or not backend.prefetches:
            return
        try:
            cursor = edit_end(changes, doc.tree.offset_at)
        except ValueError:
            return
        if cursor is None:
            return
        version = doc.version
        typed = typing_like(changes)  # speculation only after typing: not a paste, a line deleted, a tool's edit
        self.prefetcher.schedule(lambda: self._prefetch_job(uri, version, cursor, typed), (uri, version, cursor))

    def _prefetch_job(self, uri: str, version: int, cursor: int, typed: bool) -> PrefetchPlan | None:
        """The prefetch for ``cursor`` in ``uri`` at ``version`` (the whole completion after a ``typed`` edit with
        ``completion.speculate``, else the prompt); None if the model or the document moved on."""
        doc = self.documents.get(uri)
        backend = self.models.backend
        loading = self._load_task is not None and not self._load_task.done()
        if doc is None or doc.version != version or backend is None or loading:
            return None
        snapshot = doc.tree.snapshot()
        text, options = doc.tree.text, self.options.completion
        language = doc.tree.language or detect_language(uri, None)
        relay = DraftRelay() if typed and options.speculate else None
        cursor = min(cursor, len(text))
        answers: list[str] = []

        def job(cancelled: Callable[[], bool]) -> bool:
            if relay is not None:  # speculation: the whole completion, remembered for the request (see ``done``)
                result = complete(backend, text, snapshot.tree(), language, cursor, options, relay, cancelled, file_name(uri))
                answers.append(result.text if result is not None else "")
                return True
            request = completion_request(backend, text, snapshot.tree(), language, cursor, options, file_name(uri))[1]
            return backend.prefetch(request)  # the prompt the request at ``cursor`` will send

        def done() -> None:
            snapshot.give_back()
            current = self.documents.get(uri)
            if answers and current is not None and current.version == version:
                self.memory.remember(uri, version, text, cursor, answers[0])

        return job, done, relay

    async def known_answer(self, uri: str, version: int, text: str, offset: int, drafts: DraftSink) -> str | None:
        """A remembered or typed-through answer, else a running prefetch's for this very place (waited for, its
        drafts sent to ``drafts`` meanwhile); None: the request must compute one. ``""``: nothing to offer."""
        known = self.memory.lookup(uri, version, text, offset)  # first: typing through a suggestion never waits
        if known is not None:
            return known
        if not await self.prefetcher.join((uri, version, offset), drafts):
            self.prefetcher.cancel()  # for another place, or not started: the request encodes its own prompt
            return None
        current = self.documents.get(uri)
        if current is None or current.version != version:
            return ""  # the document moved on while waiting
        return self.memory.lookup(uri, version, text, offset)  # a speculation's answer (None after a prompt prefetch)

    def announce(self, message: str, kind: types.MessageType = types.MessageType.Error) -> None:
        """Show ``message`` to the user once per session."""
        if message in self._announced:
            return
        self._announced.add(message)
        self.window_show_message(types.ShowMessageParams(type=kind, message=f"dg-lsp: {message}"))

    def wanted_spec(self) -> BackendSpec:
        """The backend the current options ask for: an engine server, or a local model."""
        if self.options.engine.kind == "remote" and self.options.engine.url is not None:
            return remote_settings(self.options.engine)
        model = self.options.model or self.model_override or os.environ.get("DG_LSP_MODEL") or None
        return model_spec(
            model, self.options.device, self.options.dtype, self.options.reuse_prompt_cache, self.options.prompt_format,
            self.options.quantize, fast_path=self.options.fast_path, compile=self.options.compile,
        )

    def apply_options(self, raw: Any) -> None:
        """Parse and adopt options; report problems; reload the model if it changed."""
        options, problems = parse_options(ServerOptions, raw)
        for problem in problems:
            self.announce(f"invalid setting {problem}", types.MessageType.Warning)
        self.options = options
        self.memory.cache_size = options.completion.cache_size

    def start_model_load(self) -> None:
        """Load the wanted model in the background unless it is already resident."""
        spec = self.wanted_spec()
        if self.models.spec == spec and self.models.status is ModelStatus.READY:
            return
        previous = self._load_task
        self._load_task = asyncio.ensure_future(self._load(spec, previous))

    async def _load(self, spec: BackendSpec, previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        loop = asyncio.get_running_loop()
        token = str(uuid.uuid4())
        window = self.client_capabilities.window
        progress = bool(window and window.work_done_progress)
        what = f"connecting to {spec.base_url}" if isinstance(spec, RemoteSettings) else f"loading {spec.path}"
        if progress:
            try:
                await self.window_work_done_progress_create_async(types.WorkDoneProgressCreateParams(token=token))
                self.work_done_progress.begin(
                    token, types.WorkDoneProgressBegin(title="dg-lsp", message=what, percentage=0)
                )
            except Exception:  # a client that refuses progress still gets a model
                progress = False

        def report(message: str, percent: int) -> None:
            if progress:
                value = types.WorkDoneProgressReport(message=message, percentage=percent)
                loop.call_soon_threadsafe(self.work_done_progress.report, token, value)

        try:
            await self.jobs.run_exclusive(lambda: self.models.load(spec, report))
            self.memory.clear()
            backend = self.models.backend
            if isinstance(backend, Engine):
                self._compile_task = asyncio.ensure_future(self._compile_in_background(backend))
        except ModelLoadError as exc:
            still = " (keeping the previous model)" if self.models.backend is not None else "; completions are off"
            self.announce(f"could not load the model: {exc}{still}")
        except RemoteEngineError as exc:
            if self.models.spec == spec:  # adopted, not answering yet: requests will try again
                self.memory.clear()
                self.announce(str(exc))
            else:
                still = " (keeping the previous engine)" if self.models.backend is not None else "; completions are off"
                self.announce(f"{exc}{still}")
        except Exception as exc:  # never let a load take the server down
            log.exception("unexpected model load failure")
            self.announce(f"could not load the model: {type(exc).__name__}: {exc}")
            self.models.status = ModelStatus.READY if self.models.backend is not None else ModelStatus.FAILED
        finally:
            if progress:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=self.models.status.value))

    async def _compile_in_background(self, engine: Engine) -> None:
        """Start compiling ``engine``'s denoising step in the background (``compile: "auto"`` on a CPU).

        Reported as its own work-done progress, "compiling the denoising step", one report per
        canvas shape; the server keeps answering with the uncompiled step meanwhile.
        """
        job = engine.background_compile()
        if job is None or job.state is not CompileState.PENDING:
            return
        loop = asyncio.get_running_loop()
        token = str(uuid.uuid4())
        window = self.client_capabilities.window
        progress = bool(window and window.work_done_progress)
        if progress:
            try:
                await self.window_work_done_progress_create_async(types.WorkDoneProgressCreateParams(token=token))
                self.work_done_progress.begin(
                    token,
                    types.WorkDoneProgressBegin(title="dg-lsp", message="compiling the denoising step", percentage=0),
                )
            except Exception:  # a client that refuses progress still gets the compiled step
                progress = False
        if self.models.backend is not engine or job.state is not CompileState.PENDING:  # replaced meanwhile
            if progress:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="cancelled"))
            return

        def later(callback: Any, *args: Any) -> None:
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop is closed: the server is exiting
                pass

        def report(message: str, done: int, total: int) -> None:
            if progress:
                value = types.WorkDoneProgressReport(message=message, percentage=100 * done // max(total, 1))
                later(self.work_done_progress.report, token, value)

        def finished(compile_job: BackgroundCompile[Any]) -> None:
            if progress:
                state = "cancelled" if compile_job.cancelled else compile_job.state.value
                later(self.work_done_progress.end, token, types.WorkDoneProgressEnd(message=state))

        job.start(report, finished)

    async def backend(self) -> InfillBackend | None:
        """The current backend, waiting for a load in progress; None if there is none."""
        task = self._load_task
        if task is not None and not task.done():
            await asyncio.shield(task)
        return self.models.backend

    def remote_failed(self, exc: RemoteEngineError) -> None:
        """A request to the engine server failed: record it and tell the user (once per message)."""
        self.models.note_failure(exc)
        self.announce(str(exc))

    def info(self) -> dict[str, Any]:
        """What ``dg.info`` returns."""
        backend = self.models.backend
        facts = backend.describe() if backend is not None else {}
        wanted = self.wanted_spec()
        path = facts.get("modelPath") or (None if isinstance(wanted, RemoteSettings) else str(wanted.path))
        stats = self.jobs.stats
        return {
            "version": __version__,
            "status": self.models.status.value,
            "error": self.models.error,
            "engine": engine_facts(self.models.spec or wanted),
            "model": facts.get("model"),
            "modelPath": path,
            "device": facts.get("device"),
            "dtype": facts.get("dtype"),
            "quantize": facts.get("quantize"),
            "parameters": facts.get("parameters"),
            "canvasLength": facts.get("canvasLength"),
            "trainedContextTokens": facts.get("trainedContextTokens"),
            "canvasNoise": facts.get("canvasNoise"),
            "promptFormat": backend.prompt_format if backend is not None else None,
            "eosIds": facts.get("eosIds"),
            "sampler": self.effective_sampler(backend),
            "languages": [lang for lang in LANGUAGES if lang != "text"],
            "loadSeconds": self.models.load_seconds,
            "warmupSeconds": self.models.warmup_seconds,
            "compile": facts.get("compile"),
            "jobs": {
                "submitted": stats.submitted,
                "started": stats.started,
                "completed": stats.completed,
                "cancelled": stats.cancelled,
                "failed": stats.failed,
            },
            "prefetch": {**self.prefetcher.stats.to_json(), "running": self.prefetcher.busy},
            "promptCache": facts.get("promptCache"),
            "typeThroughHits": self.memory.type_through_hits,
            "cacheHits": self.memory.cache_hits,
            "options": options_to_json(self.options),
        }

    def effective_sampler(self, backend: InfillBackend | None) -> dict[str, Any] | None:
        """The sampler completions and rewrites run with: the model's own, overridden by what the settings set."""
        if backend is None:
            return None
        defaults = backend.sampler_defaults
        completion, rewrite_options = self.options.completion, self.options.rewrite
        return {
            "completion": sampler_json(completion.sampler(defaults)),
            "rewrite": sampler_json(rewrite_options.sampler(completion.entropy_bound, defaults)),
        }

    def send_notification(self, method: str, params: dict[str, Any]) -> None:
        """Send a custom notification (called on the event loop)."""
        self.protocol.notify(method, params)


def file_name(uri: str) -> str | None:
    """The last path segment of a document URI (the chat prompt names the file)."""
    name = unquote(urlsplit(uri).path).rstrip("/").rsplit("/", 1)[-1]
    return name or None


def _range_json(server: DgServer, range_: types.Range) -> Any:
    return server.protocol._converter.unstructure(range_)


def create_server(model_override: str | None = None) -> DgServer:
    """Build the server with all features registered."""
    server = DgServer(model_override)

    @server.feature(types.INITIALIZED)
    async def initialized(ls: DgServer, params: types.InitializedParams) -> None:
        ls.start_model_load()

    @server.feature(types.INITIALIZE)
    def initialize(ls: DgServer, params: types.InitializeParams) -> None:
        ls.apply_options(params.initialization_options)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls: DgServer, params: types.DidChangeConfigurationParams) -> None:
        settings = params.settings
        if isinstance(settings, dict) and "dgLsp" in settings:
            settings = settings["dgLsp"]
        ls.apply_options(settings)
        ls.start_model_load()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: DgServer, params: types.DidOpenTextDocumentParams) -> None:
        item = params.text_document
        language = detect_language(item.uri, item.language_id)
        ls.documents[item.uri] = OpenDocument(DocumentTree(item.text, language), item.version)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: DgServer, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        doc = ls.documents.get(uri)
        if doc is None:
            log.warning("didChange for a document that is not open: %s", uri)
            return
        ls.jobs.cancel(f"complete:{uri}")
        ls.jobs.cancel(f"rewrite:{uri}")  # its result could not be applied any more
        try:
            doc.tree.apply_changes(params.content_changes)
        except ValueError as exc:
            # Resynchronise from pygls's copy rather than lose the document.
            log.warning("bad change for %s (%s); resynchronising", uri, exc)
            doc.tree.set_text(ls.workspace.get_text_document(uri).source)
        doc.version = params.text_document.version
        ls.prefetch_after_edit(uri, params.content_changes)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: DgServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.jobs.cancel(f"complete:{uri}")
        ls.jobs.cancel(f"rewrite:{uri}")
        ls.prefetcher.cancel()
        ls.documents.pop(uri, None)
        ls.memory.forget(uri)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(
        ls: DgServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList | None:
        uri = params.text_document.uri
        doc = ls.document(uri)
        offset = ls.offset(doc, params.position, uri)
        version, text = doc.version, doc.tree.text
        at = types.Range(start=params.position, end=params.position)
        notifier = DraftNotifier(
            asyncio.get_running_loop(),
            ls.send_notification,
            {"uri": uri, "version": version, "requestId": ls.protocol.msg_id, "range": _range_json(ls, at)},
            ls.options.completion.draft_interval_ms,
        )
        known = await ls.known_answer(uri, version, text, offset, notifier)
        if known is not None:  # "" is a remembered empty answer
            items = [types.InlineCompletionItem(insert_text=known, range=at)] if known else []
            return types.InlineCompletionList(items=items)
        if not ls.options.completion.enabled:
            return types.InlineCompletionList(items=[])
        backend = await ls.backend()
        if backend is None:
            return types.InlineCompletionList(items=[])
        options = ls.options.completion
        snapshot = doc.tree.snapshot()  # parsed on the engine thread, not here
        language = doc.tree.language or detect_language(uri, None)
        started = time.perf_counter()
        timing: dict[str, float] = {}

        def job(cancelled: Callable[[], bool]) -> Completion | None:
            timing["queued"] = time.perf_counter()
            tree = snapshot.tree()
            timing["parsed"] = time.perf_counter()
            answer = complete(backend, text, tree, language, offset, options, notifier, cancelled, file_name(uri))
            timing["done"] = time.perf_counter()
            return answer

        try:
            result = await ls.jobs.run(f"complete:{uri}", job)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s", completion_timing(started, timing, result))
        except Cancelled:
            return types.InlineCompletionList(items=[])
        except RemoteEngineError as exc:
            ls.remote_failed(exc)
            return types.InlineCompletionList(items=[])
        except (RuntimeError, MemoryError, OSError) as exc:  # the model broke while running (device lost, OOM)
            ls.announce(ls.models.runtime_failure(exc))
            return types.InlineCompletionList(items=[])
        ls.models.note_success()
        snapshot.give_back()
        current = ls.documents.get(uri)
        if current is None or current.version != version:
            return types.InlineCompletionList(items=[])
        ls.memory.remember(uri, version, text, offset, result.text if result is not None else "")
        if result is None:
            return types.InlineCompletionList(items=[])
        return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=result.text, range=at)])

    @server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.RefactorRewrite]),
    )
    def code_action(ls: DgServer, params: types.CodeActionParams) -> list[types.CodeAction]:
        uri, range_ = params.text_document.uri, params.range
        if uri not in ls.documents or range_.start == range_.end:
            return []
        command = types.Command(title=REWRITE_TITLE, command=REWRITE_COMMAND, arguments=[uri, range_])
        return [types.CodeAction(title=REWRITE_TITLE, kind=types.CodeActionKind.RefactorRewrite, command=command)]

    @server.command(INFO_COMMAND)
    def info_command(ls: DgServer, *args: Any) -> dict[str, Any]:
        return ls.info()

    @server.command(REWRITE_COMMAND)
    async def rewrite_command(ls: DgServer, *args: Any) -> dict[str, Any]:
        return await _rewrite_selection(ls, args)

    return server


def completion_timing(started: float, timing: dict[str, float], result: Completion | None) -> str:
    """One debug line: where an inline completion's time went (queue, parse, engine, back on the event loop)."""
    now = time.perf_counter()

    def ms(a: float, b: float) -> float:
        return (b - a) * 1000.0

    line = (
        f"inline completion: {ms(started, now):.1f} ms = queue {ms(started, timing['queued']):.1f}"
        f" + parse {ms(timing['queued'], timing['parsed']):.1f} + complete {ms(timing['parsed'], timing['done']):.1f}"
        f" + return {ms(timing['done'], now):.1f}"
    )
    if result is not None:
        line += f" (encode {result.result.encode_ms:.1f}, denoise {result.result.denoise_ms:.1f} ms, {result.result.steps} steps)"
    return line


async def _rewrite_selection(ls: DgServer, args: tuple[Any, ...]) -> dict[str, Any]:
    """``dg.rewriteSelection(uri, range, {apply})``: re-denoise the range, return (and apply) the edit."""
    if len(args) < 2 or not isinstance(args[0], str):
        raise JsonRpcInvalidParams(f"{REWRITE_COMMAND} takes (uri, range[, {{apply}}]), got {list(args)!r}")
    uri = args[0]
    ls.prefetcher.cancel()  # a rewrite encodes a different prompt
    try:
        range_ = ls.protocol._converter.structure(args[1], types.Range)
    except Exception as exc:
        raise JsonRpcInvalidParams(f"{REWRITE_COMMAND}: invalid range {args[1]!r}") from exc
    apply = True
    if len(args) > 2 and isinstance(args[2], dict):
        apply = bool(args[2].get("apply", True))
    doc = ls.document(uri)
    start, end = ls.offset(doc, range_.start, uri), ls.offset(doc, range_.end, uri)
    if start >= end:
        raise JsonRpcInvalidParams(f"{REWRITE_COMMAND}: the range is empty")
    version, text = doc.version, doc.tree.text
    reply: dict[str, Any] = {"uri": uri, "version": version, "range": _range_json(ls, range_)}
    backend = await ls.backend()
    if backend is None:
        return {**reply, "text": None, "edit": None, "applied": False, "error": ls.models.error}
    notifier = DraftNotifier(
        asyncio.get_running_loop(),
        ls.send_notification,
        {"uri": uri, "version": version, "requestId": ls.protocol.msg_id, "range": reply["range"]},
        ls.options.completion.draft_interval_ms,
    )
    language = doc.tree.language or detect_language(uri, None)
    completion_options, rewrite_options = ls.options.completion, ls.options.rewrite
    try:
        result = await ls.jobs.run(
            f"rewrite:{uri}",
            lambda cancelled: rewrite(
                backend, text, language, start, end, completion_options, rewrite_options, notifier, cancelled,
                file_name(uri),
            ),
        )
    except Cancelled:
        return {**reply, "text": None, "edit": None, "applied": False, "error": "cancelled"}
    except RemoteEngineError as exc:
        ls.remote_failed(exc)
        return {**reply, "text": None, "edit": None, "applied": False, "error": str(exc)}
    except ValueError as exc:
        raise JsonRpcInvalidParams(f"{REWRITE_COMMAND}: {exc}") from exc
    except (RuntimeError, MemoryError, OSError) as exc:  # the model broke while running (device lost, OOM)
        message = ls.models.runtime_failure(exc)
        ls.announce(message)
        return {**reply, "text": None, "edit": None, "applied": False, "error": message}
    ls.models.note_success()
    current = ls.documents.get(uri)
    if current is None or current.version != version:
        return {**reply, "text": None, "edit": None, "applied": False, "error": "the document changed; nothing applied"}
    if result is None:
        return {**reply, "text": None, "edit": None, "applied": False, "error": "the model proposed no change"}
    edit_range = types.Range(start=doc.tree.position_at(result.edit_start), end=doc.tree.position_at(result.edit_end))
    text_edit = types.TextEdit(range=edit_range, new_text=result.edit_text)
    caps = ls.client_capabilities.workspace
    if caps and caps.workspace_edit and caps.workspace_edit.document_changes:
        identifier = types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version)
        edit = types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(text_document=identifier, edits=[text_edit])])
    else:
        edit = types.WorkspaceEdit(changes={uri: [text_edit]})
    applied = False
    if apply and result.edit_start != result.edit_end or apply and result.edit_text:
        response = await ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label=REWRITE_TITLE))
        applied = bool(response.applied)
    return {
        **reply,
        "text": result.new_text,
        "edit": ls.protocol._converter.unstructure(edit),
        "applied": applied,
        "steps": result.result.steps,
    }
