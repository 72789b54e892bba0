"""How much of the prompt each keystroke re-encodes, FIM layout vs chat format (no model runs).

For every fixture file, a few lines are typed again character by character; at each keystroke
the prompt is built exactly as a completion builds it (tree-sitter context within the token
budget, then the engine's layout) and compared with the previous keystroke's prompt: the prompt
cache reuses their longest common token prefix and encodes the rest. FIM uses the tiny test
checkpoint (the project's layout); chat uses the tiny checkpoint in DiffusionGemma's published
layout (its chat template and Gemma-style tokenizer). Token counts depend on the tokenizer: both
are 512-token test vocabularies, so absolute numbers are larger than with a real vocabulary.

    python benchmarks/chat_prompt_reuse.py [--lines-per-file 3] [--budget 1024]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    FIXTURES_DIR,
    RESULTS_DIR,
    command_line,
    machine_info,
    machine_line,
    markdown_table,
    summarize,
    utc_now,
    write_json,
)


def typing_sessions(path: Path, lines_per_file: int) -> list[tuple[str, str, str]]:
    """(text before the line, the line's content to type, text after the line) for evenly spaced lines."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    candidates = [i for i, line in enumerate(lines) if len(line.strip()) >= 8]
    if not candidates:
        return []
    step = max(1, len(candidates) // lines_per_file)
    sessions = []
    for index in candidates[::step][:lines_per_file]:
        before = "\n".join(lines[:index]) + ("\n" if index else "")
        after = "\n" + "\n".join(lines[index + 1 :])
        sessions.append((before, lines[index], after))
    return sessions


def measure(engine: Any, language: str, sessions: list[tuple[str, str, str]], budget: int) -> list[tuple[int, int]]:
    """(prompt tokens, re-encoded tokens) per keystroke."""
    from dg_lsp.engine.engine import InfillRequest
    from dg_lsp.infill import hole_kind
    from dg_lsp.engine.prompt_cache import common_prefix_length
    from dg_lsp.syntax import DocumentTree, build_context

    out: list[tuple[int, int]] = []
    for before, line, after in sessions:
        indent = len(line) - len(line.lstrip())
        previous: list[int] | None = None
        for typed in range(indent, len(line) + 1):
            text = before + line[:typed] + after
            offset = len(before) + typed
            doc = DocumentTree(text, language)
            context = build_context(text, doc.tree, language, offset, budget, engine.count_tokens)
            request = InfillRequest(
                prefix=context.prefix, suffix=context.suffix, language=language, kind=hole_kind(context),
                max_context_tokens=budget, file_name=f"file.{language}",
            )
            prompt = engine.prepare(request).prompt
            if previous is not None:
                out.append((len(prompt), len(prompt) - common_prefix_length(previous, prompt)))
            previous = prompt
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines-per-file", type=int, default=3)
    parser.add_argument("--budget", type=int, default=1024, help="prefix + suffix token budget")
    args = parser.parse_args(argv)

    from dg_lsp.engine.engine import Engine
    from dg_lsp.languages import detect_language
    from dg_lsp.model.loader import load_model
    from dg_lsp.testing import build_tiny_checkpoint
    from dg_lsp.testing_published import build_published_checkpoint

    base = Path(tempfile.mkdtemp(prefix="dg-chat-reuse-"))
    engines = {
        "fim": Engine(load_model(build_tiny_checkpoint(base / "fim"), device="cpu")),
        "chat": Engine(load_model(build_published_checkpoint(base / "chat"), device="cpu")),
    }
    files = sorted(p for p in FIXTURES_DIR.rglob("*") if p.is_file() and p.suffix not in (".json",))
    rows: dict[str, list[tuple[int, int]]] = {name: [] for name in engines}
    for path in files:
        language = detect_language(path.resolve().as_uri(), None)
        sessions = typing_sessions(path, args.lines_per_file)
        for name, engine in engines.items():
            rows[name] += measure(engine, language or "text", sessions, args.budget)
    summary: dict[str, Any] = {
        name: {
            "keystrokes": len(values),
            "prompt_tokens": summarize([p for p, _ in values]),
            "re_encoded_tokens": summarize([r for _, r in values]),
            "reused_fraction_mean": sum(1 - r / p for p, r in values) / max(len(values), 1),
        }
        for name, values in rows.items()
    }
    info = machine_info("cpu")
    payload = {"date": utc_now(), "command": command_line(__file__, argv), "machine": info, "budget": args.budget,
               "files": [str(p.relative_to(FIXTURES_DIR)) for p in files], "summary": summary}
    out = write_json(RESULTS_DIR / "chat_prompt_reuse.json", payload)
    table = markdown_table(
        ["format", "keystrokes", "prompt tokens (median)", "re-encoded per keystroke (median)",
         "re-encoded (p95)", "re-encoded (max)", "prompt reused (mean)"],
        [
            [name, s["keystrokes"], s["prompt_tokens"]["p50"], s["re_encoded_tokens"]["p50"],
             s["re_encoded_tokens"]["p95"], s["re_encoded_tokens"]["max"], f"{100 * s['reused_fraction_mean']:.1f}%"]
            for name, s in summary.items()
        ],
    )
    print(f"{payload['command']}\n{machine_line(info)}\n\n{table}\n\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
