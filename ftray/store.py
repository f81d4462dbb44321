"""The artifact store: where every stage's output lives, and how artifacts are named.

Layout under `<storage>/<project>/`: `datasets/`, `runs/`, `evals/`, `models/`, `cache/`.
An artifact is complete once its `manifest.json` exists; ids are content hashes of a stage's
inputs, so re-running a stage with the same inputs finds the finished artifact and reuses it,
and two different inputs never share a folder.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

import ftray
from ftray.errors import UserError

MANIFEST = "manifest.json"
# One folder or file name inside the store: ids, file names, `date=...` partitions. No
# separators, no leading dot, no `..`, so no id from a user or a request can leave the project.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=-]{0,199}")
_EVENT = re.compile(r"(\d{12})\.json")
_APPEND_ATTEMPTS = 50
_CREATE_LOCK = threading.Lock()  # see _create_new


def check_name(name: str, what: str = "name") -> str:
    """`name` if it is a safe single name in the store (an id, a file name); else UserError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise UserError(
            f"{what} {name!r} is not a valid id: use letters, digits, '_', '-', '.' and '=' "
            "(up to 200), starting with a letter, digit or '_', without '..', '/' or '\\'."
        )
    return name


def content_id(prefix: str, *parts: Any) -> str:
    """`<prefix>-<12 hex>` from the JSON of `parts`: equal inputs give equal ids."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def file_digest(path: str, fs: fsspec.AbstractFileSystem | None = None) -> str:
    """sha256 of a file's bytes (local unless `fs` says otherwise), streamed."""
    digest = hashlib.sha256()
    with (fs or fsspec.filesystem("file")).open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """ftray's version, plus the git commit when running from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ftray.__version__
    return f"{ftray.__version__}+g{sha}"


def event_id() -> str:
    """A unique name for a file many writers add to (`<time ns>-<8 hex>`): concurrent writers
    never collide. Names sort by the writers' clocks, so where order matters use
    `Store.write_event`, whose order is a sequence, not a clock."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def utc_stamp(seconds: float | None = None) -> str:
    """`seconds` since the epoch (default: now) as the ISO 8601 UTC time records carry."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def current_user() -> str:
    """Who runs this process, for the `by` of recorded decisions."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy every file under `uri` (a path or fsspec URI) into `local_dir`."""
    fs, source = fsspec.core.url_to_fs(uri)
    source = source.rstrip("/")
    local_dir = Path(local_dir)
    for path in fs.find(source):
        dest = local_dir / path[len(source) :].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(dest))
    return local_dir


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> str:
    """Write `data` to a temp name next to `path`, then move it into place: a reader sees
    the old file or the whole new one, never a part (a crash leaves at most a `.tmp-` file,
    which readers skip)."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, "wb") as handle:
            handle.write(data)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise
    return path


def _create_new(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Write `data` at `path` only if nothing is there; False if something already was.

    Locally the whole file is written under a temp name and hard-linked into place, which
    fails atomically when the name exists. Elsewhere it is the driver's exclusive create
    (`pipe_file(mode="create")`): atomic where the driver implements it with a conditional
    write, otherwise an existence check just before the write. That check runs under a
    process-wide lock, so threads of one process never both win a name on any driver
    (`memory://` included); across processes it is best effort on such drivers.
    """
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as handle:
            handle.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                with open(path, "xb") as handle:
                    handle.write(data)
            except FileExistsError:
                return False
        finally:
            os.unlink(tmp)
        return True
    try:
        with _CREATE_LOCK:
            fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


