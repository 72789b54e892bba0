"""A raw JSON-RPC client for dg-lsp over stdio: sends any bytes, including malformed ones.

pytest-lsp's client only sends well-typed messages; hostile-input tests need to send frames
that do not decode, params of the wrong type, and ids of every JSON type.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SERVE = [sys.executable, "-m", "dg_lsp", "serve", "--log-level", "warning"]


def frame(body: bytes | str | dict[str, Any] | list[Any]) -> bytes:
    """One LSP frame around ``body`` (a dict or list is JSON-encoded)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    data = body.encode("utf-8") if isinstance(body, str) else body
    return b"Content-Length: %d\r\n\r\n" % len(data) + data


class RawClient:
    """Talks to a ``dg-lsp serve`` subprocess; collects responses by id and notifications."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path | None) -> None:
        self.process = process
        self.log = log
        self.responses: dict[Any, dict[str, Any]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.unmatched: list[dict[str, Any]] = []
        #: every message from the server, in arrival order
        self.arrivals: list[dict[str, Any]] = []
        #: ids answered more than once
        self.duplicates: list[Any] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read_loop())
        self._next = 0
        #: requests sent, by id (for failure messages)
        self.requests_sent: dict[Any, Any] = {}

    @classmethod
    async def start(cls, log: Path | None = None, extra_env: dict[str, str] | None = None) -> RawClient:
        """Start the server (stderr into ``log`` when given)."""
        env = {**os.environ, **(extra_env or {})}
        sink = log.open("wb") if log is not None else asyncio.subprocess.DEVNULL
        process = await asyncio.create_subprocess_exec(
            *SERVE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=sink, env=env,
            limit=64 * 1024 * 1024,
        )
        return cls(process, log)

    # -- wire ------------------------------------------------------------------------------
    async def send_bytes(self, data: bytes) -> None:
        """Write raw bytes to the server's stdin."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(data)
        await stdin.drain()

    async def send(self, message: dict[str, Any] | list[Any] | str | bytes) -> None:
        """Send one framed message."""
        if isinstance(message, dict) and "method" in message and isinstance(message.get("id"), (int, str, float)):
            self.requests_sent[message["id"]] = message
        await self.send_bytes(frame(message))

    async def _read_loop(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            length = None
            while True:
                line = await stdout.readline()
                if not line:
                    return
                if not line.strip():
                    break
                name, _, value = line.decode("ascii", "replace").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            assert length is not None, "a frame from the server without Content-Length"
            message = json.loads(await stdout.readexactly(length))
            await self._dispatch(message)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        self.arrivals.append(message)
        if "method" in message and "id" in message:  # a request from the server: answer benignly
            result: Any = None
            if message["method"] == "workspace/applyEdit":
                result = {"applied": True}
            await self.send({"jsonrpc": "2.0", "id": message["id"], "result": result})
            return
        async with self._arrived:
            if "method" in message:
                self.notifications.append(message)
            elif "id" in message and message["id"] is not None and message["id"] not in self.responses:
                self.responses[message["id"]] = message
            elif "id" in message and message["id"] is not None:
                self.duplicates.append(message["id"])
            else:
                self.unmatched.append(message)
            self._arrived.notify_all()

    # -- API -------------------------------------------------------------------------------
    def next_id(self) -> int:
        """A fresh integer id."""
        self._next += 1
        return self._next

    async def wait_for(self, ids: Iterable[Any], timeout: float = 120.0) -> list[dict[str, Any]]:
        """The responses to ``ids`` (in order); TimeoutError names those that never came."""
        wanted = list(ids)

        def ready() -> bool:
            return all(i in self.responses for i in wanted) or self.process.returncode is not None

        async with self._arrived:
            try:
                await asyncio.wait_for(self._arrived.wait_for(ready), timeout)
            except TimeoutError:
                missing = [i for i in wanted if i not in self.responses]
                shown = [self.requests_sent.get(i, i) for i in missing[:5]]
                raise TimeoutError(f"no answer to {len(missing)} requests within {timeout} s: {shown}") from None
        missing = [i for i in wanted if i not in self.responses]
        if missing:
            raise AssertionError(f"the server exited ({self.process.returncode}) without answering {missing[:20]}")
        return [self.responses[i] for i in wanted]

    async def request(self, method: str, params: Any = None, timeout: float = 120.0) -> dict[str, Any]:
        """Send a well-formed request and return the whole response message."""
        msg_id = self.next_id()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return (await self.wait_for([msg_id], timeout))[0]

    async def notify(self, method: str, params: Any) -> None:
        """Send a notification."""
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def initialize(self, options: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        """initialize + initialized, then wait until the model is no longer loading; ``dg.info``."""
        capabilities = {"window": {"workDoneProgress": True},
                        "workspace": {"applyEdit": True, "workspaceEdit": {"documentChanges": True}}}
        reply = await self.request(
            "initialize", {"processId": os.getpid(), "capabilities": capabilities, "initializationOptions": options}
        )
        assert "result" in reply, reply
        await self.notify("initialized", {})
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            state = await self.info()
            if state["status"] != "loading":
                return state
            assert asyncio.get_running_loop().time() < deadline, "the model did not load"
            await asyncio.sleep(0.1)

    async def info(self) -> dict[str, Any]:
        """``dg.info``."""
        reply = await self.request("workspace/executeCommand", {"command": "dg.info", "arguments": []})
        assert isinstance(reply.get("result"), dict), reply
        return reply["result"]

    def messages_shown(self) -> list[str]:
        """The text of every ``window/showMessage``."""
        return [str(n["params"]["message"]) for n in self.notifications if n["method"] == "window/showMessage"]

    async def close(self, timeout: float = 30.0) -> int | None:
        """shutdown + exit; kill if it does not leave. Returns the exit code."""
        if self.process.returncode is None:
            try:
                await self.request("shutdown", timeout=timeout)
                await self.notify("exit", None)
                await asyncio.wait_for(self.process.wait(), timeout)
            except (TimeoutError, ConnectionError, AssertionError):
                self.process.kill()
                await self.process.wait()
        self._reader.cancel()
        return self.process.returncode


def inline_params(uri: str, line: Any, character: Any) -> dict[str, Any]:
    """``textDocument/inlineCompletion`` params (any JSON values, to build malformed ones)."""
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}, "context": {"triggerKind": 1}}
