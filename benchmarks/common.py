"""Helpers shared by the benchmarks: a small stdio LSP client, statistics, machine description, plots.

Nothing here imports torch at module level: the LSP benchmark's client process stays light, so
that the time it measures is the server's.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
FIXTURES_DIR = ROOT / "fixtures"


# -- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics.

    Same definition as numpy's default ("linear"); NaN for an empty sequence.
    """
    if not values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """count, p50, p95, mean, min and max of a list of measurements."""
    if not values:
        return {"count": 0, "p50": math.nan, "p95": math.nan, "mean": math.nan, "min": math.nan, "max": math.nan}
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
    }


def median(values: Sequence[float]) -> float:
    """The median (NaN when empty)."""
    return percentile(values, 50)


# -- formatting --------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    """A number for a table: fixed digits, thousands separators, '-' for missing/NaN."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    return str(value)


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned table for the terminal (first column left-aligned, others right)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table (first column left-aligned, others right)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for row in rows:
        out.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(out)


def command_line(script: str | Path, argv: Sequence[str] | None) -> str:
    """The command as a user would type it from the repository root."""
    path = Path(script).resolve()
    try:
        shown = str(path.relative_to(ROOT))
    except ValueError:
        shown = str(path)
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", shown, *args])


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON (NaN becomes null), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(payload), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# -- machine -----------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1024 * 1024), 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def package_version(package: str) -> str | None:
    """The installed version of a distribution (None when it is not installed)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    """The checkout's short HEAD, with ``+dirty`` when tracked files are modified (None outside git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info(device: str | None = None, torch_threads: int | None = None) -> dict[str, Any]:
    """CPU model, cores, RAM, library versions, accelerator and load: what a result was measured on.

    ``device`` is the torch device the work ran on ("cpu", "cuda", "cuda:0"); for CUDA the GPU's
    name and memory are added (this imports torch; in a client process whose torch cannot see the
    GPU, e.g. a server started with another Python, ``gpu`` is None).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "dg_lsp": package_version("dg-lsp"),
        "git": git_revision(),
        "device": device,
        "torch_threads": torch_threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        info["load_average"] = None
    if device is not None and device.startswith("cuda"):
        try:
            import torch

            props = torch.cuda.get_device_properties(torch.device(device).index or 0)
        except (ImportError, RuntimeError, AssertionError):
            info["gpu"] = None
        else:
            info["gpu"] = props.name
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["cuda"] = torch.version.cuda
    return info


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (from /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def machine_line(info: Mapping[str, Any]) -> str:
    """One markdown-friendly line describing the machine."""
    parts = [f"{info['cpu']}, nproc {info['nproc']}"]
    if info.get("ram_gib") is not None:
        parts.append(f"{info['ram_gib']} GiB RAM")
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']} ({info['gpu_memory_gib']} GiB, CUDA {info.get('cuda')})")
    parts.append(f"torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}")
    if info.get("device"):
        device = str(info["device"])
        if info.get("dtype"):
            device += f" ({info['dtype']})"
        parts.append(f"device {device}")
    if info.get("torch_threads") is not None:
        parts.append(f"{info['torch_threads']} torch threads")
    if info.get("load_average"):
        parts.append(f"load average {info['load_average'][0]} at start")
    if info.get("git"):
        parts.append(f"dg-lsp {info['git']}")
    return "; ".join(parts)


# -- fixtures ----------------------------------------------------------------------------------

#: LSP languageId per fixture folder.
LANGUAGE_IDS: dict[str, str] = {
    "bash": "shellscript",
    "c": "c",
    "cpp": "cpp",
    "go": "go",
    "java": "java",
    "javascript": "javascript",
    "lua": "lua",
    "python": "python",
    "rust": "rust",
    "text": "plaintext",
    "tsx": "typescriptreact",
    "typescript": "typescript",
}


def load_cursors(fixtures: Path = FIXTURES_DIR) -> dict[str, list[dict[str, Any]]]:
    """``fixtures/cursors.json``: ``{"<lang>/<file>": [{"line", "character", "kind", "expected"}, ...]}``.

    ``line``/``character`` are 0-based LSP coordinates of the start of ``expected`` in the
    complete fixture file; ``kind`` is REST_OF_LINE, LINE or BLOCK.
    """
    data = json.loads((fixtures / "cursors.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{fixtures / 'cursors.json'}: expected an object of file -> cursors")
    return data


def offset_at(text: str, line: int, character: int) -> int:
    """The string offset of an LSP position (``character`` counts UTF-16 code units)."""
    lines = text.split("\n")
    if not 0 <= line < len(lines):
        raise ValueError(f"line {line} is outside a text of {len(lines)} lines")
    offset = sum(len(lines[i]) + 1 for i in range(line))
    units = 0
    for i, ch in enumerate(lines[line]):
        if units >= character:
            return offset + i
        units += 2 if ord(ch) > 0xFFFF else 1
    return offset + len(lines[line])


def end_position(text: str) -> tuple[int, int]:
    """The LSP position just past the last character of ``text``."""
    lines = text.split("\n")
    last = lines[-1]
    return len(lines) - 1, sum(2 if ord(ch) > 0xFFFF else 1 for ch in last)


# -- a small stdio LSP client ------------------------------------------------------------------


class LspError(Exception):
    """The server answered a request with an error, or went away."""


@dataclass(frozen=True)
class PendingRequest:
    """A request sent by :meth:`LspClient.send_request`: its id, when it left, and the future of ``(message, received)``."""

    id: int
    started: float
    future: Future[tuple[dict[str, Any], float]]


def inline_params(uri: str, line: int, character: int) -> dict[str, Any]:
    """``textDocument/inlineCompletion`` params at ``line``/``character`` (UTF-16), triggered automatically as while typing."""
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}, "context": {"triggerKind": 2}}


def has_suggestion(result: Any) -> bool:
    """Whether an ``inlineCompletion`` result offers a non-empty item."""
    items = result.get("items", []) if isinstance(result, dict) else (result or [])
    return any(item.get("insertText") for item in items if isinstance(item, dict))


class LspClient:
    """A blocking JSON-RPC client for a language server started as a child process.

    A reader thread parses the server's output: responses resolve the matching request
    (stamped with the time they were read, so latency excludes the wake-up of the waiting
    thread), requests from the server get a benign answer, notifications are counted.
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stderr: IO[bytes] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr if stderr is not None else subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd is not None else None,
        )
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, Future[tuple[dict[str, Any], float]]] = {}
        self.notification_counts: Counter[str] = Counter()
        self.messages: list[str] = []
        self.on_notification: Callable[[str, Any], None] | None = None
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="lsp-reader", daemon=True)
        self._reader.start()

    # -- wire --
    def _send(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        stdin = self.proc.stdin
        assert stdin is not None
        with self._write_lock:
            stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            stdin.flush()

    def _read_message(self, stream: IO[bytes]) -> dict[str, Any] | None:
        length = None
        while True:
            line = stream.readline()
            if not line:
                return None
            line = line.strip()
            if not line:
                break
            name, _, value = line.decode("ascii", "replace").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise LspError("a message from the server has no Content-Length header")
        body = stream.read(length)
        if len(body) < length:
            return None
        message = json.loads(body)
        return message if isinstance(message, dict) else None

    def _read_loop(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        error: BaseException | None = None
        try:
            while True:
                message = self._read_message(stream)
                if message is None:
                    break
                received = time.perf_counter()
                self._dispatch(message, received)
        except BaseException as exc:  # keep the waiting thread informed whatever happened
            error = exc
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                reason = f"the server went away ({error!r})" if error else "the server closed its output"
                future.set_exception(LspError(reason))

    def _dispatch(self, message: dict[str, Any], received: float) -> None:
        if "method" not in message:  # a response
            with self._lock:
                future = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result((message, received))
            return
        method = str(message["method"])
        params = message.get("params")
        if "id" in message:  # a request from the server
            self._send({"jsonrpc": "2.0", "id": message["id"], "result": self._answer(method, params)})
            return
        self.notification_counts[method] += 1
        if method in ("window/showMessage", "window/logMessage") and isinstance(params, dict):
            self.messages.append(str(params.get("message")))
        if self.on_notification is not None:
            self.on_notification(method, params)

    @staticmethod
    def _answer(method: str, params: Any) -> Any:
        if method == "workspace/applyEdit":
            return {"applied": False, "failureReason": "benchmark client does not apply edits"}
        if method == "workspace/configuration" and isinstance(params, dict):
            return [None for _ in params.get("items", [])]
        return None  # workDoneProgress/create, registerCapability, showMessageRequest, ...

    # -- API --
    def send_request(self, method: str, params: Any) -> PendingRequest:
        """Send a request without waiting: its answer resolves the returned :class:`PendingRequest`'s future."""
        future: Future[tuple[dict[str, Any], float]] = Future()
        with self._lock:
            if self._closed:
                raise LspError("the server is not running")
            self._next_id += 1
            request_id = self._next_id
            self._pending[request_id] = future
        started = time.perf_counter()
        self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return PendingRequest(request_id, started, future)

    def cancel_request(self, pending: PendingRequest) -> None:
        """``$/cancelRequest`` for ``pending`` (an editor giving up on it); its answer, if any, is still read."""
        self.notify("$/cancelRequest", {"id": pending.id})

    def timed_request(self, method: str, params: Any, timeout: float | None = None) -> tuple[Any, float]:
        """Send a request; return its result and the wall time (seconds) from send to receipt."""
        pending = self.send_request(method, params)
        request_id, started, future = pending.id, pending.started, pending.future
        try:
            message, received = future.result(timeout)
        except TimeoutError:
            with self._lock:
                self._pending.pop(request_id, None)
            raise LspError(f"{method}: no answer within {timeout} s") from None
        if "error" in message:
            error = message["error"] or {}
            raise LspError(f"{method}: {error.get('message')} (code {error.get('code')})")
        return message.get("result"), received - started

    def request(self, method: str, params: Any, timeout: float | None = None) -> Any:
        """Send a request and return its result."""
        return self.timed_request(method, params, timeout)[0]

    def notify(self, method: str, params: Any) -> None:
        """Send a notification."""
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def close(self, timeout: float = 10.0) -> int | None:
        """shutdown + exit, then wait; kill the process if it does not leave. Returns its exit code."""
        if self.proc.poll() is None:
            try:
                self.request("shutdown", None, timeout=timeout)
                self.notify("exit", None)
            except (LspError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._reader.join(timeout=timeout)
        return self.proc.returncode


# -- plots -------------------------------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_distributions(
    groups: Mapping[str, Sequence[float]],
    path: Path,
    title: str,
    target_ms: float | None = None,
    unit: str = "ms",
) -> Path:
    """Histogram (log-spaced bins) and empirical CDF of each group's latencies, side by side."""
    plt = pyplot()
    groups = {name: list(values) for name, values in groups.items() if values}
    fig, (hist_ax, cdf_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    everything = [v for values in groups.values() for v in values]
    if everything:
        low, high = max(min(everything), 1e-3), max(everything)
        if high <= low:
            high = low * 1.01
        edges = [low * (high / low) ** (i / 30) for i in range(31)]
        for name, values in groups.items():
            hist_ax.hist(values, bins=edges, alpha=0.5, label=f"{name} (n={len(values)})")
            ordered = sorted(values)
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            cdf_ax.step(ordered, fractions, where="post", label=f"{name}: p50 {median(ordered):,.0f} {unit}")
        from matplotlib.ticker import FuncFormatter, LogLocator

        for ax in (hist_ax, cdf_ax):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
            ax.set_xlabel(f"latency ({unit}, log scale)")
            ax.grid(True, which="both", alpha=0.3)
            if target_ms is not None:
                ax.axvline(target_ms, color="red", linestyle="--", linewidth=1, label=f"target {target_ms:g} {unit}")
    hist_ax.set_ylabel("requests")
    hist_ax.set_title("distribution")
    cdf_ax.set_ylabel("fraction of requests <= x")
    cdf_ax.set_title("cumulative")
    cdf_ax.axhline(0.5, color="grey", linewidth=0.5)
    cdf_ax.axhline(0.95, color="grey", linewidth=0.5)
    hist_ax.legend(fontsize=8)
    cdf_ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