class Store:
    """One project's artifacts under a storage root (local path or fsspec URI)."""

    def __init__(self, storage: str, project: str):
        if "://" not in storage:
            storage = os.path.abspath(os.path.expanduser(storage))
        try:
            self.fs, root = fsspec.core.url_to_fs(storage)
        except (ImportError, ValueError) as err:
            raise UserError(
                f"storage {storage!r} cannot be opened: {err}. Use a local path, or install "
                "the fsspec driver for its scheme (s3fs, gcsfs, adlfs)."
            ) from None
        check_name(project, "project")
        self.storage = storage
        self.root = f"{root.rstrip('/')}/{project}"
        self.project = project
        self._protocol = "" if "://" not in storage else storage.split("://", 1)[0]

    @property
    def is_local(self) -> bool:
        """Whether the store is a local (or mounted shared) folder."""
        return not self._protocol or self._protocol == "file"

    def path(self, *parts: str) -> str:
        """A path inside the project, as the store's filesystem names it; every part must be
        one safe name (`check_name`), so an id can never point outside its folder."""
        return "/".join([self.root, *(check_name(part) for part in parts)])

    def uri(self, *parts: str) -> str:
        """A path inside the project as a URI other libraries (Ray, pyarrow) open."""
        path = self.path(*parts)
        return f"{self._protocol}://{path}" if self._protocol else path

    def is_complete(self, *parts: str) -> bool:
        """Whether the artifact at `parts` finished (its manifest exists)."""
        return self.fs.exists(self.path(*parts, MANIFEST))

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write a file atomically (`write_bytes_atomic`); returns its path."""
        return write_bytes_atomic(self.fs, self.path(*parts), data)

    def write_text(self, text: str, *parts: str) -> str:
        """Write a UTF-8 text file atomically; returns its path."""
        return self.write_bytes(text.encode(), *parts)

    def write_json(self, obj: Any, *parts: str) -> str:
        """Write `obj` as JSON, atomically; returns its path."""
        return self.write_bytes(_json_bytes(obj), *parts)

    def write_parquet(self, table, *parts: str) -> str:
        """Write a pyarrow Table as parquet, atomically; returns its path."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        return self.write_bytes(buffer.getvalue().to_pybytes(), *parts)

    def read_json(self, *parts: str) -> Any:
        with self.fs.open(self.path(*parts)) as handle:
            return json.load(handle)

    def finish(self, manifest: dict, *parts: str) -> dict:
        """Mark the artifact at `parts` complete by writing its manifest, last."""
        manifest = {"created_at": utc_stamp(), **manifest}
        self.write_json(manifest, *parts, MANIFEST)
        return manifest

    def manifest(self, *parts: str) -> dict:
        return self.read_json(*parts, MANIFEST)

    def write_event(self, event: dict, *parts: str) -> str:
        """Append one event to the log folder `parts`; returns its file name.

        Events are numbered files (`<sequence:012d>.json`) created only if absent, so two
        writers never overwrite each other: the one that loses a number takes the next. The
        log's order is that sequence, never the writers' clocks.
        """
        return self._append(lambda names: event, parts)[0]

    def append_event(self, build: Callable[[list[dict]], dict], *parts: str) -> dict:
        """Append `build(events so far)` to the log `parts`, only if no other event landed in
        between; otherwise read the log again and rebuild (`build` may raise UserError when
        the new state makes the event wrong, e.g. the model is already in production).

        This is what makes concurrent registry writes safe: each is decided on the log it
        extends, and the loser of a race is decided again on the log with the winner in it.
        """
        _, event = self._append(
            lambda names: build([self.read_json(*parts, n) for n in names]), parts
        )
        return event

    def _append(
        self, build: Callable[[list[str]], dict], parts: tuple[str, ...]
    ) -> tuple[str, dict]:
        """Create the log's next numbered file with `build(event file names so far)`; on a
        lost race, list the log again and retry. Returns the file name and the event."""
        for _ in range(_APPEND_ATTEMPTS):
            names = self._event_names(parts)
            event = build(names)
            name = f"{max((_sequence(n) for n in names), default=0) + 1:012d}.json"
            if _create_new(self.fs, self.path(*parts, name), _json_bytes(event)):
                return name, event
        raise UserError(
            f"could not add an event to {self.uri(*parts)}: other writers took the next "
            f"{_APPEND_ATTEMPTS} places first. Nothing was written; run the command again."
        )

    def read_events(self, *parts: str) -> list[dict]:
        """Every event in the log folder `parts`, in log order (temp files skipped)."""
        return [self.read_json(*parts, name) for name in self._event_names(parts)]

    def _event_names(self, parts: tuple[str, ...]) -> list[str]:
        """The log's event files in order: numbered ones by number, after any written by
        earlier versions under clock-based names (`<time ns>-<hex>.json`), which keep name order."""
        folder = self.path(*parts)
        self.fs.invalidate_cache(folder)  # object stores cache listings; others write here
        if not self.fs.exists(folder):
            return []
        names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)]
        return sorted((n for n in names if n.endswith(".json")), key=lambda n: (_sequence(n), n))

    def put_dir(self, local_dir: str | Path, *parts: str) -> str:
        """Copy a local folder into the store."""
        target = self.path(*parts)
        self.fs.makedirs(target, exist_ok=True)
        for file in sorted(Path(local_dir).rglob("*")):
            if file.is_file():
                dest = f"{target}/{file.relative_to(local_dir).as_posix()}"
                self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(file), dest)
        return target

    def get_dir(self, local_dir: str | Path, *parts: str) -> Path:
        """Copy a folder of the store to local disk."""
        return download_dir(self.uri(*parts), local_dir)

    def list_dirs(self, *parts: str) -> list[str]:
        """Names of the folders directly under `parts` (empty when there is none)."""
        path = self.path(*parts)
        if not self.fs.exists(path):
            return []
        return sorted(
            entry["name"].rstrip("/").rsplit("/", 1)[-1]
            for entry in self.fs.ls(path, detail=True)
            if entry["type"] == "directory"
        )

    def manifests(self, kind: str) -> list[dict]:
        """Manifests of every finished artifact under `kind` (e.g. 'models'), oldest first."""
        names = [name for name in self.list_dirs(kind) if self.is_complete(kind, name)]
        found = [self.manifest(kind, name) for name in names]
        return sorted(found, key=lambda manifest: manifest["created_at"])


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def _sequence(name: str) -> int:
    """An event file's sequence number (0 for clock-named events of older versions)."""
    match = _EVENT.fullmatch(name)
    return int(match.group(1)) if match else 0
