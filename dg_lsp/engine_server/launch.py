"""Start ``dg-lsp engine-serve`` as a subprocess and wait until it is ready (tests and benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class RunningServer:
    """A started engine server: where it listens and the token it wants (None: no auth)."""

    url: str
    token: str | None
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        """Request headers carrying the token."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def metric(self, name: str) -> float:
        """One sample of ``/metrics`` (e.g. ``dg_engine_requests_total{status="cancelled"}``)."""
        text = httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(f"{name} not in /metrics")

    def stop(self, grace_s: float = 45.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``grace_s``: longer than its 30 s drain of in-flight work)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_engine_server(
    model_dir: Path | None, workdir: Path, *extra: str, token: str | None = "s3cret-token", threads: int | None = 1
) -> RunningServer:
    """Start ``dg-lsp engine-serve`` on a free loopback port and wait until the model is ready.

    ``model_dir`` None serves the embedded model; ``threads`` sets ``OMP_NUM_THREADS`` (None: torch's default).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)
    command = [sys.executable, "-m", "dg_lsp", "engine-serve", "--port", "0", "--ready-file", str(ready),
               "--log-level", "warning", *extra]
    if model_dir is not None:
        command += ["--model", str(model_dir)]
    if token is not None:
        token_file = workdir / "token"
        token_file.write_text(token + "\n", encoding="utf-8")
        command += ["--token-file", str(token_file)]
    log = workdir / "engine.log"
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while not ready.exists():
        if process.poll() is not None:
            raise RuntimeError(f"engine server exited ({process.returncode}): {log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"engine server did not get ready: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    facts = json.loads(ready.read_text(encoding="utf-8"))
    if facts["status"] != "ok":
        process.kill()
        raise RuntimeError(f"engine server failed to load: {facts['error']}")
    return RunningServer(url=facts["url"], token=token, process=process, log=log)
