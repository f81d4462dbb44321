"""The corpus: which files `index.sources` names, the documents in them, and their chunks.

Pure functions (no Ray): `ftray index` runs `read_chunks` in Ray Data tasks, and the tests call
them directly. A document is named by its `source`: its path relative to the source entry it
came from (`fees.md`), or for a .jsonl line the record's `source`, else `<file>#<id or line>`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from ftray.errors import UserError
from ftray.rag.context import chunk_id

SUFFIXES = (".md", ".txt", ".html", ".htm", ".jsonl", ".pdf")
_GLOB_CHARS = "*?["
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class CorpusFile:
    """One file of the corpus: where it is, its name in the index, and its content hash."""

    path: str
    name: str
    sha256: str
    bytes: int


def find_files(sources: list[str]) -> list[CorpusFile]:
    """The corpus files `sources` names, sorted by name, each read once to hash it.

    Raises UserError naming the entry when an entry matches no supported file, a file cannot
    be read, or two entries give files the same name.
    """
    found: dict[str, CorpusFile] = {}
    for entry in sources:
        matches = _expand(entry)
        if not matches:
            raise UserError(
                f"index.sources: {entry!r} matches no document (looked for "
                f"{', '.join(SUFFIXES)} files at {os.path.abspath(entry)}; paths are relative "
                "to the folder ftray runs in). Fix the path or pattern."
            )
        for path, name in matches:
            try:
                data = Path(path).read_bytes()
            except OSError as err:
                raise UserError(f"index.sources: cannot read {path}: {err.strerror}") from None
            if name in found and found[name].path != path:
                raise UserError(
                    f"index.sources: {path} and {found[name].path} would both be named "
                    f"{name!r} in the index; list their folders in separate entries or rename one."
                )
            found[name] = CorpusFile(path, name, hashlib.sha256(data).hexdigest(), len(data))
    return [found[name] for name in sorted(found)]


def _expand(entry: str) -> list[tuple[str, str]]:
    """(path, name) of each supported file an entry names; names are relative to the entry's
    folder (a file's own folder, a folder, or a glob's part before its first wildcard)."""
    if any(char in entry for char in _GLOB_CHARS):
        fixed = entry[: min(entry.index(c) for c in _GLOB_CHARS if c in entry)]
        root = fixed if fixed.endswith("/") else os.path.dirname(fixed)
        paths = [p for p in glob.glob(entry, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(entry):
        root, paths = entry, [str(p) for p in Path(entry).rglob("*") if p.is_file()]
    elif os.path.isfile(entry):
        root, paths = os.path.dirname(entry), [entry]
    else:
        return []
    return sorted(
        (os.path.normpath(p), Path(os.path.relpath(p, root or ".")).as_posix())
        for p in paths
        if p.lower().endswith(SUFFIXES)
    )


def read_documents(path: str, name: str, sha256: str | None = None) -> list[tuple[str, str]]:
    """(source, text) of each document in one corpus file; UserError names the file (and
    line) when it is not UTF-8 (a PDF: not readable), a .jsonl line is not an object with a
    string `text`, or its bytes no longer have the `sha256` the index id was computed from."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{path} changed while it was being indexed; run `ftray index` again")
    if Path(path).suffix.lower() == ".pdf":
        return [(name, pdf_text(data, path))]
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    suffix = Path(path).suffix.lower()
    if suffix in (".html", ".htm"):
        return [(name, html_text(raw))]
    if suffix == ".jsonl":
        return _jsonl_documents(path, name, raw)
    return [(name, raw)]


def _jsonl_documents(path: str, name: str, raw: str) -> list[tuple[str, str]]:
    documents = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(
                f"{path}:{number}: each line must be an object with a string `text` "
                "(and optionally `id` and `source`)"
            )
        source = record.get("source") or f"{name}#{record.get('id', number)}"
        documents.append((str(source), record["text"]))
    return documents


class _TextOnly(HTMLParser):
    """The text of an HTML page outside <script>, <style> and <head>, blocks on new lines."""

    _HIDDEN = frozenset({"script", "style", "head", "template", "noscript"})
    _BLOCKS = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_text(html: str) -> str:
    """The visible text of an HTML page (the standard library's parser: no extra package)."""
    parser = _TextOnly()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def pdf_text(data: bytes, path: str) -> str:
    """The text layer of a PDF, page after page (pypdf: maintained, pure Python, no system
    library). A scanned PDF has none: its text is empty, and the index lists it as skipped.
    UserError names the file when it is no PDF pypdf can read, or is encrypted."""
    import io
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings on sloppy files
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UserError(f"{path}: an encrypted PDF; index a decrypted copy")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a PDF that can be read ({err})") from None
    return "\n\n".join(page.strip() for page in pages if page.strip())


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Windows of `size` words, each starting `size - overlap` words after the last; the text
    between a window's first and last word is kept as written (line breaks, markdown). The
    last window ends at the last word, so no word is left out."""
    spans = [match.span() for match in _WORD.finditer(text)]
    chunks, step = [], size - overlap
    for start in range(0, len(spans), step):
        window = spans[start : start + size]
        chunks.append(text[window[0][0] : window[-1][1]])
        if start + size >= len(spans):
            break
    return chunks


def chunk_rows(file: CorpusFile, size: int, overlap: int) -> list[dict]:
    """One row per chunk of a corpus file, plus one `skipped` row (with its reason) per
    document that gives no chunk, so nothing leaves the index unaccounted for."""
    rows = []
    for source, text in read_documents(file.path, file.name, file.sha256):
        chunks = chunk_text(text, size, overlap)
        if not chunks:
            rows.append(_row(file, source, -1, "", "no text (empty document)"))
        for ordinal, chunk in enumerate(chunks):
            rows.append(_row(file, source, ordinal, chunk, ""))
    if not rows:
        rows.append(_row(file, file.name, -1, "", "no documents (empty file)"))
    return rows


def _row(file: CorpusFile, source: str, ordinal: int, text: str, skipped: str) -> dict:
    return {
        "id": chunk_id(source, text) if text else "",
        "source": source,
        "file": file.name,
        "ordinal": ordinal,
        "text": text,
        "skipped": skipped,
    }
