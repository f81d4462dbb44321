"""The retrieval corpus without Ray: finding and reading documents, chunking, index ids,
rank fusion, and the errors bad input gets."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from ftray.errors import UserError
from ftray.rag.build import _read_file, plan_index, sort_rows
from ftray.rag.cli import _action
from ftray.rag.context import chunk_id
from ftray.rag.documents import (
    chunk_rows,
    chunk_text,
    find_files,
    html_text,
    read_documents,
)
from ftray.rag.embed import embedder_path
from ftray.rag.index import bm25_tokens, rrf
from ftray.spec.index import IndexSpec


def test_chunks_are_overlapping_windows_of_words_and_keep_every_word():
    text = " ".join(f"w{i}" for i in range(25))
    chunks = chunk_text(text, size=10, overlap=3)
    assert [c.split()[0] for c in chunks] == ["w0", "w7", "w14", "w21"]
    assert chunks[-1].split()[-1] == "w24"
    assert all(len(c.split()) <= 10 for c in chunks)
    assert chunks[0].split()[-3:] == chunks[1].split()[:3]
    covered = {w for c in chunks for w in c.split()}
    assert covered == set(text.split())


def test_a_chunk_keeps_the_text_between_its_words_as_written():
    text = "# Fees\n\nMonthly fee:  4.50 QB$.\n- card: 12"
    assert chunk_text(text, size=100, overlap=10) == [text]
    assert chunk_text("  \n\t ", size=10, overlap=2) == []


def test_short_text_is_one_chunk_and_the_last_window_is_not_repeated():
    assert chunk_text("a b c", size=3, overlap=1) == ["a b c"]
    assert chunk_text("a b c d", size=3, overlap=1) == ["a b c", "c d"]


def test_html_text_drops_markup_scripts_and_styles():
    page = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<h1>Branches</h1><p>Harrow Street opens at 08:30 &amp; closes at 17:00.</p>"
        "<script>var secret = 1;</script></body></html>"
    )
    assert html_text(page) == "Branches\nHarrow Street opens at 08:30 & closes at 17:00."


def test_jsonl_documents_take_their_id_or_source_or_line(tmp_path):
    path = tmp_path / "faq.jsonl"
    lines = [{"id": "q7", "text": "Seven."}, {"text": "Line two."}, {"source": "x.md", "text": "X"}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert read_documents(str(path), "faq.jsonl") == [
        ("faq.jsonl#q7", "Seven."),
        ("faq.jsonl#2", "Line two."),
        ("x.md", "X"),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\nnot json\n', "faq.jsonl:2: not valid JSON"),
        ('{"id": 1}\n', "faq.jsonl:1: each line must be an object with a string `text`"),
        ('["text"]\n', "faq.jsonl:1: each line must be an object"),
    ],
)
def test_bad_jsonl_lines_are_errors_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "faq.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_documents(str(path), "faq.jsonl")


def test_text_that_is_not_utf8_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin\.txt: not UTF-8"):
        read_documents(str(path), "latin.txt")


def test_empty_documents_are_listed_as_skipped_not_dropped(tmp_path):
    (tmp_path / "empty.md").write_text("   \n")
    (tmp_path / "mixed.jsonl").write_text('{"text": ""}\n{"id": "b", "text": "Fee is 4."}\n')
    files = {f.name: f for f in find_files([str(tmp_path)])}
    [empty] = chunk_rows(files["empty.md"], 10, 2)
    assert (empty["skipped"], empty["source"]) == ("no text (empty document)", "empty.md")
    rows = chunk_rows(files["mixed.jsonl"], 10, 2)
    assert [(r["source"], r["skipped"]) for r in rows] == [
        ("mixed.jsonl#1", "no text (empty document)"),
        ("mixed.jsonl#b", ""),
    ]
    assert rows[1]["id"] == chunk_id("mixed.jsonl#b", "Fee is 4.")


def test_sources_are_named_relative_to_their_entry(tmp_path):
    docs = tmp_path / "docs"
    (docs / "cards").mkdir(parents=True)
    (docs / "fees.md").write_text("Fee.")
    (docs / "cards" / "lost.txt").write_text("Lost.")
    (docs / "image.png").write_bytes(b"\x89PNG")
    assert [f.name for f in find_files([str(docs)])] == ["cards/lost.txt", "fees.md"]
    assert [f.name for f in find_files([f"{docs}/**/*.txt"])] == ["cards/lost.txt"]
    assert [f.name for f in find_files([str(docs / "fees.md")])] == ["fees.md"]


def test_no_match_or_a_name_clash_is_an_error_naming_the_entry(tmp_path):
    with pytest.raises(UserError, match=r"'.*nothing/\*\.md' matches no document"):
        find_files([f"{tmp_path}/nothing/*.md"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "fees.md").write_text("A.")
    (tmp_path / "b" / "fees.md").write_text("B.")
    with pytest.raises(UserError, match=r"would both be named 'fees\.md'"):
        find_files([str(tmp_path / "a"), str(tmp_path / "b")])


def test_an_unreadable_file_is_an_error_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "locked.md"
    path.write_text("secret")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    # file permissions do not stop root, which these tests may run as
    monkeypatch.setattr("ftray.rag.documents.Path.read_bytes", refuse)
    with pytest.raises(UserError, match=r"cannot read .*locked\.md: Permission denied"):
        find_files([str(path)])


def test_the_index_id_is_the_content_of_corpus_and_settings(tmp_path):
    (tmp_path / "fees.md").write_text("The fee is 4.50.")
    (tmp_path / "hours.md").write_text("Open at 9.")
    settings = IndexSpec(sources=[str(tmp_path)])
    first, files, _ = plan_index(settings)
    assert first == plan_index(settings)[0]
    assert [f.name for f in files] == ["fees.md", "hours.md"]
    (tmp_path / "fees.md").write_text("The fee is 5.00.")
    changed = plan_index(settings)[0]
    assert changed != first
    assert plan_index(IndexSpec(sources=[str(tmp_path)], chunk_size=100))[0] != changed
    # query-time settings do not change what is indexed, so not the id either
    assert plan_index(IndexSpec(sources=[str(tmp_path)], fusion="bm25", rrf_k=10))[0] == changed
    (tmp_path / "fees.md").write_text("The fee is 4.50.")
    assert plan_index(settings)[0] == first


def test_rrf_rewards_agreement_and_keeps_one_sided_hits():
    fused = rrf([[1, 2, 3], [3, 1, 4]], k=60)
    assert [row for row, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[-1][1] == pytest.approx(1 / 63)
    assert rrf([[], [5, 6]], k=1) == [(5, 0.5), (6, pytest.approx(1 / 3))]


def test_bm25_tokens_keep_short_numbers_and_drop_stop_words():
    assert bm25_tokens(["The fee for Tier 2 is 4 QB$"]) == [["fee", "tier", "2", "4", "qb"]]


def test_spec_refuses_an_overlap_as_large_as_the_chunk():
    with pytest.raises(ValidationError, match="chunk_overlap: must be smaller than chunk_size"):
        IndexSpec(sources=["docs"], chunk_size=20, chunk_overlap=20)
    with pytest.raises(ValidationError, match="sources"):
        IndexSpec(sources=[])
    with pytest.raises(ValidationError, match="Extra inputs"):
        IndexSpec(sources=["docs"], chunk_words=20)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["job.yaml"], ("build", ["job.yaml"])),
        (["show", "job.yaml"], ("show", ["job.yaml"])),
        (["show", "job.yaml", "index-1"], ("show", ["job.yaml", "index-1"])),
        (["diff", "job.yaml", "a", "b"], ("diff", ["job.yaml", "a", "b"])),
    ],
)
def test_index_verb_words(words, expected):
    assert _action(words) == expected


@pytest.mark.parametrize("words", [["job.yaml", "extra"], ["diff", "job.yaml", "a"], ["show"]])
def test_index_verb_words_wrong_count_is_a_usage_error(words):
    with pytest.raises(UserError, match="usage:"):
        _action(words)


def _found(folder, size=10, overlap=2) -> list[dict]:
    """What the Ray Data read step collects, without Ray: `_read_file` per corpus file."""
    from dataclasses import asdict

    return [row for f in find_files([str(folder)]) for row in _read_file(asdict(f), size, overlap)]


def test_unreadable_files_are_all_named_in_one_error(tmp_path):
    (tmp_path / "good.md").write_text("Fine text.")
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match=r"(?s)bad\.jsonl:1: not valid JSON.*latin\.txt: not UTF-8"):
        sort_rows(_found(tmp_path))


def test_a_corpus_without_text_is_an_error_listing_what_was_skipped(tmp_path):
    (tmp_path / "empty.md").write_text("")
    (tmp_path / "blank.jsonl").write_text('{"id": "a", "text": " "}\n')
    with pytest.raises(UserError, match=r"no document has any text; skipped: blank\.jsonl#a"):
        sort_rows(_found(tmp_path))


def test_rows_are_ordered_and_a_repeated_chunk_is_indexed_once(tmp_path):
    (tmp_path / "b.md").write_text("same words here " * 2 + "| same words here")
    (tmp_path / "a.md").write_text("alpha beta")
    rows, skipped = sort_rows(_found(tmp_path, size=3, overlap=0))
    assert skipped == []
    assert [(r["source"], r["text"]) for r in rows] == [
        ("a.md", "alpha beta"),
        ("b.md", "same words here"),
        ("b.md", "| same words"),
        ("b.md", "here"),
    ]


def test_an_embedder_that_is_no_model_folder_is_an_error(tmp_path):
    with pytest.raises(UserError, match=r"index\.embedder: no Hugging Face model folder"):
        embedder_path(str(tmp_path))


def test_ftray_index_without_an_index_section_says_so_before_ray_starts(tmp_path, capsys):
    from ftray.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(
        "project: p\nmodel: {base: tiny}\ndata: {sources: [{path: x.jsonl}]}\n"
        f"storage: {tmp_path / 'store'}\n"
    )
    assert main(["index", str(job)]) == 2
    assert "the job has no `index:` section" in capsys.readouterr().err


def test_a_file_changed_after_it_was_hashed_is_an_error(tmp_path):
    (tmp_path / "fees.md").write_text("Fee 4.")
    (corpus_file,) = find_files([str(tmp_path)])
    (tmp_path / "fees.md").write_text("Fee 5.")
    with pytest.raises(UserError, match=r"fees\.md changed while it was being indexed"):
        chunk_rows(corpus_file, 10, 2)


def _pdf(pages: list[str]) -> bytes:
    """A minimal PDF with one line of Helvetica text per page (none: a page with no text
    layer, as a scan has)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
        kids.append(f"{len(objects) + 1} 0 R")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects) + 2}"
            f" 0 R /Resources << /Font << /F1 {len(objects) + 3} 0 R >> >> >>"
        )
        objects.append(f"<< /Length {len(content)} >>\nstream\n{content.decode()}\nendstream")
        objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


