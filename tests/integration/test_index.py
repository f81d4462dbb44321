"""`ftray index` on the session's Ray: a small corpus indexed, searched, re-indexed unchanged
(same id) and with one document changed (a new id, and `index diff` shows the change)."""

from __future__ import annotations

import json

import yaml

from ftray.rag.index import open_index
from ftray.store import Store

DOCS = {
    "fees.md": "# Fees\n\nThe Everyday account costs 4.50 QB$ a month. A replacement card "
    "costs 12 QB$ and arrives in 6 working days.",
    "branches.html": "<html><head><style>p{}</style></head><body><h1>Branches</h1><p>The "
    "Harrow Street branch opens at 08:30 and closes at 17:00 on weekdays.</p></body></html>",
    "disputes.txt": "A card payment can be disputed within 45 days of the statement date. "
    "Disputes are answered within 10 working days.",
    "faq.jsonl": json.dumps({"id": "savings", "text": "The Nest saver pays 3.1% interest."})
    + "\n"
    + json.dumps({"id": "blank", "text": " "})
    + "\n",
}


def test_index_search_reindex_and_diff(tmp_path, run_cli):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    job = tmp_path / "job.yaml"
    store_root = tmp_path / "store"
    job.write_text(
        yaml.safe_dump(
            {
                "project": "rag",
                "storage": str(store_root),
                "model": {"base": "tiny"},
                "data": {"sources": [{"path": str(tmp_path / "unused.jsonl")}]},
                "index": {"sources": [str(docs)], "chunk_size": 12, "chunk_overlap": 3},
            }
        )
    )

    first = run_cli("index", str(job))
    store = Store(str(store_root), "rag")
    (manifest,) = store.manifests("indexes")
    index_id = manifest["index_id"]
    assert f"index {index_id}: 4 files, 5 documents" in first.stdout
    # 22 + 14 + 20 + 6 words (fees, branches, disputes, faq) in windows of 12 advancing by 9
    assert manifest["counts"] == {
        "files": 4,
        "documents": 5,
        "chunks": 8,
        "skipped_documents": 1,
    }
    assert manifest["skipped"] == [
        {"source": "faq.jsonl#blank", "file": "faq.jsonl", "reason": "no text (empty document)"}
    ]
    assert {f["name"]: f["chunks"] for f in manifest["files"]} == {
        "branches.html": 2,
        "disputes.txt": 2,
        "faq.jsonl": 1,
        "fees.md": 3,
    }

    retriever = open_index(store, "latest")
    assert retriever.index_id == index_id
    answers = retriever.search_many(
        ["How many days do I have to dispute a card payment?", "When does Harrow Street open?"], 2
    )
    assert [hits[0].source for hits in answers] == ["disputes.txt", "branches.html"]
    assert "45 days" in " ".join(c.text for c in answers[0])
    assert answers[0][0].score >= answers[0][1].score > 0

    again = run_cli("index", str(job))
    assert f"index {index_id} unchanged: reused" in again.stdout
    assert len(store.manifests("indexes")) == 1

    (docs / "fees.md").write_text(DOCS["fees.md"].replace("4.50", "5.25"))
    run_cli("index", str(job))
    new_id = store.manifests("indexes")[-1]["index_id"]
    assert new_id != index_id
    changed = json.loads(run_cli("index", "diff", str(job), index_id, new_id).stdout)
    assert changed["files"] == {"added": [], "removed": [], "changed": ["fees.md"]}
    # only fees.md's first chunk holds the price; the other seven are the same chunks
    assert (len(changed["chunks"]["added"]), len(changed["chunks"]["removed"])) == (1, 1)
    assert changed["chunks"]["unchanged"] == 7
    assert "5.25" in open_index(store, new_id).search("monthly cost of Everyday account", 1)[0].text
