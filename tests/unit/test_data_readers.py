"""Streamed readers: JSONL, JSON arrays (across read-chunk boundaries), parquet, datasets dirs; bad input names
file and line, and skip mode counts per reason."""

from __future__ import annotations

import json

import pytest

from lcrecipes.data.errors import BadRecords, DataError
from lcrecipes.data.readers import _JsonArrayStream, read_records

ROWS = [{"id": f"p{i}", "title": f"T{i}", "text": f"text {i} é"} for i in range(40)]


def test_jsonl_roundtrip_and_line_numbers(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS[:3]) + "\n\n" + json.dumps(ROWS[3]) + "\n")
    got = list(read_records(path, BadRecords()))
    assert [r for _, r in got] == ROWS[:4]
    assert [loc.line for loc, _ in got] == [1, 2, 3, 5]


def _bad_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps(ROWS[0]).encode(),
        b'{"id": "x", "text": ',
        b"[1, 2]",
        b'{"id": "\xff\xfe"}',
        json.dumps(ROWS[1]).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("line,reason", [(2, "malformed_json")])
def test_jsonl_error_names_file_and_line(tmp_path, line, reason):
    path = _bad_jsonl(tmp_path)
    with pytest.raises(DataError) as e:
        list(read_records(path, BadRecords("error")))
    assert f"{path}:{line}:" in str(e.value) and e.value.reason == reason


def test_jsonl_skip_counts_reasons(tmp_path):
    bad = BadRecords("skip")
    got = [r for _, r in read_records(_bad_jsonl(tmp_path), bad)]
    assert got == [ROWS[0], ROWS[1]]
    assert bad.as_dict() == {"bad_utf8": 1, "malformed_json": 1, "wrong_type": 1}


def test_json_array_streams_across_chunk_boundaries(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ROWS, indent=2, ensure_ascii=False))
    with open(path, "rb") as f:
        got = list(_JsonArrayStream(f, path, chunk=7))
    assert [r for _, r in got] == ROWS
    text_lines = path.read_text().splitlines()
    for loc, rec in got:  # each location is the line where that element starts
        assert text_lines[loc.line - 1].strip() == "{" and json.dumps(rec["id"]) in text_lines[loc.line]
    assert [r for _, r in read_records(path, BadRecords())] == ROWS


@pytest.mark.parametrize(
    "text,line",
    [
        ('[\n{"a": 1},\n{"a": 2}\n{"a": 3}\n]', 4),  # missing comma
        ('[\n{"a": 1},\n{"a": \n', 3),  # truncated
        ('[\n{"a": 1},\n]', 3),  # trailing comma
        ('{"a": 1}', 1),  # not an array
    ],
)
def test_json_array_malformed_names_line(tmp_path, text, line):
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        list(read_records(path, BadRecords("skip")))
    assert str(e.value).startswith(f"{path}:{line}:") and e.value.reason == "malformed_json"


def test_json_array_bad_utf8_names_line(tmp_path):
    path = tmp_path / "u.json"
    path.write_bytes(b'[\n{"a": 1},\n{"a": "\xff"}\n]')
    with pytest.raises(DataError, match=rf"{path}:3: .*not UTF-8"):
        list(read_records(path, BadRecords()))


def test_parquet_and_datasets_dir(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "c.parquet", row_group_size=7)
    got = list(read_records(tmp_path / "c.parquet", BadRecords()))
    assert [r for _, r in got] == ROWS and str(got[5][0]) == f"{tmp_path / 'c.parquet'} row 6"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert [r for _, r in read_records(tmp_path / "ds", BadRecords())] == ROWS


def test_unknown_or_missing_input(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unknown input format"):
        read_records(tmp_path / "x.csv", BadRecords())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_records(tmp_path / "nope.jsonl", BadRecords())


@pytest.mark.parametrize("damage", ["not_parquet", "truncated", "corrupt_page"])
def test_unreadable_parquet_is_a_data_error_naming_the_file(tmp_path, damage):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS * 50), path, row_group_size=500, compression="snappy")
    data = bytearray(path.read_bytes())
    if damage == "not_parquet":
        data = bytearray(b"PAR1 not a parquet file PAR1")
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:  # garbage inside the second row group's compressed pages; footer intact
        start = pq.ParquetFile(path).metadata.row_group(1).column(2).data_page_offset
        data[start + 8 : start + 400] = bytes(392)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="not a readable parquet file") as err:
        list(read_records(path, BadRecords("skip")))
    assert str(path) in str(err.value) and err.value.reason == "unreadable_file"
