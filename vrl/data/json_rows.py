"""JSON and JSON-lines data files, read so that one broken line is one bad row, not a failed load.

``datasets``' JSON reader stops at the first line it cannot parse, with pyarrow's message and neither the
file nor the line; an empty file fails with ``StopIteration()`` or ``Instruction "train" corresponds to no
data!``. So each file is scanned first, line by line, with the standard ``json`` module: a line that is not
valid UTF-8, not valid JSON (a truncated line, a raw control character, ``NaN``) or not an object is recorded
with its line number. When the scan finds nothing odd, ``datasets`` reads the file as it is (its arrow cache
works as before); otherwise it reads a cleaned copy in which every bad line is an empty object ``{}``, so that
row ``i`` is still the ``i``-th non-blank line of the file and the loader can mark it bad (reason
:data:`vrl.data.reasons.BAD_LINE`) for the preflight to quarantine.

A whole file that cannot be used (empty, blank, not one row readable, a JSON array that does not parse) raises
:class:`vrl.errors.DataError` with one line naming the file.
"""

from __future__ import annotations

import codecs
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from vrl.errors import DataError


@dataclass
class JsonScan:
    """What the line-by-line scan of one file found.

    Attributes:
        file: the file.
        rows: data rows: non-blank lines, or the items of a JSON array.
        lines: the 1-based line of each row (JSON lines); None for a JSON array.
        bad: row -> why it is not a usable JSON object.
        clean: ``datasets`` can read the file as it is (nothing bad, no blank line).
        items: the rows of a JSON array file (None for JSON lines), to avoid parsing it twice.
    """

    file: Path
    rows: int = 0
    lines: list[int] | None = None
    bad: dict[int, str] = field(default_factory=dict)
    clean: bool = True
    items: list[Any] | None = None

    def line_of(self, row: int) -> int | None:
        return self.lines[row] if self.lines is not None else None


def scan_json(file: Path) -> JsonScan:
    """Scan ``file`` (a JSON array, or one JSON object per line).

    Raises:
        DataError: the file is empty or blank, no row of it is a JSON object, or it is a JSON array that does
            not parse.
    """
    with open(file, "rb") as f:
        head = f.read(4096)
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    is_array = file.suffix.lower() == ".json" and head.lstrip()[:1] == b"["  # a .jsonl is lines, always
    scan = _scan_array(file) if is_array else _scan_lines(file)
    if scan.rows == 0:
        what = "is empty" if not head else "has no rows (only blank lines, or an empty array)"
        raise DataError(f"{file} {what}: fill it or remove it from the data path")
    if len(scan.bad) == scan.rows:
        row, why = next(iter(scan.bad.items()))
        where = f"line {scan.line_of(row)}" if scan.lines is not None else f"item {row}"
        raise DataError(
            f"{file}: none of its {scan.rows} rows is a JSON object ({where}: {why}); a .jsonl file holds one "
            "JSON object per line, a .json file one array of objects"
        )
    return scan


def read_json_rows(scan: JsonScan) -> datasets.Dataset:
    """The scanned file as a ``datasets.Dataset`` with one row per scanned row (bad ones empty)."""
    if scan.clean:
        return read_with_datasets("json", scan.file)
    with tempfile.TemporaryDirectory(prefix="vrl-json-") as tmp:
        copy = Path(tmp) / "rows.jsonl"
        with open(copy, "w", encoding="utf-8") as out:
            for row, text in enumerate(_row_texts(scan)):
                out.write(("{}" if row in scan.bad else text) + "\n")
        # In memory, with its cache in the temporary folder: nothing refers to the copy once it is gone.
        return read_with_datasets("json", copy, label=scan.file, keep_in_memory=True, cache_dir=tmp)


def read_with_datasets(builder: str, file: Path, label: Path | None = None, **kwargs: Any) -> datasets.Dataset:
    """``datasets.load_dataset(builder)`` on one file; a failure becomes a one-line :class:`DataError`."""
    try:
        return datasets.load_dataset(builder, data_files=[str(file)], split="train", **kwargs)
    except Exception as err:  # pyarrow and datasets raise many types on bad files
        message = str(err).splitlines()[0] if str(err) else ""
        raise DataError(f"{label or file}: cannot read it as {builder}: {type(err).__name__}: {message}") from err


def _scan_lines(file: Path) -> JsonScan:
    scan = JsonScan(file, lines=[])
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                scan.clean = False  # a blank line: rows and lines would no longer line up in datasets' reading
                continue
            why = _line_problem(raw)
            if why is not None:
                scan.bad[scan.rows] = why
                scan.clean = False
            scan.lines.append(number)
            scan.rows += 1
    if scan.bad and file.suffix.lower() == ".json" and _one_object(file):
        return JsonScan(file, rows=1, clean=True)  # one (pretty-printed) object: datasets reads its columns
    return scan


def _scan_array(file: Path) -> JsonScan:
    try:
        items = json.loads(file.read_bytes().decode("utf-8-sig"), parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text (byte {err.start}); save it as UTF-8") from err
    except ValueError as err:
        where = f"line {err.lineno} column {err.colno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else err
        raise DataError(f"{file}: the JSON array does not parse ({where}); repair the file") from err
    if not isinstance(items, list):
        return JsonScan(file, rows=1, clean=True)
    bad = {i: f"a JSON {_kind(item)}, not an object" for i, item in enumerate(items) if not isinstance(item, dict)}
    return JsonScan(file, rows=len(items), bad=bad, clean=not bad, items=items)


def _row_texts(scan: JsonScan) -> Any:
    """Each row's JSON text, in order (bad rows yield whatever is there; the caller replaces them)."""
    if scan.items is not None:
        yield from (json.dumps(item) if i not in scan.bad else "" for i, item in enumerate(scan.items))
        return
    with open(scan.file, "rb") as f:
        for raw in f:
            if raw.strip():
                yield raw.decode("utf-8", errors="replace").lstrip("\ufeff").strip()


def _line_problem(raw: bytes) -> str | None:
    """Why one non-blank line is not a JSON object, or None when it is one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"invalid UTF-8 at byte {err.start} of the line"
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg} at column {err.colno})"
    except ValueError as err:
        return f"not valid JSON ({err})"
    if not isinstance(value, dict):
        return f"a JSON {_kind(value)}, not an object"
    return None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _kind(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _one_object(file: Path) -> bool:
    try:
        return isinstance(json.loads(file.read_bytes().decode("utf-8-sig")), dict)
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return False
