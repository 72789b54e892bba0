"""ModelManager with a remote engine: unreachable servers are kept, token problems keep the previous backend."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dg_lsp.engine.remote import RemoteBackend, RemoteEngineError, RemoteSettings
from dg_lsp.server.model_manager import ModelManager, ModelStatus


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def manager() -> Iterator[ModelManager]:
    models = ModelManager()
    yield models
    models.close()


def test_an_unreachable_server_is_adopted(manager: ModelManager) -> None:
    settings = RemoteSettings(url=closed_port_url(), retries=0)
    progress: list[tuple[str, int]] = []
    with pytest.raises(RemoteEngineError, match="connection refused") as caught:
        manager.load(settings, lambda message, percent: progress.append((message, percent)))
    assert caught.value.unreachable
    assert manager.status is ModelStatus.UNREACHABLE and manager.error == str(caught.value)
    assert isinstance(manager.backend, RemoteBackend) and manager.spec == settings
    assert progress == [(f"connecting to {settings.base_url}", 10)]
    manager.note_success()
    assert manager.status is ModelStatus.READY and manager.error is None


def test_failures_while_ready_mark_the_server_unreachable(manager: ModelManager) -> None:
    with pytest.raises(RemoteEngineError):
        manager.load(RemoteSettings(url=closed_port_url(), retries=0))
    manager.note_success()
    manager.note_failure(RemoteEngineError("the engine server at x rejected the request (400): no", 400))
    assert manager.status is ModelStatus.READY and manager.error is not None and "(400)" in manager.error
    manager.note_failure(RemoteEngineError("cannot reach the engine server at x", unreachable=True))
    assert manager.status is ModelStatus.UNREACHABLE


def test_a_bad_token_file_keeps_the_previous_backend(manager: ModelManager, tmp_path: Path) -> None:
    with pytest.raises(RemoteEngineError, match="cannot read engine.tokenFile"):
        manager.load(RemoteSettings(url=closed_port_url(), token_file=str(tmp_path / "missing")))
    assert manager.status is ModelStatus.FAILED and manager.backend is None and manager.spec is None

    first = RemoteSettings(url=closed_port_url(), retries=0)
    with pytest.raises(RemoteEngineError):
        manager.load(first)
    kept = manager.backend
    with pytest.raises(RemoteEngineError, match="cannot read engine.tokenFile"):
        manager.load(RemoteSettings(url=closed_port_url(), token_file=str(tmp_path / "missing")))
    assert manager.backend is kept and manager.spec == first
    assert manager.status is ModelStatus.UNREACHABLE  # what it was before the failed switch


def test_switching_closes_the_previous_remote_backend(manager: ModelManager) -> None:
    with pytest.raises(RemoteEngineError):
        manager.load(RemoteSettings(url=closed_port_url(), retries=0))
    old = manager.backend
    assert isinstance(old, RemoteBackend)
    with pytest.raises(RemoteEngineError):
        manager.load(RemoteSettings(url=closed_port_url(), retries=0, dialect="openai"))
    assert manager.backend is not old
    with pytest.raises(RemoteEngineError, match="closed"):
        old.connect()