def test_a_pdf_is_read_page_after_page_and_a_scan_is_skipped(tmp_path):
    (tmp_path / "fees.pdf").write_bytes(_pdf(["A replacement card costs 4.50 QB$.", "Page two."]))
    (tmp_path / "scan.pdf").write_bytes(_pdf([""]))
    assert read_documents(str(tmp_path / "fees.pdf"), "fees.pdf") == [
        ("fees.pdf", "A replacement card costs 4.50 QB$.\n\nPage two.")
    ]
    files = {f.name: f for f in find_files([str(tmp_path)])}
    assert set(files) == {"fees.pdf", "scan.pdf"}
    [scan] = chunk_rows(files["scan.pdf"], 10, 2)
    assert (scan["source"], scan["skipped"]) == ("scan.pdf", "no text (empty document)")


def test_a_file_named_pdf_that_is_no_pdf_is_an_error_naming_it(tmp_path):
    (tmp_path / "notes.pdf").write_text("just text, renamed")
    with pytest.raises(UserError, match=r"notes\.pdf: not a PDF that can be read"):
        read_documents(str(tmp_path / "notes.pdf"), "notes.pdf")


def test_an_encrypted_pdf_is_an_error_naming_it(tmp_path):
    import io

    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(_pdf(["Secret fees."])))
    writer.encrypt("password")
    with open(tmp_path / "locked.pdf", "wb") as handle:
        writer.write(handle)
    with pytest.raises(UserError, match=r"locked\.pdf: an encrypted PDF"):
        read_documents(str(tmp_path / "locked.pdf"), "locked.pdf")
