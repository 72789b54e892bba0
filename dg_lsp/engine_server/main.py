"""``dg-lsp engine-serve``: bind, load the model in the background, serve until stopped."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from types import FrameType

import uvicorn

from dg_lsp.engine_server.app import EngineState, create_app
from dg_lsp.engine_server.auth import TokenError, is_loopback, read_token
from dg_lsp.engine_server.limits import DEFAULT_MAX_BODY_BYTES
from dg_lsp.model.quantize import QUANTIZE_MODES
from dg_lsp.server.model_manager import model_spec

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port); a clear SystemExit if that fails."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise SystemExit(f"dg-lsp engine-serve: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class GracefulServer(uvicorn.Server):
    """SIGTERM or SIGINT: stop accepting, let in-flight requests finish, then exit with status 0.

    Requests still running after ``timeout_graceful_shutdown`` are cancelled (their canvases
    leave the batch at the next step). uvicorn re-raises the signal after a graceful shutdown,
    which makes the process end "killed by SIGTERM"; a clean stop here exits 0.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing in-flight requests, then exiting", sig)
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def _announce_when_ready(state: EngineState, server: uvicorn.Server, url: str, ready_file: Path | None) -> None:
    state.ready.wait()
    while not server.started and not server.should_exit:
        time.sleep(0.01)
    log.info("engine %s at %s (model %s)", state.status, url, state.spec.path.name)
    if ready_file is not None:
        facts = {"url": url, "pid": os.getpid(), "status": state.status, "error": state.error}
        temporary = ready_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(facts), encoding="utf-8")
        temporary.replace(ready_file)  # readers never see half a file


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    token = None
    if args.token_file:
        try:
            token = read_token(Path(args.token_file))
        except TokenError as exc:
            raise SystemExit(f"dg-lsp engine-serve: {exc}") from exc
    if token is None and not is_loopback(args.host) and not args.allow_unauthenticated:
        raise SystemExit(
            f"dg-lsp engine-serve: refusing to serve on {args.host} without a token: "
            "pass --token-file (or --allow-unauthenticated on a trusted network)"
        )
    spec = model_spec(args.model or os.environ.get("DG_LSP_MODEL"), args.device, args.dtype, quantize=args.quantize)
    state = EngineState(spec, max_batch=args.max_batch, max_queue=args.max_queue, max_steps=args.max_steps,
                        pad_canvases={"auto": None, "pad": True, "per-length": False}[args.canvas_batching],
                        static_cache=args.batch_cache == "static")
    sock = bind(args.host, args.port)
    url = url_of(sock)
    app = create_app(state, token, max_body_bytes=args.max_body_bytes, public_metrics=args.public_metrics,
                     shutdown_grace_s=max(args.shutdown_timeout - 1.0, 0.0))
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=args.shutdown_timeout)
    server = GracefulServer(config)
    threading.Thread(target=state.load, args=(lambda message: log.info("engine: %s", message),), daemon=True).start()
    ready_file = Path(args.ready_file) if args.ready_file else None
    threading.Thread(target=_announce_when_ready, args=(state, server, url, ready_file), daemon=True).start()
    log.info("engine server listening on %s%s", url, " (bearer token required)" if token else "")
    try:
        server.run(sockets=[sock])
    finally:
        state.close()
    log.info("engine server stopped")
    return 0


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``engine-serve``."""
    p = sub.add_parser("engine-serve", parents=[common], help="serve the model over HTTP to many language servers")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port)")
    p.add_argument("--model", default=None, help="checkpoint directory (default: DG_LSP_MODEL or the embedded model)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument(
        "--quantize", default=None, choices=QUANTIZE_MODES,
        help="weight-only quantization: fp8 or int8 (default: DG_LSP_QUANTIZE or none)",
    )
    p.add_argument("--token-file", default=None, help="file holding the bearer token every request must carry")
    p.add_argument("--allow-unauthenticated", action="store_true", help="serve a non-loopback host without a token")
    p.add_argument("--max-batch", type=int, default=8, help="canvases denoised together per step")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond a full batch before 429")
    p.add_argument(
        "--canvas-batching", choices=["auto", "pad", "per-length"], default="auto",
        help="pad: one forward for all canvases; per-length: one per canvas length; auto: pad on GPU, per-length on CPU",
    )
    p.add_argument(
        "--batch-cache", choices=["static", "restack"], default="static",
        help="static: prompt states in preallocated slots (joining or leaving copies nothing else); "
        "restack: each request's own cache, stacked again whenever the batch changes (for comparison)",
    )
    p.add_argument("--max-steps", type=int, default=256, help="largest denoising step budget a request may ask for")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="larger request bodies get 413 (default 8 MiB)")
    p.add_argument("--public-metrics", action="store_true", help="serve /metrics without the token (/health always is)")
    p.add_argument("--shutdown-timeout", type=int, default=30,
                   help="on SIGTERM, seconds in-flight requests may take before they are cancelled")
    p.add_argument("--ready-file", default=None, help="write {url, pid, status} here once the model is ready")
    p.set_defaults(func=run)
