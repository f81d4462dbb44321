"""Artifact store: ids, manifests, atomic writes, local and fsspec URIs."""

from __future__ import annotations

import json

import pytest

from ftray.errors import UserError
from ftray.store import Store, code_version, content_id, file_digest


def test_content_id_is_deterministic_and_key_order_free():
    one = content_id("ds", {"a": 1, "b": [1, 2]}, "x")
    assert one == content_id("ds", {"b": [1, 2], "a": 1}, "x")
    assert one.startswith("ds-") and len(one) == len("ds-") + 12
    assert one != content_id("ds", {"a": 2, "b": [1, 2]}, "x")
    assert one != content_id("run", {"a": 1, "b": [1, 2]}, "x")


def test_file_digest_follows_bytes(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("hello")
    first = file_digest(str(path))
    path.write_text("hello!")
    assert file_digest(str(path)) != first


def test_artifact_is_complete_only_after_manifest(tmp_path):
    store = Store(str(tmp_path), "proj")
    store.write_json({"x": 1}, "datasets", "ds-1", "report.json")
    assert not store.is_complete("datasets", "ds-1")
    manifest = store.finish({"counts": {"train": 3}}, "datasets", "ds-1")
    assert store.is_complete("datasets", "ds-1")
    assert store.manifest("datasets", "ds-1") == manifest
    assert "created_at" in manifest
    assert store.list_dirs("datasets") == ["ds-1"]
    assert store.list_dirs("runs") == []
    assert not list(tmp_path.rglob("*.tmp-*")), "temp files are moved into place"


def test_put_and_get_dir_round_trip(tmp_path):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.json").write_text(json.dumps({"a": 1}))
    (source / "sub" / "b.bin").write_bytes(b"\x00\x01")
    store = Store(str(tmp_path / "store"), "p")
    store.put_dir(source, "models", "m-1")
    back = store.get_dir(tmp_path / "back", "models", "m-1")
    assert (back / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((back / "a.json").read_text()) == {"a": 1}


def test_memory_filesystem_uri():
    store = Store("memory://ftray-test", "p")
    assert not store.is_local
    store.finish({"k": 1}, "evals", "e-1")
    assert store.uri("evals", "e-1").startswith("memory://")
    assert store.manifest("evals", "e-1")["k"] == 1


def test_unknown_scheme_is_a_user_error():
    with pytest.raises(UserError, match="cannot be opened"):
        Store("nosuchscheme://bucket/x", "p")


def test_code_version_names_the_package_version():
    from ftray import __version__

    assert code_version().startswith(__version__)
