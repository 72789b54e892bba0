"""Command line: ``dg-lsp serve | infill | rewrite | info | engine-serve``. Logs go to stderr or a file, never stdout."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from dg_lsp import __version__


def _setup_logging(level: str, log_file: str | None) -> None:
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=level.upper(), handlers=[handler], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _read_source(path: Path) -> str:
    """Read a file for the one-shot commands; invalid UTF-8 is a clear error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SystemExit(f"dg-lsp: cannot read {path}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SystemExit(
            f"dg-lsp: {path} is not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
            "convert it to UTF-8 first"
        ) from exc


def _engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dg_lsp.engine.engine import Engine
    from dg_lsp.model.loader import ModelLoadError, load_model
    from dg_lsp.server.model_manager import model_spec

    spec = model_spec(args.model or os.environ.get("DG_LSP_MODEL"), args.device, args.dtype, quantize=args.quantize)
    try:
        return Engine(load_model(spec.path, spec.device, spec.dtype, spec.quantize), prompt_format=args.prompt_format)
    except ModelLoadError as exc:
        raise SystemExit(f"dg-lsp: {exc}") from exc


def _document(path: Path, language: str | None):  # type: ignore[no-untyped-def]
    from dg_lsp.languages import detect_language
    from dg_lsp.syntax import DocumentTree

    text = _read_source(path)
    lang = language or detect_language(path.resolve().as_uri(), None)
    return DocumentTree(text, lang), lang


def _position(doc, line: int, col: int) -> int:  # type: ignore[no-untyped-def]
    from lsprotocol import types

    if line < 0 or col < 0 or line >= doc.line_count:
        raise SystemExit(f"dg-lsp: position {line + 1}:{col + 1} is outside the file ({doc.line_count} lines)")
    return int(doc.offset_at(types.Position(line=line, character=col)))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the language server over stdio or TCP."""
    from dg_lsp.server.model_manager import QUANTIZE_ENV
    from dg_lsp.server.server import create_server
    from dg_lsp.server.thread_pool import start_all_workers

    if args.quantize:  # the default for the settings' "quantize" (which wins when set)
        os.environ[QUANTIZE_ENV] = args.quantize
    server = create_server(args.model)
    start_all_workers(server.thread_pool)  # no thread starts later, when memory may be short
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        server.start_tcp(host or "127.0.0.1", int(port))
    else:
        stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
        sys.stdout = sys.stderr  # anything printed by a library must not corrupt the protocol
        server.start_io(stdin, stdout)
    return 0


def _options(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dg_lsp.config import CompletionOptions, RewriteOptions

    completion = CompletionOptions(max_steps=args.steps, parse_check=not args.no_parse_check, seed=args.seed)
    return completion, RewriteOptions(noise=args.noise) if hasattr(args, "noise") else RewriteOptions()


def cmd_infill(args: argparse.Namespace) -> int:
    """Print the middle the server would insert at LINE:COL (1-based line and column)."""
    from dg_lsp.infill import complete

    doc, language = _document(args.file, args.language)
    offset = _position(doc, args.line - 1, args.col - 1)
    engine = _engine(args)
    completion_options, _ = _options(args)
    result = complete(engine, doc.text, doc.tree, language, offset, completion_options, file_name=args.file.name)
    if args.json:
        payload: dict[str, object] = {"text": result.text if result else "", "raw": result.raw if result else None}
        if result:
            payload |= {"steps": result.result.steps, "kind": result.context.kind.name.lower()}
        print(json.dumps(payload))
    elif result is not None:
        sys.stdout.write(result.text + ("" if result.text.endswith("\n") else "\n"))
    else:  # stdout stays empty (scripts read it); a person is told why there is nothing
        print(
            "dg-lsp: no completion here: the model's answer was empty or failed the parse check "
            "(--no-parse-check shows the raw answer)",
            file=sys.stderr,
        )
    return 0


def cmd_rewrite(args: argparse.Namespace) -> int:
    """Print the rewritten text of a range L1:C1-L2:C2 (1-based, end exclusive)."""
    from dg_lsp.infill import rewrite

    match = re.fullmatch(r"(\d+):(\d+)-(\d+):(\d+)", args.range)
    if not match:
        raise SystemExit("dg-lsp: --range must look like L1:C1-L2:C2 (1-based)")
    l1, c1, l2, c2 = (int(g) for g in match.groups())
    doc, language = _document(args.file, args.language)
    start, end = _position(doc, l1 - 1, c1 - 1), _position(doc, l2 - 1, c2 - 1)
    if start >= end:
        raise SystemExit("dg-lsp: the range is empty")
    engine = _engine(args)
    completion_options, rewrite_options = _options(args)
    result = rewrite(
        engine, doc.text, language, start, end, completion_options, rewrite_options, file_name=args.file.name
    )
    sys.stdout.write(result.new_text if result else doc.text[start:end])
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print model, device, dtype and languages."""
    from dg_lsp.config import CompletionOptions, RewriteOptions
    from dg_lsp.engine.engine import sampler_json
    from dg_lsp.languages import SUPPORTED_LANGUAGES

    engine = _engine(args)
    info = {"version": __version__, **engine.describe(), "languages": list(SUPPORTED_LANGUAGES)}
    info["sampler"] = {  # what completions and rewrites run with by default (settings override)
        "completion": sampler_json(CompletionOptions().sampler(engine.sampler_defaults)),
        "rewrite": sampler_json(RewriteOptions().sampler(None, engine.sampler_defaults)),
    }
    print(json.dumps(info, indent=2))
    return 0


