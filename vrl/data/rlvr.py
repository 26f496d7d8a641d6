"""Local RLVR data files (the EasyR1 / verl layout) as vrl rows, with images decoded only when a row is read.

The common layout is one row per question: a question text with one ``<image>`` placeholder per image, an
answer, and the images as file paths, raw bytes, ``{"bytes", "path"}`` dicts or PIL images (a list column, or
a single ``image`` column). :func:`load_rlvr` maps it to the row schema of :mod:`vrl.types` and keeps every
other column untouched, so rewards can read them (PEARL's ``probe_problem``, Perception-R1's
``visual_key_info``).

Images are stored under a ``datasets.Image`` feature as ``{"bytes", "path"}`` structs: the dataset holds
resolved paths or compressed bytes (memory-mapped), and a row's PIL images are decoded when the row is read,
so a 100k-row dataset never holds its pixels in memory.

The loader does not fail on a bad row: most problems (a missing or corrupt image, an over-long prompt) are
only visible by opening every image, which is :mod:`vrl.data.preflight`'s job, and one broken row should not
cost the rest of the data. What the loader does see (a JSON line that does not parse, an image path escaping
the data root, a question that is not text, an answer that is a list or NaN, an image reference of an unknown
kind) it records in the row's ``meta`` under ``load_errors``, and the preflight reports it with everything
else. Only a file that cannot be used at all (empty, unreadable, without the configured columns) stops the
load, with a one-line :class:`vrl.errors.DataError` naming it. The helpers both sides share are re-exported
here: how an image reference is stored (:func:`image_storage`), resolved inside the root
(:func:`resolve_inside`) and opened (:func:`open_image`), and the ``meta`` keys and reason codes
(:mod:`vrl.data.reasons`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets

from vrl.data.images import (  # noqa: F401 - re-exported: the loader's public image helpers
    BadImage,
    image_storage,
    open_image,
    resolve_inside,
    without_image_decoding,
)
from vrl.data.json_rows import JsonScan, read_json_rows, read_with_datasets, scan_json
from vrl.data.reasons import (  # noqa: F401 - re-exported: the reasons the loader records
    BAD_ANSWER,
    BAD_IMAGE_REF,
    BAD_LINE,
    BAD_TYPE,
    CORRUPT_IMAGE,
    LOAD_ERRORS_KEY,
    MISSING_IMAGE,
    NOT_A_FILE,
    PATH_ESCAPES_ROOT,
    SOURCE_KEY,
)
from vrl.data.rlvr_values import answer_text, as_list, as_text, lookup, question_text
from vrl.errors import DataError
from vrl.types import ANSWER_TYPES

#: File suffix -> ``datasets`` builder.
FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}

#: The columns every vrl row has (:mod:`vrl.types`); the loader writes them, other columns pass through.
SCHEMA = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "answer": datasets.Value("string"),
        "answer_type": datasets.Value("string"),
        "task": datasets.Value("string"),
        "format": datasets.Value("string"),
        "meta": datasets.Value("string"),
        "uid": datasets.Value("string"),
    }
)


@dataclass(frozen=True)
class _Columns:
    """Where each schema field comes from in one file (dotted keys reach into struct columns)."""

    question: str
    answer: str
    images: str | None
    id: str | None
    answer_type: str
    task: str
    format: str


def load_rlvr(
    path: str | Sequence[str],
    data_root: str | None = None,
    question_key: str = "problem",
    answer_key: str = "answer",
    images_key: str = "images",
    answer_type: str = "math",
    split: str | None = None,
    id_key: str | None = "id",
    task: str = "rlvr",
    format: str = "open",
    limit: int | None = None,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Load local parquet / jsonl / json files in the common RLVR schema as vrl rows (:mod:`vrl.types`).

    Output columns: ``prompt``, ``images`` (list of PIL, decoded on access), ``answer`` (str, or None when
    missing, NaN, a list or a mapping, for the preflight to catch), ``answer_type``, ``task``, ``format``,
    ``meta`` (JSON with the source file, row and, for JSON lines, the 1-based line under ``source``), ``uid``;
    plus every input column that no schema field was read from. A JSON line that does not parse is a row of
    nulls whose ``meta`` says why (:mod:`vrl.data.json_rows`).

    Args:
        path: a file, a glob (``/data/*.parquet``) or a folder (every supported file under it), or a list of
            them. The suffix picks the reader: ``.parquet``, ``.jsonl`` or ``.json`` (JSON lines or one array).
            Several files are concatenated in order and must have the same columns.
        data_root: folder that relative image paths resolve against and that every image path must stay
            inside (``../x.png``, an absolute path elsewhere or a symlink pointing out of it makes the row bad);
            None uses each data file's own folder. Set it to a common ancestor for absolute-path datasets.
        question_key: column holding the question (may contain ``<image>`` placeholders; without any, the
            images go before the text). A verl-style chat list (``[{"role": "user", "content": ...}]``) is
            turned into its last user message. Dotted keys reach into structs.
        answer_key: column holding the ground truth, turned into ``str`` (None stays None: the preflight
            reports it; so does a NaN, or a list or mapping, except a list of numbers for a "bbox" row).
            verl keeps it at ``reward_model.ground_truth``.
        images_key: column holding the images (a list, or one image). When absent, a single ``image``
            column is used; with neither, rows are text-only.
        answer_type: how accuracy is checked (one of :data:`vrl.types.ANSWER_TYPES`), for rows without an
            ``answer_type`` column (or with a null there).
        split: with a folder in ``path``, keep only files whose name starts with it or that sit under a
            sub-folder of that name (``train-00000-of-00002.parquet``, ``test.jsonl``, ``train/x.jsonl``).
            Also recorded in ``meta``.
        id_key: column whose value becomes ``uid``; without it (or with a null) the uid is ``<file>:<row>``
            with the file named relative to the data files' common folder. A ``uid`` column always wins.
        task: task family for rows without a ``task`` column.
        format: question format (``yesno`` | ``mc`` | ``open``) for rows without a ``format`` column.
        limit: keep only the first ``limit`` rows across the files (smoke runs); None keeps all.
        num_proc: processes for the column mapping (``datasets.map``); None maps in this process.

    Returns:
        A ``datasets.Dataset``; ``ds[i]["images"]`` decodes that row's images to PIL.

    Raises:
        DataError: a path entry matches no file, or a file has an unsupported suffix.
        DataError: a file that cannot be read at all (empty or blank, no parsable row, corrupt), a missing
            question or answer column, a column that the mapping would overwrite, or files whose columns
            differ; one line naming the file.
        ValueError: an unsupported suffix or an unknown ``answer_type`` argument.
    """
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
    files = resolve_files(path, split)
    base = Path(os.path.commonpath([str(f.parent) for f in files]))
    parts = []
    remaining = limit
    for file in files:
        if remaining is not None and remaining <= 0:
            break
        root = Path(os.path.realpath(data_root if data_root is not None else file.parent))
        columns = _Columns(question_key, answer_key, images_key, id_key, answer_type, task, format)
        part = _load_file(file, root, columns, str(file.relative_to(base)), split, remaining, num_proc)
        remaining = None if remaining is None else remaining - len(part)
        parts.append(part)
    return _concatenate(parts, files)


