"""One row of the preflight: its fields, its images and its predicted prompt length (:mod:`vrl.data.preflight`).

:class:`RowChecker` checks a batch of rows: each row's fields and images one by one (types, the answer parsed
for its ``answer_type`` by the accuracy reward's own parsers, every image opened, placeholders, special
tokens), then the prompt lengths of the good rows together, image tokens included. The result per row is a
:class:`RowVerdict` whose ``problems`` name the field, the reason (:mod:`vrl.data.reasons`) and a detail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vrl.data.images import BadImage, open_image
from vrl.data.reasons import (
    BAD_ANSWER,
    BAD_IMAGE_SIZE,
    BAD_TYPE,
    EMPTY_ANSWER,
    LOAD_ERRORS_KEY,
    PLACEHOLDER_MISMATCH,
    PROCESSOR_ERROR,
    PROMPT_TOO_LONG,
    RESERVED_TOKEN,
    ROW_LEVEL,
    SOURCE_KEY,
    UNKNOWN_ANSWER_TYPE,
)
from vrl.rewards.accuracy import gold_problem
from vrl.sampler.prompts import IMAGE_PLACEHOLDER, to_messages
from vrl.types import ANSWER_TYPES


@dataclass
class RowVerdict:
    """The preflight's finding on one row: ``problems`` is empty for a good row.

    ``row`` is the 0-based row of its file, ``line`` the 1-based line for JSON lines (None otherwise).
    """

    index: int
    file: str | None
    row: int | None
    uid: str | None
    problems: list[dict[str, str]] = field(default_factory=list)
    prompt_tokens: int | None = None
    line: int | None = None

    def where(self) -> str:
        if self.file is None:
            return f"dataset index {self.index} (uid {self.uid!r})"
        place = f"line {self.line}" if self.line is not None else f"row {self.row}"
        return f"{self.file} {place} (uid {self.uid!r})"


class RowChecker:
    """Checks batches of rows: fields and images one by one, then prompt lengths for the good ones together.

    Args: see :func:`preflight`.
    """

    def __init__(
        self,
        processor: Any,
        max_prompt_tokens: int,
        system_prompt: str | None = None,
        prompt_suffix: str = "",
        exact_lengths: bool = False,
    ) -> None:
        self.processor = processor
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.system_prompt = system_prompt
        self.prompt_suffix = prompt_suffix
        image_processor = getattr(processor, "image_processor", None)
        self.merge_size = getattr(image_processor, "merge_size", None)
        has_rule = hasattr(image_processor, "get_number_of_image_patches") and self.merge_size
        self.exact = exact_lengths or not has_rule
        added = getattr(processor.tokenizer, "added_tokens_decoder", {}) or {}
        self.reserved = sorted({t.content for t in added.values() if getattr(t, "special", False)})

    def check(self, rows: list[dict], start: int) -> list[RowVerdict]:
        """Verdicts for ``rows``, which are dataset indices ``start, start + 1, ...``."""
        verdicts, images = [], []
        for offset, row in enumerate(rows):
            verdict, opened = self.check_fields(row, start + offset)
            verdicts.append(verdict)
            images.append(opened)
        good = [j for j, v in enumerate(verdicts) if not v.problems]
        lengths = self.prompt_lengths([rows[j] for j in good], [images[j] for j in good])
        for j, n in zip(good, lengths):
            names = _source_names(row_meta(rows[j]))
            if isinstance(n, Exception):
                verdicts[j].problems.append(_problem(names["images"], PROCESSOR_ERROR, f"{type(n).__name__}: {n}"))
                continue
            verdicts[j].prompt_tokens = n
            if n > self.max_prompt_tokens:
                detail = f"{n} tokens (text + image tokens) > max_prompt_tokens={self.max_prompt_tokens}"
                verdicts[j].problems.append(_problem(names["prompt"], PROMPT_TOO_LONG, detail))
        return verdicts

    def check_fields(self, row: dict, index: int) -> tuple[RowVerdict, list]:
        """Types, answer, images (opened), placeholders; returns the verdict and the opened images."""
        meta = row_meta(row)
        source, names = meta.get(SOURCE_KEY) or {}, _source_names(meta)
        uid = None if row.get("uid") is None else str(row["uid"])
        verdict = RowVerdict(index, source.get("file"), source.get("row", index), uid, line=source.get("line"))
        verdict.problems = [dict(p) for p in meta.get(LOAD_ERRORS_KEY) or []]
        if any(p.get("reason") in ROW_LEVEL for p in verdict.problems):
            return verdict, []  # nothing of the row could be read (e.g. a broken JSON line)
        known = {p.get("field") for p in verdict.problems}  # fields the loader already reported

        def add(name: str, reason: str, detail: str) -> None:
            if name not in known:
                verdict.problems.append(_problem(name, reason, detail))

        prompt, answer, images = row.get("prompt"), row.get("answer"), row.get("images")
        if not isinstance(prompt, str):
            add(names["prompt"], BAD_TYPE, f"prompt is {type(prompt).__name__}, expected str")
        answer_type = row.get("answer_type")
        if answer is None or not str(answer).strip():
            add(names["answer"], EMPTY_ANSWER, f"answer is {answer!r}")
        elif answer_type in ANSWER_TYPES and (why := gold_problem(str(answer), answer_type)) is not None:
            add(names["answer"], BAD_ANSWER, why)  # the accuracy reward could not read it: no signal, only noise
        if answer_type not in ANSWER_TYPES:
            add("answer_type", UNKNOWN_ANSWER_TYPE, f"{answer_type!r} is not one of {ANSWER_TYPES}")
        if images is None:
            images = []
        if not isinstance(images, (list, tuple)):
            add(names["images"], BAD_TYPE, f"images is {type(images).__name__}, expected a list")
            images = []
        opened = []
        for k, ref in enumerate(images):
            name = f"{names['images']}[{k}]"
            if name in known:
                continue
            try:
                opened.append(self._open(ref))
            except BadImage as err:
                add(name, err.reason, str(err))
        if isinstance(prompt, str):
            self._check_prompt_text(prompt, len(images), names["prompt"], add)
        return verdict, opened

    def _check_prompt_text(self, prompt: str, n_images: int, name: str, add: Any) -> None:
        placeholders = prompt.count(IMAGE_PLACEHOLDER)
        if placeholders not in (0, n_images):
            add(name, PLACEHOLDER_MISMATCH, f"{placeholders} {IMAGE_PLACEHOLDER} placeholders but {n_images} images")
        found = [t for t in self.reserved if t in prompt]
        if found:
            add(name, RESERVED_TOKEN, f"prompt contains {found}, which the processor would treat as control tokens")

    def _open(self, ref: Any) -> Any:
        """The image itself (exact mode) or its image-token count, from its size after EXIF rotation."""
        image = open_image(ref)
        if self.exact:
            return image
        width, height = image.size
        try:
            patches = self.processor.image_processor.get_number_of_image_patches(height, width, {})
        except ValueError as err:  # the resize rule rejects it (Qwen: aspect ratio > 200)
            raise BadImage(BAD_IMAGE_SIZE, f"{width}x{height} px: {err}") from err
        return patches // self.merge_size**2

    def prompt_lengths(self, rows: list[dict], images: list[list]) -> list[int | Exception]:
        """Predicted ``input_ids`` length of each row's prompt as the rollout would encode it.

        In exact mode a row the processor raises on gets the exception instead of a length.
        """
        if not rows:
            return []
        texts = [
            self.processor.apply_chat_template(
                to_messages({**row, "images": imgs}, self.system_prompt, self.prompt_suffix),
                tokenize=False,
                add_generation_prompt=True,
            )
            for row, imgs in zip(rows, images)
        ]
        if self.exact:
            return [self._processor_length(text, imgs) for text, imgs in zip(texts, images)]
        # Each image is one image-pad token in the text, which the processor expands to its token count.
        ids = self.processor.tokenizer(texts)["input_ids"]
        return [len(seq) + sum(n - 1 for n in imgs) for seq, imgs in zip(ids, images)]

    def _processor_length(self, text: str, images: list) -> int | Exception:
        kwargs = {"images": [im.convert("RGB") for im in images]} if images else {}
        try:
            return len(self.processor(text=[text], **kwargs)["input_ids"][0])
        except (ValueError, TypeError, RuntimeError) as err:  # e.g. Qwen's resize rule on a 1x300 image
            return err


def row_meta(row: dict) -> dict:
    """A row's ``meta`` as a dict (it is stored as JSON text); {} when it is missing or not an object."""
    raw = row.get("meta")
    if isinstance(raw, dict):
        return raw
    try:
        meta = json.loads(raw) if isinstance(raw, str) else {}
    except json.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _source_names(meta: dict) -> dict[str, str]:
    """Schema field -> the source column it was read from (what the report names), when the loader says."""
    columns = (meta.get(SOURCE_KEY) or {}).get("columns") or {}
    return {name: columns.get(name) or name for name in ("prompt", "answer", "images")}


def _problem(name: str, reason: str, detail: str) -> dict[str, str]:
    return {"field": name, "reason": reason, "detail": detail}
