"""The engine-server launcher used by the end-to-end tests (it lives in the package, shared with benchmarks)."""

from dg_lsp.engine_server.launch import RunningServer, start_engine_server

__all__ = ["RunningServer", "start_engine_server"]
