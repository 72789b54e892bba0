"""Loading DiffusionGemma as it is published: sharded weights with an index, hub ids, the vision tower dropped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dg_lsp.model.hub import looks_like_repo_id, resolve_model
from dg_lsp.model.loader import ModelLoadError, load_model
from dg_lsp.model.weights import INDEX_FILE, weight_files

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def checkpoint(published_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the published-layout checkpoint, to break."""
    return Path(shutil.copytree(published_model_dir, tmp_path / "published"))


def shards(path: Path) -> list[str]:
    index = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))
    return sorted(set(index["weight_map"].values()))


def fake_hub_cache(cache: Path, repo_id: str, files: Path) -> Path:
    """The huggingface_hub cache layout (refs/main → snapshots/COMMIT) holding a copy of ``files``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT, encoding="ascii")
    return Path(shutil.copytree(files, repo / "snapshots" / COMMIT))


def test_the_published_layout_is_sharded_with_an_index(published_model_dir: Path) -> None:
    files, total_size = weight_files(published_model_dir)
    assert len(files) >= 2 and [f.name for f in files] == shards(published_model_dir)
    assert total_size is not None and total_size == pytest.approx(sum(f.stat().st_size for f in files), rel=0.05)


def test_sharded_weights_load_and_the_vision_tower_is_dropped(published_model_dir: Path) -> None:
    loaded = load_model(published_model_dir, "cpu", "float32")
    encoder = loaded.model.model.encoder
    assert encoder.vision_tower is None and encoder.embed_vision is None
    assert not any("vision" in name for name, _ in loaded.model.named_parameters())
    kept = load_model(published_model_dir, "cpu", "float32", keep_vision=True)
    vision_bytes = sum(p.nbytes for p in kept.model.model.encoder.vision_tower.parameters())
    total = sum(p.nbytes for p in kept.model.parameters())
    assert sum(p.nbytes for p in loaded.model.parameters()) == total - vision_bytes - sum(
        p.nbytes for p in kept.model.model.encoder.embed_vision.parameters()
    )
    ids = torch.tensor([[2, 105, 200, 201, 106]])
    with torch.inference_mode():
        dropped = loaded.model(input_ids=ids, decoder_input_ids=ids).logits
        whole = kept.model(input_ids=ids, decoder_input_ids=ids).logits
    assert torch.equal(dropped, whole)  # text-only forward never used the tower


def test_a_missing_shard_is_named(checkpoint: Path) -> None:
    gone = shards(checkpoint)[-1]
    (checkpoint / gone).unlink()
    with pytest.raises(ModelLoadError) as caught:
        load_model(checkpoint, "cpu", "float32")
    assert str(caught.value) == f"{checkpoint} is missing weight shard {gone} (listed in {INDEX_FILE})"


def test_a_truncated_shard_is_named(checkpoint: Path) -> None:
    broken = checkpoint / shards(checkpoint)[0]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=rf"^weight file {broken.name} in .* is corrupt or incomplete \("):
        load_model(checkpoint, "cpu", "float32")


def test_a_broken_index_is_named(checkpoint: Path) -> None:
    (checkpoint / INDEX_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelLoadError, match=rf"{INDEX_FILE} is not valid JSON"):
        load_model(checkpoint, "cpu", "float32")


def test_repo_ids_and_paths_are_told_apart(tmp_path: Path) -> None:
    assert looks_like_repo_id("google/diffusiongemma-26B-A4B-it")
    for path in ("./google/x", "~/models/x", "/models/x", "a/b/c", "dg-code-small", "bad name/x"):
        assert not looks_like_repo_id(path), path
    (tmp_path / "google" / "m").mkdir(parents=True)
    local = tmp_path / "google" / "m"
    assert resolve_model(local).path == local and resolve_model(local).repo_id is None


def test_a_hub_id_resolves_to_its_cached_snapshot(published_model_dir: Path, tmp_path: Path) -> None:
    snapshot = fake_hub_cache(tmp_path / "hub", "google/dg-tiny-it", published_model_dir)
    resolved = resolve_model("google/dg-tiny-it", cache_dir=tmp_path / "hub")
    assert (resolved.path, resolved.repo_id, resolved.name) == (snapshot, "google/dg-tiny-it", "google/dg-tiny-it")


def test_a_hub_id_not_downloaded_says_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(Exception) as caught:
        resolve_model("google/diffusiongemma-26B-A4B-it", cache_dir=tmp_path / "empty")
    message = str(caught.value)
    assert "google/diffusiongemma-26B-A4B-it is neither a local directory nor in the Hugging Face cache" in message
    assert "`hf download google/diffusiongemma-26B-A4B-it`" in message
    assert "dg-lsp does not download models" in message


def test_load_model_by_hub_id_uses_the_cache(
    published_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    snapshot = fake_hub_cache(tmp_path / "hub", "google/dg-tiny-it", published_model_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_model("google/dg-tiny-it", "cpu", "float32")
    assert loaded.name == "google/dg-tiny-it" and loaded.path == snapshot.resolve()
    with pytest.raises(ModelLoadError, match=r"`hf download google/not-here`"):
        load_model("google/not-here", "cpu", "float32")


def test_a_missing_shard_of_a_hub_model_says_how_to_fetch_it(
    published_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    snapshot = fake_hub_cache(tmp_path / "hub", "google/dg-tiny-it", published_model_dir)
    gone = shards(snapshot)[0]
    (snapshot / gone).unlink()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError) as caught:
        load_model("google/dg-tiny-it", "cpu", "float32")
    assert f"is missing weight shard {gone}" in str(caught.value)
    assert str(caught.value).endswith("; run `hf download google/dg-tiny-it` again to fetch it")
