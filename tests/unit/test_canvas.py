"""The canvas layout: marker resolution, encoder order, canvas lengths, targets, decoding, noise."""

from __future__ import annotations

import pytest
import torch

from dg_lsp import special_tokens as st
from dg_lsp.canvas import (
    CANVAS_LENGTHS,
    DEFAULT_CANVAS_FOR_KIND,
    HoleKind,
    LayoutTokens,
    canvas_length_for,
    canvas_target,
    encoder_ids,
    layout_overhead,
    middle_from_canvas,
    noise_ids,
    renoise,
    resolve_layout_tokens,
)
from dg_lsp.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def vocab() -> dict[str, int]:
    return dict(tiny_tokenizer().get_vocab(with_added_tokens=True))


@pytest.fixture(scope="module")
def layout(vocab: dict[str, int]) -> LayoutTokens:
    return resolve_layout_tokens(vocab)


def _bare_layout(layout: LayoutTokens) -> LayoutTokens:
    """The same markers without language tags (a third-party tokenizer)."""
    return LayoutTokens(
        bos=layout.bos,
        pad=layout.pad,
        fim_prefix=layout.fim_prefix,
        fim_suffix=layout.fim_suffix,
        fim_middle=layout.fim_middle,
        end_of_middle=layout.end_of_middle,
        stop_ids=layout.stop_ids,
        language_ids={},
    )


# --- resolve_layout_tokens ---------------------------------------------------------------


def test_resolve_layout_tokens_on_tiny_tokenizer(vocab: dict[str, int], layout: LayoutTokens) -> None:
    assert layout.bos == vocab[st.BOS]
    assert layout.pad == vocab[st.PAD]
    assert layout.fim_prefix == vocab[st.FIM_PREFIX]
    assert layout.fim_suffix == vocab[st.FIM_SUFFIX]
    assert layout.fim_middle == vocab[st.FIM_MIDDLE]
    assert layout.end_of_middle == vocab[st.END_OF_MIDDLE]
    assert layout.stop_ids == frozenset({vocab[st.END_OF_MIDDLE], vocab[st.EOS], vocab[st.PAD]})
    # Special tokens come first, in the documented order.
    assert (layout.pad, vocab[st.EOS], layout.bos) == (0, 1, 2)
    assert set(layout.language_ids) == set(st.LANGUAGES)
    for language, token_id in layout.language_ids.items():
        assert token_id == vocab[st.language_token(language)]
    marker_ids = [layout.bos, layout.pad, layout.fim_prefix, layout.fim_suffix, layout.fim_middle, layout.end_of_middle]
    assert len(set(marker_ids)) == len(marker_ids)


@pytest.mark.parametrize("marker", [st.FIM_PREFIX, st.FIM_SUFFIX, st.FIM_MIDDLE, st.BOS, st.PAD])
def test_missing_marker_is_a_clear_error(vocab: dict[str, int], marker: str) -> None:
    lacking = {token: i for token, i in vocab.items() if token != marker}
    with pytest.raises(ValueError, match=f"no '{marker}' token"):
        resolve_layout_tokens(lacking)


def test_end_of_middle_falls_back_to_eos(vocab: dict[str, int]) -> None:
    lacking = {token: i for token, i in vocab.items() if token != st.END_OF_MIDDLE}
    assert resolve_layout_tokens(lacking).end_of_middle == vocab[st.EOS]


def test_missing_end_of_middle_and_its_aliases_is_an_error(vocab: dict[str, int]) -> None:
    lacking = {token: i for token, i in vocab.items() if token not in (st.END_OF_MIDDLE, st.EOS)}
    with pytest.raises(ValueError, match="<eom>"):
        resolve_layout_tokens(lacking)


def test_alias_spellings_are_accepted() -> None:
    vocab = {
        "<pad>": 0,
        "<eos>": 1,
        "<bos>": 2,
        "<|fim_prefix|>": 10,
        "<|fim_suffix|>": 11,
        "<|fim_middle|>": 12,
        "<|file_separator|>": 13,
        "hello": 20,
    }
    layout = resolve_layout_tokens(vocab)
    assert (layout.fim_prefix, layout.fim_suffix, layout.fim_middle, layout.end_of_middle) == (10, 11, 12, 13)
    assert layout.stop_ids == frozenset({0, 1, 13})
    assert layout.language_ids == {}
    assert layout.language_id("python") is None


# --- encoder_ids -------------------------------------------------------------------------


