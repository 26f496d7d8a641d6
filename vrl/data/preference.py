"""Preference-pair files (what a ``dpo`` stage reads with ``vrl.lit.preference.FilePairs``).

Two layouts, one row per pair, read with ``datasets`` (``.jsonl``/``.json`` or ``.parquet``):

- **STIC's published schema** (HF ``STIC-LVLM/stic-coco-preference-6k``): ``image`` (a path relative to the
  file's folder, raw bytes or a ``{"bytes", "path"}`` dict), ``chosen`` and ``rejected`` as chat messages
  ``[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]`` (content a string or a
  list of ``{"type": "text", "text"}`` parts); ``image_corruption`` and ``hallu_prompt`` are kept as they are.
  The prompt is the chosen conversation's user turn (STIC stores the same neutral prompt in both).
- **Multi-segment [ours]**: ``prompt``, ``image`` or ``images``, and ``segments``: a list of ``{chosen, rejected,
  weight, prompt?}`` response texts (VisRL-style steps, each with its weight in the pair's loss).

Rows come out in the vrl row schema (``prompt``, ``images`` [PIL], ``uid``) plus ``chosen``/``rejected`` texts or
``segments``. Text fields are checked for every row at load time (a bad row stops the load with a
:class:`vrl.errors.DataError` naming the file, the row and the field); images are decoded when a row is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vrl.data.images import BadImage, image_storage, open_image
from vrl.data.json_rows import read_with_datasets
from vrl.errors import DataError

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def message_text(content: Any) -> str | None:
    """The text of a chat message's content (a string, or typed parts whose text parts are joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type", "text") == "text"]
        if all(isinstance(t, str) for t in texts):
            return "".join(texts)
    return None


def _turn(messages: Any, role: str) -> str | None:
    if not isinstance(messages, list):
        return None
    for msg in messages:
        if isinstance(msg, dict) and msg.get("role") == role:
            return message_text(msg.get("content"))
    return None


class PreferenceRows:
    """A map-style dataset of pair rows from one file; see the module docstring for the layouts.

    Args:
        path: the file.
        image_root: folder that relative image paths are read from (and must stay inside); None = the file's.
    """

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such preference file")
        builder = BUILDERS.get(self.path.suffix.lower())
        if builder is None:
            raise DataError(f"{self.path}: preference files are {sorted(BUILDERS)}, got {self.path.suffix!r}")
        self.root = Path(os.path.realpath(image_root or self.path.parent))
        self.data = read_with_datasets(builder, self.path)
        if len(self.data) == 0:
            raise DataError(f"{self.path}: no rows")
        self.texts = [self._texts(i, row) for i, row in enumerate(self.data.remove_columns(self._image_columns()))]

    def _image_columns(self) -> list[str]:
        return [c for c in ("image", "images") if c in self.data.column_names]

    def _texts(self, index: int, row: dict) -> dict[str, Any]:
        where = f"{self.path}: row {index}"
        if row.get("segments") is not None:
            if not isinstance(row.get("prompt"), str):
                raise DataError(f"{where}: field 'prompt' must be text (a multi-segment row)")
            if not isinstance(row["segments"], list) or not row["segments"]:
                raise DataError(f"{where}: field 'segments' must be a non-empty list")
            return {"prompt": row["prompt"], "segments": row["segments"]}
        out = {}
        for field in ("chosen", "rejected"):
            if _turn(row.get(field), "assistant") is None:
                raise DataError(f"{where}: field {field!r} must be chat messages with an assistant text turn")
            out[field] = _turn(row[field], "assistant")
        prompt = _turn(row["chosen"], "user")
        if prompt is None:
            raise DataError(f"{where}: field 'chosen' has no user text turn (the prompt)")
        extra = {k: row[k] for k in ("image_corruption", "hallu_prompt") if k in row}
        return {"prompt": prompt, **out, **extra}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.texts[index])
        refs = []
        for column in self._image_columns():
            value = self.data[int(index)][column]
            refs += value if isinstance(value, list) else [value] if value is not None else []
        try:
            row["images"] = [open_image(image_storage(ref, self.root)) for ref in refs]
        except BadImage as err:
            raise DataError(f"{self.path}: row {index}: field 'image': {err}") from err
        row.setdefault("uid", f"{self.path.stem}-{index}")
        return row


def load_preference(path: str, image_root: str | None = None) -> PreferenceRows:
    """The pair rows of ``path`` (``_target_`` for a ``dpo`` stage's ``data``)."""
    return PreferenceRows(path, image_root)
