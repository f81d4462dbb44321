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
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec

import ftray
from ftray.errors import UserError

MANIFEST = "manifest.json"


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
    """A unique, time-ordered name for an event file (`<time ns>-<8 hex>`): concurrent
    writers on object storage never collide, and names sort in time order."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


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
        self.storage = storage
        self.root = f"{root.rstrip('/')}/{project}"
        self.project = project
        self._protocol = "" if "://" not in storage else storage.split("://", 1)[0]

    @property
    def is_local(self) -> bool:
        """Whether the store is a local (or mounted shared) folder."""
        return not self._protocol or self._protocol == "file"

    def path(self, *parts: str) -> str:
        """A path inside the project, as the store's filesystem names it."""
        return "/".join([self.root, *parts])

    def uri(self, *parts: str) -> str:
        """A path inside the project as a URI other libraries (Ray, pyarrow) open."""
        path = self.path(*parts)
        return f"{self._protocol}://{path}" if self._protocol else path

    def is_complete(self, *parts: str) -> bool:
        """Whether the artifact at `parts` finished (its manifest exists)."""
        return self.fs.exists(self.path(*parts, MANIFEST))

    def write_json(self, obj: Any, *parts: str) -> str:
        """Write `obj` as JSON; the write goes to a temp name first, then moves into place."""
        path = self.path(*parts)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        with self.fs.open(tmp, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True, default=str)
        self.fs.mv(tmp, path)
        return path

    def read_json(self, *parts: str) -> Any:
        with self.fs.open(self.path(*parts)) as handle:
            return json.load(handle)

    def finish(self, manifest: dict, *parts: str) -> dict:
        """Mark the artifact at `parts` complete by writing its manifest, last."""
        manifest = {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **manifest}
        self.write_json(manifest, *parts, MANIFEST)
        return manifest

    def manifest(self, *parts: str) -> dict:
        return self.read_json(*parts, MANIFEST)

    def write_event(self, event: dict, *parts: str) -> str:
        """Append one event to the log folder `parts` (one JSON file, never overwritten);
        returns its file name."""
        name = f"{event_id()}.json"
        self.write_json(event, *parts, name)
        return name

    def read_events(self, *parts: str) -> list[dict]:
        """Every event in the log folder `parts`, oldest first (temp files skipped)."""
        folder = self.path(*parts)
        if not self.fs.exists(folder):
            return []
        names = sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False))
        return [self.read_json(*parts, name) for name in names if name.endswith(".json")]

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
