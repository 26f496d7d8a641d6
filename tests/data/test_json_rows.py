"""JSON / JSON-lines files with broken lines: one bad line is one bad row with its file and line, never a failed load.

Every file is written into tmp_path by the test itself, byte for byte where the bytes matter.
"""

from __future__ import annotations

import json

import pytest

from vrl.data.json_rows import scan_json
from vrl.data.rlvr import BAD_LINE, LOAD_ERRORS_KEY, SOURCE_KEY, load_rlvr
from vrl.errors import DataError


def meta(row: dict) -> dict:
    return json.loads(row["meta"])


def good(i: int) -> bytes:
    return json.dumps({"problem": f"q{i}", "answer": str(i)}).encode() + b"\n"


#: Line by line (1-based): what is on it, and whether it is a bad row. Line 6 is blank: no row at all.
LINES = [
    (good(1), False),
    (b'{"problem": "q2", "answer": "2"\n', True),  # truncated: the closing brace is missing
    (b'{"problem": "q3 \xff\xfe", "answer": "3"}\n', True),  # invalid UTF-8
    (b"[1, 2]\n", True),  # an array, not an object
    (b'"just text"\n', True),  # a bare string
    (b"   \n", None),  # blank: skipped
    (good(7), False),
    (b'{"problem": "q8", "answer": NaN}\n', True),  # NaN is not JSON
    (b'{"problem": "q9\x00", "answer": "9"}\n', True),  # a raw NUL byte inside a string
    (good(10), False),
]


def test_broken_lines_become_bad_rows_that_name_their_line(tmp_path):
    file = tmp_path / "train.jsonl"
    file.write_bytes(b"".join(text for text, _ in LINES))
    ds = load_rlvr(str(file))
    numbered = [(number, bad) for number, (_, bad) in enumerate(LINES, start=1) if bad is not None]
    assert len(ds) == len(numbered)  # one row per non-blank line, in order
    for row, (number, bad) in zip(ds, numbered):
        source = meta(row)[SOURCE_KEY]
        assert (source["file"], source["line"]) == (str(file.resolve()), number)
        errors = meta(row).get(LOAD_ERRORS_KEY, [])
        assert [e["reason"] for e in errors] == ([BAD_LINE] if bad else []), number
        if bad:
            assert errors[0]["field"] == f"line {number}"
            assert row["prompt"] is None and row["answer"] is None
    # Good rows are read exactly as from a clean file.
    assert [r["prompt"] for r in ds if not meta(r).get(LOAD_ERRORS_KEY)] == ["q1", "q7", "q10"]


def test_a_clean_file_keeps_datasets_reading_and_line_numbers(tmp_path):
    file = tmp_path / "train.jsonl"
    file.write_bytes(good(0) + good(1))
    scan = scan_json(file)
    assert (scan.clean, scan.rows, scan.lines, scan.bad) == (True, 2, [1, 2], {})
    assert [meta(r)[SOURCE_KEY]["line"] for r in load_rlvr(str(file))] == [1, 2]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("t.jsonl", b"", "is empty"), ("t.jsonl", b"\n  \n\t\n", "has no rows"), ("t.json", b" []", "has no rows")],
    ids=["empty", "blank-only", "empty-array"],
)
def test_a_file_without_rows_is_one_data_error_naming_it(tmp_path, name, content, message):
    file = tmp_path / name
    file.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        load_rlvr(str(file))
    assert str(file) in str(err.value) and "\n" not in str(err.value)


def test_a_file_with_no_object_at_all_is_one_data_error(tmp_path):
    file = tmp_path / "train.jsonl"
    file.write_text("problem,answer\nq,a\n")  # a CSV saved as .jsonl
    with pytest.raises(DataError, match=r"none of its 2 rows is a JSON object \(line 1: not valid JSON"):
        load_rlvr(str(file))


def test_json_array_items_that_are_not_objects_are_bad_rows(tmp_path):
    file = tmp_path / "val.json"
    file.write_text(json.dumps([{"problem": "q0", "answer": "0"}, 5, {"problem": "q2", "answer": "2"}]))
    ds = load_rlvr(str(file))
    assert ds["prompt"] == ["q0", None, "q2"]
    assert meta(ds[1])[LOAD_ERRORS_KEY] == [
        {"field": "item 1", "reason": BAD_LINE, "detail": "a JSON number, not an object"}
    ]


def test_a_truncated_json_array_names_file_line_and_column(tmp_path):
    file = tmp_path / "val.json"
    file.write_text('[{"problem": "q0", "answer": "0"},\n {"problem": "q1", "ans')
    with pytest.raises(DataError, match=r"val\.json: the JSON array does not parse \(line 2 column"):
        load_rlvr(str(file))