def test_encoder_ids_suffix_prefix_middle_order(layout: LayoutTokens) -> None:
    prefix, suffix = [100, 101], [200, 201, 202]
    ids = encoder_ids(layout, prefix, suffix, "python")
    assert ids == [
        layout.bos,
        layout.language_ids["python"],
        layout.fim_suffix,
        200,
        201,
        202,
        layout.fim_prefix,
        100,
        101,
        layout.fim_middle,
    ]
    assert len(ids) == len(prefix) + len(suffix) + layout_overhead(layout)


@pytest.mark.parametrize("language", ["cobol", None, "text"])
def test_unknown_language_falls_back_to_text_tag(layout: LayoutTokens, language: str | None) -> None:
    ids = encoder_ids(layout, [100], [200], language)
    assert ids[1] == layout.language_ids["text"]
    assert layout.language_id(language) == layout.language_ids["text"]


def test_encoder_ids_without_language_tags(layout: LayoutTokens) -> None:
    bare = _bare_layout(layout)
    ids = encoder_ids(bare, [100], [], "python")
    assert ids == [bare.bos, bare.fim_suffix, bare.fim_prefix, 100, bare.fim_middle]
    assert layout_overhead(bare) == 4
    assert layout_overhead(layout) == 5


def test_empty_prefix_and_suffix(layout: LayoutTokens) -> None:
    ids = encoder_ids(layout, [], [], "go")
    assert ids == [layout.bos, layout.language_ids["go"], layout.fim_suffix, layout.fim_prefix, layout.fim_middle]


# --- canvas_length_for -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [(HoleKind.REST_OF_LINE, 32), (HoleKind.LINE, 64), (HoleKind.BLOCK, 256), (HoleKind.SELECTION, 256)],
)
def test_canvas_length_per_kind(kind: HoleKind, expected: int) -> None:
    assert canvas_length_for(kind, 256) == expected == DEFAULT_CANVAS_FOR_KIND[kind]


def test_canvas_length_is_capped_by_maximum() -> None:
    assert canvas_length_for(HoleKind.BLOCK, 128) == 128
    assert canvas_length_for(HoleKind.LINE, 32) == 32
    # A maximum that is not one of the compiled lengths is still honoured.
    assert canvas_length_for(HoleKind.BLOCK, 100) == 100
    assert canvas_length_for(HoleKind.LINE, 100) == 64


def test_canvas_length_grows_with_needed_tokens() -> None:
    # `needed` tokens plus at least one <eom>.
    assert canvas_length_for(HoleKind.REST_OF_LINE, 256, needed=31) == 32
    assert canvas_length_for(HoleKind.REST_OF_LINE, 256, needed=32) == 64
    assert canvas_length_for(HoleKind.REST_OF_LINE, 256, needed=100) == 128
    assert canvas_length_for(HoleKind.LINE, 256, needed=10) == 64
    assert canvas_length_for(HoleKind.SELECTION, 256, needed=1000) == 256
    assert canvas_length_for(HoleKind.SELECTION, 512, needed=1000) == 512
    assert canvas_length_for(HoleKind.REST_OF_LINE, 64, needed=100) == 64
    for needed in range(0, 300, 7):
        length = canvas_length_for(HoleKind.REST_OF_LINE, 256, needed)
        assert length in CANVAS_LENGTHS
        assert length > needed or length == 256


# --- canvas_target / middle_from_canvas ----------------------------------------------------


def test_canvas_target_pads_with_end_of_middle(layout: LayoutTokens) -> None:
    eom = layout.end_of_middle
    assert canvas_target(layout, [100, 101, 102], 8) == [100, 101, 102] + [eom] * 5
    assert canvas_target(layout, [], 4) == [eom] * 4
    assert canvas_target(layout, [100, 101, 102], 3) == [100, 101, 102]
    assert canvas_target(layout, [100, 101, 102, 103], 2) == [100, 101]


@pytest.mark.parametrize("stop", ["eom", "eos", "pad"])
def test_middle_from_canvas_stops_at_stop_tokens(vocab: dict[str, int], layout: LayoutTokens, stop: str) -> None:
    stop_id = {"eom": layout.end_of_middle, "eos": vocab[st.EOS], "pad": layout.pad}[stop]
    middle, ended = middle_from_canvas(layout, [100, 101, stop_id, 102, layout.end_of_middle])
    assert (middle, ended) == ([100, 101], True)


