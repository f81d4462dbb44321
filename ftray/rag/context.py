"""Retrieved chunks and how they enter a chat: the single place that formats context.

Training data (RAFT-style), evaluation arms and the Serve app all call `with_context`, so a
model tuned with retrieved context is asked exactly the way it was taught.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Chunk:
    """One retrieved piece of a document.

    Attributes:
        id: content-addressed id (`chunk_id(source, text)`), stable across re-indexing of an
            unchanged chunk; what training records, evaluation scores and responses cite.
        source: the document it comes from (path relative to the corpus root, `#` ordinal).
        text: the chunk's text.
        score: the retriever's fused score (higher is better; 0 when not retrieved).
    """

    id: str
    source: str
    text: str
    score: float = 0.0


class Retriever(Protocol):
    """Anything that answers a query with its best chunks, best first."""

    def search(self, query: str, k: int) -> list[Chunk]: ...


def chunk_id(source: str, text: str) -> str:
    """A short content address of a chunk: the same text from the same document, the same id."""
    return hashlib.sha256(f"{source}\0{text}".encode()).hexdigest()[:16]


def format_context(chunks: list[Chunk]) -> str:
    """The context block: each chunk under its id, so an answer can cite `[id]`."""
    return "\n\n".join(f"[{c.id}] ({c.source})\n{c.text.strip()}" for c in chunks)


def last_question(messages: list[dict[str, str]]) -> str:
    """The text of the last user turn: what retrieval searches for."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def with_context(messages: list[dict[str, str]], chunks: list[Chunk]) -> list[dict[str, str]]:
    """`messages` with the context block put before the last user turn's text.

    No chunks leaves the messages as they are (a retrieval miss asks the plain question).
    """
    if not chunks:
        return messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    turn = messages[last]
    content = f"Context:\n{format_context(chunks)}\n\nQuestion: {turn['content']}"
    return [*messages[:last], {**turn, "content": content}, *messages[last + 1 :]]