def resolve_files(path: str | Sequence[str], split: str | None = None) -> list[Path]:
    """Absolute data files for ``path`` entries (files, globs, folders), in order, without repeats."""
    entries = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    files: list[Path] = []
    for entry in entries:
        text = os.path.expanduser(str(entry))
        if glob.has_magic(text):
            matches = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file()]
        elif os.path.isdir(text):
            matches = [p for p in sorted(Path(text).rglob("*")) if p.is_file() and p.suffix.lower() in FORMATS]
            if split is not None:
                matches = [p for p in matches if _in_split(p.relative_to(text), split)]
        else:
            matches = [Path(text)] if os.path.exists(text) else []
        if not matches:
            raise DataError(f"data path {str(entry)!r} matches no file (split={split!r}): check data.<split>.path")
        for match in matches:
            if match.suffix.lower() not in FORMATS:
                raise DataError(f"{match}: unsupported data file suffix; expected one of {sorted(FORMATS)}")
            resolved = match.resolve()
            if resolved not in files:
                files.append(resolved)
    return files


def _in_split(relative: Path, split: str) -> bool:
    return relative.name.startswith(split) or split in relative.parts[:-1]


def _load_file(
    file: Path, root: Path, columns: _Columns, label: str, split: str | None, limit: int | None, num_proc: int | None
) -> datasets.Dataset:
    """Read one file and map its columns to the schema (the extra columns ride along unchanged)."""
    builder = FORMATS[file.suffix.lower()]
    scan = scan_json(file) if builder == "json" else JsonScan(file)
    raw = read_json_rows(scan) if builder == "json" else read_with_datasets(builder, file)
    scan = replace(scan, items=None)  # the mapper keeps where rows came from, not a parsed copy of the file
    if limit is not None and limit < len(raw):
        raw = raw.select(range(limit))
    present = set(raw.column_names)
    for role, key in (("question_key", columns.question), ("answer_key", columns.answer)):
        if key.split(".")[0] not in present:
            raise DataError(f"{file}: no column {key!r} ({role}); columns: {sorted(present)}")
    images = columns.images if columns.images in present else "image" if "image" in present else None
    columns = replace(columns, images=images, id=columns.id if columns.id in present else None)
    sources = {"prompt": columns.question, "answer": columns.answer, "images": images}
    consumed = {key for key in sources.values() if key and "." not in key}
    for field, key in sources.items():
        if field in present and field not in consumed:
            raise DataError(f"{file}: column {field!r} would be overwritten by {key!r}; rename or drop it")
    reused = [c for c in ("answer_type", "task", "format", "meta", "uid") if c in present]
    inputs = sorted({k.split(".")[0] for k in sources.values() if k} | set(reused) | {columns.id} - {None})
    if images is not None and without_image_decoding(raw.features[images]) != raw.features[images]:
        raw = raw.cast_column(images, without_image_decoding(raw.features[images]))
    extras = {k: v for k, v in raw.features.items() if k not in consumed and k not in SCHEMA}
    mapper = _RowMapper(columns, root, str(file), label, split, inputs, sources, scan)
    return raw.map(
        mapper,
        batched=True,
        with_indices=True,
        input_columns=inputs,
        remove_columns=sorted(consumed | set(reused)),
        features=datasets.Features({**SCHEMA, **extras}),
        num_proc=num_proc,
        desc=f"rlvr {label}",
    )