def test_middle_from_canvas_edges(layout: LayoutTokens) -> None:
    assert middle_from_canvas(layout, [100, 101, 102]) == ([100, 101, 102], False)
    assert middle_from_canvas(layout, [layout.end_of_middle, 100]) == ([], True)
    assert middle_from_canvas(layout, []) == ([], False)
    # Round trip through canvas_target.
    assert middle_from_canvas(layout, canvas_target(layout, [100, 101], 32)) == ([100, 101], True)


# --- renoise -----------------------------------------------------------------------------

VOCAB = 512


def _canvas(batch: int = 1, length: int = 2000) -> torch.Tensor:
    return torch.full((batch, length), 7, dtype=torch.long)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_renoise_level_zero_keeps_everything() -> None:
    canvas = torch.randint(0, VOCAB, (3, 500), generator=_gen(1))
    assert torch.equal(renoise(canvas, 0.0, VOCAB, _gen()), canvas)


def test_renoise_level_one_replaces_nearly_all() -> None:
    canvas = _canvas()
    out = renoise(canvas, 1.0, VOCAB, _gen())
    changed = (out != canvas).float().mean().item()
    # A replacement draws the original id again with probability 1/VOCAB only.
    assert changed > 0.98
    assert int(out.min()) >= 0 and int(out.max()) < VOCAB
    assert out.shape == canvas.shape and out.dtype == canvas.dtype


def test_renoise_intermediate_level_replaces_about_that_fraction() -> None:
    out = renoise(_canvas(length=4000), 0.3, VOCAB, _gen())
    changed = (out != 7).float().mean().item()
    assert 0.25 < changed < 0.35


def test_renoise_never_replaces_kept_positions() -> None:
    canvas = _canvas(batch=2, length=1000)
    keep = torch.zeros_like(canvas, dtype=torch.bool)
    keep[:, ::3] = True
    out = renoise(canvas, 1.0, VOCAB, _gen(), keep=keep)
    assert torch.equal(out[keep], canvas[keep])
    assert (out[~keep] != canvas[~keep]).float().mean().item() > 0.98


def test_renoise_per_row_levels() -> None:
    canvas = _canvas(batch=3, length=2000)
    out = renoise(canvas, torch.tensor([0.0, 1.0, 0.5]), VOCAB, _gen())
    changed = (out != canvas).float().mean(dim=1)
    assert changed[0].item() == 0.0
    assert changed[1].item() > 0.98
    assert 0.45 < changed[2].item() < 0.55


def test_renoise_is_deterministic_with_a_seeded_generator() -> None:
    canvas = _canvas(batch=2, length=300)
    first = renoise(canvas, 0.5, VOCAB, _gen(42))
    second = renoise(canvas, 0.5, VOCAB, _gen(42))
    other = renoise(canvas, 0.5, VOCAB, _gen(43))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    # The input is not modified in place.
    assert torch.equal(canvas, _canvas(batch=2, length=300))


def test_absorbing_renoise_puts_the_noise_token_where_it_replaces() -> None:
    canvas = _canvas(batch=2, length=2000)
    keep = torch.zeros_like(canvas, dtype=torch.bool)
    keep[:, ::4] = True
    out = renoise(canvas, 0.5, VOCAB, _gen(), keep=keep, noise_id=3)
    assert set(out.unique().tolist()) == {3, 7}
    assert torch.equal(out[keep], canvas[keep])
    assert 0.45 < (out[~keep] == 3).float().mean().item() < 0.55


def test_absorbing_renoise_chooses_the_same_positions_as_uniform() -> None:
    """The replace draws come first: both kinds of noise hit the same positions for a seed."""
    canvas = _canvas(batch=2, length=500)
    uniform = renoise(canvas, 0.4, VOCAB, _gen(5))
    absorbing = renoise(canvas, 0.4, VOCAB, _gen(5), noise_id=3)
    assert torch.equal(absorbing == 3, uniform != canvas)


def test_noise_ids_uniform_or_absorbing() -> None:
    uniform = noise_ids((2, 3000), VOCAB, _gen(1), torch.device("cpu"))
    assert uniform.dtype == torch.long and uniform.shape == (2, 3000)
    assert int(uniform.min()) == 0 and int(uniform.max()) == VOCAB - 1
    assert torch.equal(uniform, torch.randint(0, VOCAB, (2, 3000), generator=_gen(1)))
    generator = _gen(1)
    before = generator.get_state()
    absorbing = noise_ids((2, 3), VOCAB, generator, torch.device("cpu"), noise_id=4)
    assert absorbing.tolist() == [[4, 4, 4], [4, 4, 4]] and absorbing.dtype == torch.long
    assert torch.equal(generator.get_state(), before)  # no random draw spent
