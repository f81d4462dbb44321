"""Reading source files line by line: a bad byte, a blank line or a broken row costs only
itself, and every line read comes back as exactly one record with its line number."""

from __future__ import annotations

import json

import pytest

from ftray.data.sources import SourceFile, read_records, split_lines


def _read(tmp_path, name: str, data: bytes, fmt: str) -> list[dict]:
    path = tmp_path / name
    path.write_bytes(data)
    return read_records(SourceFile(str(path), fmt))


def test_jsonl_bad_bytes_cost_only_their_lines(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}", "completion": "a"}).encode() for i in range(250)]
    bad = {17: b'{"prompt": "caf\xe9", "completion": "a"}', 101: b"\xff\xfe", 250: b"\x80"}
    for number, line in bad.items():
        lines[number - 1] = line
    records = _read(tmp_path, "data.jsonl", b"\n".join(lines) + b"\n", "jsonl")
    assert [r["row"] for r in records] == list(range(1, 251))
    assert {r["read"] for r in records} == {250}
    broken = {r["row"]: r for r in records if r["error"]}
    assert set(broken) == set(bad)
    assert "not UTF-8" in broken[17]["error"] and "byte 16" in broken[17]["error"]
    assert broken[17]["raw"] == '{"prompt": "caf\\xe9", "completion": "a"}', "bad byte escaped"
    good = [r for r in records if not r["error"]]
    assert len(good) == 247 and json.loads(good[0]["fields"]) == {"prompt": "q0", "completion": "a"}


def test_jsonl_blank_lines_crlf_bom_and_unicode_line_separators(tmp_path):
    data = (
        b"\xef\xbb\xbf"
        + json.dumps({"prompt": "a\u2028b", "completion": "c"}, ensure_ascii=False)
        # U+2028 inside a JSON string is not a line break in a .jsonl file
        .encode()
        + b"\r\n\r\n   \n"
        + b'{"prompt": "x", "completion": "y"}\r\n'
        + b'{"prompt": "broken'
    )
    records = _read(tmp_path, "data.jsonl", data, "jsonl")
    assert [(r["row"], r["blank"], bool(r["error"])) for r in records] == [
        (1, False, False),
        (2, True, False),
        (3, True, False),
        (4, False, False),
        (5, False, True),
    ]
    assert json.loads(records[0]["fields"])["prompt"] == "a\u2028b", "the BOM is dropped"
    assert "bad JSON line" in records[4]["error"] and records[4]["raw"] == '{"prompt": "broken'
    assert {r["read"] for r in records} == {5}


def test_split_lines():
    assert split_lines(b"a\nb\r\n\nc") == [b"a", b"b", b"", b"c"]
    assert split_lines(b"a\n") == [b"a"]
    assert split_lines(b"") == []


def test_csv_rows_decoded_one_by_one_with_their_line_numbers(tmp_path):
    data = (
        b"text,label\n"
        b"first,a\n"
        b'"spans\ntwo lines",b\n'  # one row, lines 3-4
        b"caf\xe9 au lait,a\n"  # line 5: not UTF-8
        b"\n"  # line 6: blank
        b"too,many,fields\n"  # line 7
        b"last,b\n"
    )
    records = _read(tmp_path, "data.csv", data, "csv")
    by_row = {r["row"]: r for r in records}
    assert sorted(by_row) == [2, 3, 5, 6, 7, 8]
    assert {r["read"] for r in records} == {6}, "data rows and blank lines, not the header"
    assert json.loads(by_row[3]["fields"]) == {"text": "spans\ntwo lines", "label": "b"}
    assert by_row[3]["raw"] == '"spans\ntwo lines",b'
    assert "not UTF-8" in by_row[5]["error"] and by_row[5]["raw"] == "caf\\xe9 au lait,a"
    assert by_row[6]["blank"]
    assert "3 fields, the header has 2" in by_row[7]["error"]
    assert json.loads(by_row[8]["fields"]) == {"text": "last", "label": "b"}


def test_json_list_and_broken_json_file(tmp_path):
    rows = [{"prompt": "p", "completion": "c"}, ["not", "an", "object"]]
    records = _read(tmp_path, "data.json", json.dumps(rows).encode(), "json")
    assert [r["row"] for r in records] == [1, 2] and records[1]["error"].startswith("record is")
    broken = _read(tmp_path, "bad.json", b'[{"prompt": \xff}]', "json")
    assert len(broken) == 1 and "file is not UTF-8" in broken[0]["error"]
    assert broken[0]["read"] == 1


def test_a_file_named_twice_is_refused_before_reading(tmp_path):
    from ftray.data.sources import expand_sources, number_files
    from ftray.errors import UserError
    from ftray.spec import SourceSpec

    (tmp_path / "a.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    (tmp_path / "b.jsonl").write_text('{"prompt": "q", "completion": "d"}\n')
    train = expand_sources([SourceSpec(path=str(tmp_path / "*.jsonl"))])
    assert [f.index for f in number_files(train, [])] == [0, 1]
    evals = expand_sources([SourceSpec(path=str(tmp_path / "b.jsonl"))], "eval")
    with pytest.raises(UserError, match=r"b\.jsonl is named twice"):
        number_files(train, evals)
    twice = expand_sources([SourceSpec(path=str(tmp_path / "a*"))] * 2)
    with pytest.raises(UserError, match="named twice"):
        number_files(twice, [])


@pytest.mark.parametrize("tail", [b"\n", b""], ids=["newline_at_end", "no_newline_at_end"])
def test_jsonl_byte_ranges_read_every_line_once_with_its_number(tmp_path, tail):
    """A file cut into ranges at every possible byte (inside a line, at a \\n, between \\r and
    \\n, inside a multi-byte character) reads as the whole file does: each line by one range,
    with its line number, a straddling line whole, bad lines quarantinable where they are."""
    from ftray.data.sources import read_jsonl_range, scan_jsonl
    from ftray.store import file_digest

    lines = [
        b'\xef\xbb\xbf{"prompt": "first", "completion": "a"}',
        b'{"prompt": "' + "é".encode() * 40 + b'", "completion": "long line"}\r',  # CRLF
        b"",  # 3: blank
        b'{"prompt": "broken',  # 4: bad JSON
        b'{"prompt": "caf\xe9", "completion": "a"}\r',  # 5: not UTF-8, CRLF
        b"   ",  # 6: blank
        b'{"prompt": "last", "completion": "z"}',
    ]
    data = b"\n".join(lines) + tail
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    file = SourceFile(str(path), "jsonl")
    whole = read_records(file)
    assert [r["row"] for r in whole] == list(range(1, 8))
    for size in range(1, len(data) + 1):
        scan = scan_jsonl(file, size)
        assert scan.sha256 == file_digest(str(path)) and scan.lines == 7
        parts = [read_jsonl_range(file, part, scan.lines) for part in scan.ranges]
        assert [r for part in parts for r in part] == whole, f"ranges of {size} bytes"
    scan = scan_jsonl(file, 50)
    by_range = [[r["row"] for r in read_jsonl_range(file, part, 7)] for part in scan.ranges]
    # line 2 (bytes 43-165) starts in range 0 and runs over ranges 1 and 2: read whole once
    assert by_range[:5] == [[1, 2], [], [], [3, 4, 5], [6, 7]], "several ranges, one per task"
    records = [r for part in scan.ranges for r in read_jsonl_range(file, part, 7)]
    broken = {r["row"]: r["error"] for r in records if r["error"]}
    assert sorted(broken) == [4, 5] and "not UTF-8" in broken[5]
