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


@pytest.mark.parametrize(
    "bad", ["../etc", "a/b", "a\\b", ".hidden", "..", "", "model-1/../../x", "a b", "é"]
)
def test_ids_that_could_leave_their_folder_are_refused(tmp_path, bad):
    store = Store(str(tmp_path), "proj")
    with pytest.raises(UserError, match="is not a valid id"):
        store.is_complete("models", bad)
    with pytest.raises(UserError, match="is not a valid id"):
        store.write_json({}, "models", bad, "x.json")
    assert not any(tmp_path.rglob("x.json"))


def test_project_names_are_checked_too(tmp_path):
    with pytest.raises(UserError, match="is not a valid id"):
        Store(str(tmp_path), "../elsewhere")


def test_event_log_order_is_its_sequence_not_the_clock(tmp_path, monkeypatch):
    import time

    store = Store(str(tmp_path), "proj")
    assert store.write_event({"n": 1}, "log") == "000000000001.json"
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() - 10 * 10**9)  # a clock 10 s behind
    monkeypatch.setattr(time, "time", lambda: real() / 1e9 - 10)
    assert store.write_event({"n": 2}, "log") == "000000000002.json"
    assert [e["n"] for e in store.read_events("log")] == [1, 2]


def test_events_of_older_versions_stay_first_in_their_order(tmp_path):
    store = Store(str(tmp_path), "proj")
    store.write_json({"n": 1}, "log", "01733000000000000000-aaaaaaaa.json")
    store.write_json({"n": 2}, "log", "01733000000000000001-bbbbbbbb.json")
    store.write_event({"n": 3}, "log")
    assert [e["n"] for e in store.read_events("log")] == [1, 2, 3]


@pytest.mark.parametrize("storage", ["local", "memory://ftray-race"])
def test_racing_writers_all_land_in_one_total_order(tmp_path, storage):
    import threading

    store = Store(str(tmp_path) if storage == "local" else storage, "race")
    start = threading.Barrier(4)

    def writer(who: int) -> None:
        start.wait()
        for n in range(25):
            store.write_event({"who": who, "n": n}, "log")

    threads = [threading.Thread(target=writer, args=(who,)) for who in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = store.read_events("log")
    assert len(events) == 100, "no event lost"
    names = sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(store.path("log"), detail=False))
    assert names == [f"{seq:012d}.json" for seq in range(1, 101)], "one gap-free sequence"
    for who in range(4):  # each writer's own events keep their order
        assert [e["n"] for e in events if e["who"] == who] == list(range(25))


def test_append_is_decided_again_when_another_writer_got_there_first(tmp_path):
    store = Store(str(tmp_path), "proj")
    seen = []

    def build(events):
        seen.append(len(events))
        if len(seen) == 1:  # another writer lands between this read and this write
            store.write_event({"by": "other"}, "log")
        return {"by": "me", "after": len(events)}

    assert store.append_event(build, "log") == {"by": "me", "after": 1}
    assert seen == [0, 1]
    assert [e["by"] for e in store.read_events("log")] == ["other", "me"]


def test_interrupted_writes_leave_the_old_file_whole(tmp_path, monkeypatch):
    store = Store(str(tmp_path), "proj")
    store.write_text("old", "monitor", "report.md")

    def broken_mv(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store.fs, "mv", broken_mv)
    with pytest.raises(OSError, match="disk full"):
        store.write_text("new", "monitor", "report.md")
    assert (tmp_path / "proj" / "monitor" / "report.md").read_text() == "old"
    assert [p.name for p in (tmp_path / "proj" / "monitor").iterdir()] == ["report.md"]
