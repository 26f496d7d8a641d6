"""The published ReasonMap / ReasonMap-Plus rows (``FSCCS/ReasonMap-Train``, ``FSCCS/ReasonMap-Plus``) as vrl rows.

A published row is one question about one city's metro map: ``question``, ``answer`` (an integer: 1/0 for
TorF, an option index 0-3 for Counting1, a count for Counting2/3), ``type``, ``difficulty_city``,
``question_transfer_count``, ``city_line_count``, ``city_transfer_count``, ``country``, ``city``,
``station_1``, ``station_2``, ``json`` (path of the city's line -> stations JSON, e.g.
``stations/singapore/singapore.json``) and ``figure`` (the map: a path, base64 text, or an image).

:func:`load_reasonmap` maps such rows to the schema of :mod:`vrl.types` plus the columns
:mod:`vrl.rewards.rewardmap` reads, the same columns :mod:`vrl.data.transit` writes, so the synthetic maps
and the real ones are interchangeable:

- ``prompt`` is ``<image>\\n{question}`` (the published template; the questions carry their own answer
  instructions, and the "Context:" string the published dataset class builds is never used);
- ``answer`` is written the way vrl checks it: ``yes``/``no``, a letter A-D, an integer (planning: the
  row's answer as text, unused by the reward, which checks routes against the city JSON);
- ``metro`` is the city JSON as a string, with the published station markers removed
  (" (Transfer Station)", " (Branch-starting Station)" and their Chinese forms), read once per city.

Unlike :func:`vrl.data.rlvr.load_rlvr`, a row that the reward could not score (a missing field, an unknown
type, a city JSON that is missing or not a line -> stations object) stops the load with an error naming
the file, the row and the field: the reward would otherwise fail on it mid-run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import datasets

from vrl.data.images import BadImage, image_storage, without_image_decoding
from vrl.data.rlvr import FORMATS, resolve_files
from vrl.data.transit import FEATURES, QUESTION_TYPES

#: Markers the published JSONs append to station names; the published reward strips them before matching.
STATION_MARKERS = (" (Transfer Station)", " (Branch-starting Station)", "（换乘站）", "（支线起始站）")
#: type -> (answer_type, format) of the vrl row.
KINDS = {
    "TorF1": ("yesno", "yesno"),
    "TorF2": ("yesno", "yesno"),
    "Counting1": ("choice", "mc"),
    "Counting2": ("number", "open"),
    "Counting3": ("number", "open"),
    "planning": ("text", "open"),
}
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")


class ReasonMapError(ValueError):
    """A published row that cannot become a vrl row; the message names the file, row and field."""


def load_reasonmap(
    path: str | list[str],
    data_root: str | None = None,
    json_root: str | None = None,
    question_key: str = "question",
    figure_key: str = "figure",
    default_type: str | None = None,
    limit: int | None = None,
) -> datasets.Dataset:
    """Load published ReasonMap(-Plus) rows as vrl rows with the RewardMap columns.

    Args:
        path: parquet / jsonl / json file(s), a glob or folder of them (as :func:`vrl.data.rlvr.resolve_files`),
            or a folder written by ``datasets.save_to_disk`` (the published training set; its ``train`` split
            when it is a dataset dict).
        data_root: folder that relative figure paths resolve against and must stay inside; None: the data
            file's folder.
        json_root: folder that the ``json`` paths resolve against; None: ``data_root``, else the data file's
            folder. A ``metro`` column (line -> stations JSON text) is used instead when present.
        question_key: question column; ``question`` for ReasonMap-Plus / -Train, ``question_short`` or
            ``question_long`` for the ReasonMap benchmark.
        figure_key: image column.
        default_type: ``type`` for rows without one (``planning`` for the ReasonMap benchmark); None makes a
            missing type an error.
        limit: keep the first ``limit`` rows of each file (smoke runs).

    Returns:
        A ``datasets.Dataset`` with :data:`vrl.data.transit.FEATURES` plus the published columns not mapped
        (``country``, ``city``, ``json``, ...); images decode to PIL on access.

    Raises:
        ReasonMapError: a row lacks a field the reward needs or holds a value it cannot use.
        FileNotFoundError: no data file, or a row's city JSON is missing.
    """
    parts = []
    for source, folder, raw in _read(path):
        if limit is not None and limit < len(raw):
            raw = raw.select(range(limit))
        root = Path(os.path.realpath(data_root or folder))
        mapper = _RowMapper(source, question_key, figure_key, default_type, root, Path(json_root or root))
        if figure_key in raw.column_names:
            raw = raw.cast_column(figure_key, without_image_decoding(raw.features[figure_key]))
        extras = {k: v for k, v in raw.features.items() if k not in FEATURES and k not in (question_key, figure_key)}
        parts.append(
            raw.map(
                mapper,
                with_indices=True,
                remove_columns=[c for c in raw.column_names if c in FEATURES or c in (question_key, figure_key)],
                features=datasets.Features({**FEATURES, **extras}),
                desc=f"reasonmap {source.name}",
            )
        )
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _read(path: str | list[str]):
    """(source, its folder, raw rows) for each data source; ``save_to_disk`` folders are read whole."""
    entries = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    for entry in entries:
        folder = Path(os.path.expanduser(str(entry))).resolve()
        if (folder / "dataset_info.json").exists() or (folder / "dataset_dict.json").exists():
            raw = datasets.load_from_disk(str(folder))
            yield folder, folder, raw["train"] if isinstance(raw, datasets.DatasetDict) else raw
            continue
        for file in resolve_files(entry):
            raw = datasets.load_dataset(FORMATS[file.suffix.lower()], data_files=[str(file)], split="train")
            yield file, file.parent, raw


class _RowMapper:
    """``datasets.map`` function: one published row -> the vrl + RewardMap columns (cities cached)."""

    def __init__(
        self, source: Path, question_key: str, figure_key: str, default_type: str | None, root: Path, json_root: Path
    ) -> None:
        self.source, self.question_key, self.figure_key = source, question_key, figure_key
        self.default_type, self.root, self.json_root = default_type, root, json_root
        self.cities: dict[str, str] = {}

    def fail(self, row: int, field: str, problem: str) -> ReasonMapError:
        return ReasonMapError(f"{self.source}: row {row}: field {field!r}: {problem}")

    def need(self, values: dict, row: int, field: str) -> Any:
        if values.get(field) is None:
            raise self.fail(row, field, f"missing (columns: {sorted(values)})")
        return values[field]

    def __call__(self, values: dict, row: int) -> dict:
        kind = values.get("type") or self.default_type
        if kind not in KINDS:
            raise self.fail(row, "type", f"{kind!r} is not one of {list(QUESTION_TYPES)}")
        question = self.need(values, row, self.question_key)
        difficulty = self.need(values, row, "difficulty_city")
        if difficulty not in ("easy", "middle", "hard"):
            raise self.fail(row, "difficulty_city", f"{difficulty!r} is not easy, middle or hard")
        transfers = values.get("question_transfer_count")
        if kind == "planning":
            for field in ("question_transfer_count", "station_1", "station_2"):
                self.need(values, row, field)
        answer_type, fmt = KINDS[kind]
        source = {"file": str(self.source), "row": row}
        return {
            "prompt": f"<image>\n{str(question).strip()}",
            "images": [self.figure(values, row)],
            "answer": self.answer(kind, values.get("answer"), row),
            "answer_type": answer_type,
            "task": "reasonmap",
            "format": fmt,
            "meta": json.dumps({"source": source, "country": values.get("country"), "city": values.get("city")}),
            "uid": str(values.get("uid") or values.get("id") or f"{self.source.name}:{row}"),
            "type": kind,
            "difficulty_city": difficulty,
            "question_transfer_count": int(transfers or 0),
            "city_line_count": int(values.get("city_line_count") or 0),
            "city_transfer_count": int(values.get("city_transfer_count") or 0),
            "station_1": str(values.get("station_1") or ""),
            "station_2": str(values.get("station_2") or ""),
            "metro": values.get("metro") or self.metro(self.need(values, row, "json"), row),
        }

    def answer(self, kind: str, value: Any, row: int) -> str:
        """The published integer answer in vrl's form; a wrong kind of value names the row."""
        if kind == "planning":
            return "" if value is None else str(value)
        text = str(value).strip().lower() if value is not None else ""
        if kind.startswith("TorF") and text in ("1", "0", "true", "false", "yes", "no"):
            return "yes" if text in ("1", "true", "yes") else "no"
        if kind == "Counting1" and text in ("0", "1", "2", "3", "a", "b", "c", "d"):
            return "ABCD"[int(text)] if text.isdigit() else text.upper()
        if kind in ("Counting2", "Counting3") and re.fullmatch(r"\d+", text):
            return text
        raise self.fail(row, "answer", f"{value!r} is not a valid {kind} answer")

    def figure(self, values: dict, row: int) -> dict:
        ref = self.need(values, row, self.figure_key)
        if isinstance(ref, str) and len(ref) >= 100 and _BASE64.fullmatch(ref) and not (self.root / ref).exists():
            ref = "data:image;base64," + re.sub(r"\s+", "", ref)  # the ReasonMap benchmark stores raw base64
        try:
            return image_storage(ref, self.root)
        except BadImage as err:
            raise self.fail(row, self.figure_key, str(err)) from err

    def metro(self, json_path: str, row: int) -> str:
        """The city's line -> stations JSON (markers removed) as text, read once per city."""
        if json_path not in self.cities:
            file = Path(json_path) if os.path.isabs(json_path) else self.json_root / json_path
            if not file.is_file():
                raise FileNotFoundError(f"{self.source}: row {row}: field 'json': {file} does not exist")
            try:
                lines = json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise self.fail(row, "json", f"{file} is not valid JSON ({err})") from err
            if not isinstance(lines, dict) or not all(isinstance(v, list) for v in lines.values()):
                raise self.fail(row, "json", f"{file} is not an object of line name -> station list")
            self.cities[json_path] = json.dumps({k: [_strip_markers(str(s)) for s in v] for k, v in lines.items()})
        return self.cities[json_path]


def _strip_markers(station: str) -> str:
    for marker in STATION_MARKERS:
        station = station.replace(marker, "")
    return station
