"""MODEL_CARD.md for a trained model directory: architecture, data, training, evaluation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from safetensors import safe_open


def _parameters(model_dir: Path) -> tuple[int, int]:
    """(text-model parameters, stored parameters) counted from the safetensors files."""
    total = text = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= int(dim)
                total += count
                if "vision" not in key:
                    text += count
    return text, total


def sampler_state_label(absorbing: bool) -> str:
    """The legend of the held-out sampler-state curve: what the noised middle holds for this run's noise."""
    middle = "masked middle (the noise token)" if absorbing else "random middle"
    return f"held-out: middle in the sampler's state ({middle}, clean padding)"


def plot_loss_curves(history: list[dict[str, Any]], out: Path, tokens_before: int = 0, absorbing: bool = False) -> Path:
    """PNG of the training (smoothed) and held-out losses against tokens seen (``absorbing``: a run with a noise token)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [r for r in history if "middle" in r]
    if train:
        xs = [(tokens_before + r["tokens"]) / 1e6 for r in train]
        window = max(1, len(train) // 30)
        for key, label, color in (("middle", "train: middle + first <eom>", "tab:blue"), ("lm", "train: encoder next-token", "tab:orange")):
            values = [float(r[key]) for r in train]
            smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]
            ax.plot(xs, smooth, color=color, alpha=0.5, linewidth=1, label=f"{label} (mean of {window})")
    evals = [r for r in history if "eval_middle" in r]
    if evals:
        xs = [(tokens_before + r["tokens"]) / 1e6 for r in evals]
        ax.plot(xs, [r["eval_middle"] for r in evals], "o-", color="tab:blue", label="held-out: middle + first <eom>")
        ax.plot(xs, [r["eval_lm"] for r in evals], "s-", color="tab:orange", label="held-out: encoder next-token")
        sampler = [r for r in evals if "eval_sampler_middle" in r]
        if sampler:
            ax.plot(
                [(tokens_before + r["tokens"]) / 1e6 for r in sampler], [r["eval_sampler_middle"] for r in sampler],
                "^-", color="tab:green", label=sampler_state_label(absorbing),
            )
    ax.set_xlabel("tokens seen (millions, context + canvas, incl. the warm start's)")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("dg-code-small training", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_model_card(
    model_dir: Path,
    summary: dict[str, Any],
    manifest: dict[str, Any],
    command: str,
    train_seconds: float | None,
    evaluation: str | None = None,
    lineage: str | None = None,
    limits: str | None = None,
) -> Path:
    """Write ``MODEL_CARD.md`` into ``model_dir``."""
    geometry = summary.get("geometry", {})
    config = summary.get("config", {})
    text_params, stored = _parameters(model_dir)
    languages = manifest.get("languages", {})
    licenses = manifest.get("licenses", {})
    registries = manifest.get("registries", {})
    packages = manifest.get("packages", [])
    lines = [
        "# dg-code-small",
        "",
        "The embedded default model of dg-lsp: a small code-infilling model with the DiffusionGemma",
        "architecture (`DiffusionGemmaForBlockDiffusion`, transformers 5.23), trained by `dg_lsp.train` on",
        "permissively licensed source from PyPI, npm and Debian. Apache-2.0.",
        *(["", lineage] if lineage else []),
        "",
        "## Architecture",
        "",
        f"- Text model parameters: {text_params / 1e6:.2f}M (stored tensors incl. the unused tiny vision tower: {stored / 1e6:.2f}M)",
        *[f"- {key}: {value}" for key, value in geometry.items()],
        "- Canvas layout: suffix-prefix-middle FIM in the encoder, middle + `<eom>` padding in the canvas"
        " (`dg_lsp/canvas.py`); uniform-token renoising; self-conditioning.",
        "",
        "## Data",
        "",
        f"- {manifest.get('total_files', '?')} files, {manifest.get('total_bytes', 0) / 1e6:.1f} MB after filtering,"
        f" exact-duplicate removal ({manifest.get('dedup', {}).get('exact_duplicates_dropped', '?')} dropped) and"
        f" HumanEval decontamination ({manifest.get('decontamination', {}).get('dropped', '?')} files dropped).",
        "- By language (MB): " + ", ".join(f"{k} {v['bytes'] / 1e6:.1f}" for k, v in sorted(languages.items())),
        "- By registry (MB): " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(registries.items())),
        "- By license (MB): " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(licenses.items(), key=lambda kv: -kv[1])),
        f"- {len(packages)} packages; the full list with versions and licenses is in the corpus manifest"
        " (`.work/corpus/manifest.json`, rebuilt by the command below).",
        "",
        "## Training",
        "",
        f"- Command: `{command}`",
        f"- Steps: {summary.get('steps')}, tokens seen (context + canvas): {summary.get('tokens', 0) / 1e6:.2f}M",
        f"- Wall time: {train_seconds / 60:.0f} min" if train_seconds else "- Wall time: see training log",
        f"- Final held-out diffusion loss (middle + first `<eom>`): {summary.get('final_eval_loss', float('nan')):.3f}",
        "- Hyper-parameters: " + ", ".join(f"{k}={v}" for k, v in config.items()),
        "",
        "## Evaluation",
        "",
        evaluation or "See `benchmarks/RESULTS.md` (HumanEval single-line infilling through the LSP).",
        "",
        *(["## Known limits", "", limits, ""] if limits else []),
    ]
    path = model_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    """Regenerate a model card: ``python -m dg_lsp.train.model_card MODEL_DIR --train DIR --corpus DIR``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--evaluation", type=Path, default=None, help="markdown file with evaluation numbers")
    parser.add_argument("--lineage", type=Path, default=None, help="markdown file: how this model came to be")
    parser.add_argument("--limits", type=Path, default=None, help="markdown file: known limits")
    args = parser.parse_args()
    summary = json.loads((args.train / "train-summary.json").read_text())
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    evaluation = args.evaluation.read_text() if args.evaluation else None
    seconds = args.minutes * 60 if args.minutes else None
    lineage = args.lineage.read_text() if args.lineage else None
    limits = args.limits.read_text() if args.limits else None
    print(write_model_card(args.model_dir, summary, manifest, args.command, seconds, evaluation, lineage, limits))


if __name__ == "__main__":
    main()
