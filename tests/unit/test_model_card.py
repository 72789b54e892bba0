"""The model card's loss plot: every curve the training history has."""

from __future__ import annotations

from pathlib import Path

from dg_lsp.train.model_card import plot_loss_curves, sampler_state_label


def test_loss_plot_draws_the_training_and_held_out_curves(tmp_path: Path) -> None:
    history = [
        {"step": 0, "tokens": 0, "eval_middle": 3.0, "eval_lm": 4.5, "eval_sampler_middle": 6.6},
        *({"step": i, "tokens": 4000 * i, "middle": 3.0 - i / 100, "lm": 4.4} for i in range(1, 50)),
        {"step": 50, "tokens": 200_000, "eval_middle": 2.9, "eval_lm": 4.4, "eval_sampler_middle": 6.1},
        {"step": 51, "tokens": 204_000, "eval_middle": 2.9, "eval_lm": 4.4},  # an older run's record
    ]
    out = plot_loss_curves(history, tmp_path / "loss.png", tokens_before=1_000_000)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_sampler_state_legend_names_the_runs_noise(tmp_path: Path) -> None:
    assert "random middle" in sampler_state_label(absorbing=False)
    assert "masked middle" in sampler_state_label(absorbing=True) and "random" not in sampler_state_label(absorbing=True)
    history = [{"step": 0, "tokens": 0, "eval_middle": 3.0, "eval_lm": 4.5, "eval_sampler_middle": 6.6}]
    assert plot_loss_curves(history, tmp_path / "loss.png", absorbing=True).read_bytes()[:4] == b"\x89PNG"