def quantize_arg(p: argparse.ArgumentParser) -> None:
    """``--quantize none|fp8|int8`` (shared with ``engine-serve``)."""
    from dg_lsp.model.quantize import QUANTIZE_MODES

    p.add_argument(
        "--quantize", default=None, choices=QUANTIZE_MODES,
        help="weight-only quantization: fp8 or int8 halve the weights' memory "
        "(default: DG_LSP_QUANTIZE or none)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog="dg-lsp", description="Diffusion code-infilling language server")
    parser.add_argument("--version", action="version", version=f"dg-lsp {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    common.add_argument("--log-file", default=None, help="write logs here instead of stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", default=None,
            help="checkpoint directory or downloaded hub id (default: DG_LSP_MODEL or the embedded model)",
        )
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")
        p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
        quantize_arg(p)
        p.add_argument(
            "--prompt-format", default="auto", choices=["auto", "fim", "chat"],
            help="auto: FIM when the tokenizer has the markers, else the checkpoint's chat template",
        )

    def sampling_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--steps", type=int, default=None, help="maximum denoising steps (default: the model's own)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--language", default=None, help="override the language detected from the file name")
        p.add_argument("--no-parse-check", action="store_true", help="keep completions that parse worse")

    serve = sub.add_parser("serve", parents=[common], help="run the language server (stdio by default)")
    serve.add_argument("--tcp", default=None, metavar="HOST:PORT")
    serve.add_argument(
        "--model", default=None, help="checkpoint directory or downloaded hub id (initializationOptions.model wins)"
    )
    quantize_arg(serve)
    serve.set_defaults(func=cmd_serve)

    infill = sub.add_parser("infill", parents=[common], help="print the infill at a position")
    infill.add_argument("file", type=Path)
    infill.add_argument("--line", type=int, required=True, help="1-based line")
    infill.add_argument("--col", type=int, required=True, help="1-based column (UTF-16 code units)")
    infill.add_argument("--json", action="store_true")
    model_args(infill)
    sampling_args(infill)
    infill.set_defaults(func=cmd_infill)

    rewrite = sub.add_parser("rewrite", parents=[common], help="print a rewritten range")
    rewrite.add_argument("file", type=Path)
    rewrite.add_argument("--range", required=True, help="L1:C1-L2:C2, 1-based, end exclusive")
    rewrite.add_argument("--noise", type=float, default=0.5, help="fraction of the selection renoised at the start")
    model_args(rewrite)
    sampling_args(rewrite)
    rewrite.set_defaults(func=cmd_rewrite)

    info = sub.add_parser("info", parents=[common], help="print model, device, dtype and languages")
    model_args(info)
    info.set_defaults(func=cmd_info)

    from dg_lsp.engine_server.main import add_parser as add_engine_serve

    add_engine_serve(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dg-lsp`` console script."""
    # torchao (imported with transformers' models) warns about GPU kernels this machine cannot load
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_file)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
