"""The model cache (GGUF conversions, the tiny model): an entry counts only once complete."""

from __future__ import annotations

import pytest

from ftray import models
from ftray.store import Store


def _build(files: dict[str, str], fail_after: int | None = None):
    calls = []

    def build(out):
        calls.append(out)
        for index, (name, text) in enumerate(files.items()):
            if fail_after is not None and index == fail_after:
                raise KeyboardInterrupt  # the conversion is cut short
            (out / name).write_text(text)

    return build, calls


def test_an_interrupted_build_is_built_again(tmp_path):
    store = Store(str(tmp_path), "p")
    broken, _ = _build({"config.json": "{}", "model.safetensors": "w"}, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        models._cached(store, "gguf-0123456789ab", broken)
    assert not store.is_complete("cache", "models", "gguf-0123456789ab")
    build, calls = _build({"config.json": "{}", "model.safetensors": "w"})
    folder = models._cached(store, "gguf-0123456789ab", build)
    assert len(calls) == 1 and store.is_complete("cache", "models", "gguf-0123456789ab")
    assert (
        tmp_path / "p" / "cache" / "models" / "gguf-0123456789ab" / "model.safetensors"
    ).is_file()
    assert models._cached(store, "gguf-0123456789ab", build) == folder and len(calls) == 1


def test_a_half_written_store_entry_is_cleared_before_the_rebuild(tmp_path):
    store = Store(str(tmp_path), "p")
    store.write_text("stale", "cache", "models", "gguf-0123456789ab", "old-shard.safetensors")
    build, _ = _build({"config.json": "{}"})
    folder = models._cached(store, "gguf-0123456789ab", build)
    assert sorted(
        p.name for p in (tmp_path / "p" / "cache" / "models" / "gguf-0123456789ab").iterdir()
    ) == [
        "config.json",
        "manifest.json",
    ]
    assert folder.endswith("gguf-0123456789ab")


def test_a_remote_cache_copy_cut_short_is_copied_again(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    store = Store("memory://ftray-model-cache", "p")
    build, _ = _build({"config.json": "{}", "model.safetensors": "weights"})
    local = models._cached(store, "gguf-0123456789ab", build)
    assert local.startswith(str(tmp_path / "home"))
    (tmp_path / "home" / ".cache/ftray/models/gguf-0123456789ab/.ftray-complete").unlink()
    (tmp_path / "home" / ".cache/ftray/models/gguf-0123456789ab/model.safetensors").write_text(
        "cut"
    )
    assert models._cached(store, "gguf-0123456789ab", build) == local
    assert (
        tmp_path / "home" / ".cache/ftray/models/gguf-0123456789ab/model.safetensors"
    ).read_text() == "weights"