@dataclass
class _RowMapper:
    """Batched ``datasets.map`` function: source columns of one file -> the schema fields (picklable)."""

    columns: _Columns
    root: Path
    file: str
    label: str  # the file as uids name it
    split: str | None
    inputs: list  # the source columns the map passes, in this order
    sources: dict  # schema field -> source column, recorded in meta
    scan: JsonScan  # where each row came from (line) and which rows did not parse

    def __call__(self, *args: Any) -> dict[str, list]:
        *values, indices = args
        out: dict[str, list] = {name: [] for name in SCHEMA}
        for j, row in enumerate(indices):
            mapped = self.row({key: column[j] for key, column in zip(self.inputs, values)}, row)
            for name in SCHEMA:
                out[name].append(mapped[name])
        return out

    def row(self, values: dict[str, Any], row: int) -> dict[str, Any]:
        """One source row (its input columns) -> the schema fields."""
        c, errors = self.columns, []
        if row in self.scan.bad:  # a JSON line that did not parse: an empty row that says why
            return self._unreadable(row)
        prompt = question_text(lookup(values, c.question))
        if prompt is None:
            kind = type(lookup(values, c.question)).__name__
            errors.append(_error(c.question, BAD_TYPE, f"question is {kind}, not text or a chat list"))
        images = []
        for k, ref in enumerate(as_list(lookup(values, c.images) if c.images else None)):
            try:
                images.append(image_storage(ref, self.root))
            except BadImage as err:
                errors.append(_error(f"{c.images}[{k}]", err.reason, str(err)))
                images.append(None)  # reads back as None: the row stays inspectable, its meta says why
        answer_type = as_text(values.get("answer_type")) or c.answer_type
        answer, problem = answer_text(lookup(values, c.answer), answer_type)
        if problem is not None:
            errors.append(_error(c.answer, *problem))
        uid = values.get("uid") or (lookup(values, c.id) if c.id else None)
        return {
            "prompt": prompt,
            "images": images,
            "answer": answer,
            "answer_type": answer_type,
            "task": as_text(values.get("task")) or c.task,
            "format": as_text(values.get("format")) or c.format,
            "meta": self._meta(values.get("meta"), row, errors),
            "uid": str(uid) if uid is not None else f"{self.label}:{row}",
        }

    def _unreadable(self, row: int) -> dict[str, Any]:
        where = f"line {self.scan.line_of(row)}" if self.scan.lines is not None else f"item {row}"
        error = _error(where, BAD_LINE, self.scan.bad[row])
        c = self.columns
        return {
            "prompt": None,
            "images": [],
            "answer": None,
            "answer_type": c.answer_type,
            "task": c.task,
            "format": c.format,
            "meta": self._meta(None, row, [error]),
            "uid": f"{self.label}:{row}",
        }

    def _meta(self, original: Any, row: int, errors: list[dict]) -> str:
        meta: dict[str, Any] = {}
        if isinstance(original, str):
            with contextlib.suppress(json.JSONDecodeError):
                original = json.loads(original)
        if isinstance(original, dict):
            meta.update(original)
        elif original is not None:
            meta["original_meta"] = original
        source = {"file": self.file, "row": row, "columns": self.sources}
        if self.scan.lines is not None:
            source["line"] = self.scan.line_of(row)
        meta[SOURCE_KEY] = source if self.split is None else {**source, "split": self.split}
        if errors:
            meta[LOAD_ERRORS_KEY] = errors
        return json.dumps(meta, sort_keys=True, default=str)


def _error(field: str, reason: str, detail: str) -> dict[str, str]:
    return {"field": field, "reason": reason, "detail": detail}


def _concatenate(parts: list[datasets.Dataset], files: list[Path]) -> datasets.Dataset:
    if len(parts) == 1:
        return parts[0]
    first = set(parts[0].column_names)
    for part, file in zip(parts[1:], files[1:]):
        if set(part.column_names) != first:
            raise DataError(
                f"{file} has columns {sorted(part.column_names)} but {files[0]} has {sorted(first)}; "
                "files loaded together must have the same columns"
            )
    return datasets.concatenate_datasets(parts)
