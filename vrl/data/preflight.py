"""Preflight: open every image, check every field and predict every prompt's length before training starts.

Why: in RLVR frameworks a bad row surfaces mid-run, hours in, as a crash far from its cause (a missing file, or
the "Image features and image tokens do not match" error of an over-long or placeholder-confused prompt;
shared/reference/frameworks.md (d)). One pass over the data before the first step turns each of those into a
line naming the file, the row and the field.

A row is bad for one of the reasons in :data:`REASONS`. What happens to bad rows is ``on_bad_row``:

* ``quarantine`` (the default): bad rows are dropped, each problem is written to a JSONL report (file, row,
  uid, field, reason, detail) and the counts per reason are logged as a warning and returned. Real datasets
  carry a few broken rows, and losing a run to one of them is worse than training without it. But a dataset
  that is *mostly* broken is a bug (a wrong ``data_root``, a wrong column), not noise: when more than
  ``max_bad_fraction`` of the rows are bad, the run stops anyway, after writing the report.
* ``error``: the first bad row stops the run with a message naming its file, row and field.

The prompt length counts image tokens: the chat text (system prompt and suffix included, exactly as the
rollout renders it) is tokenised, and each image adds the number of tokens the processor expands its
placeholder to, computed from the image size with the processor's own resize rule. Processors without that
rule (or ``exact_lengths=True``) are called on each row instead, which is exact by construction and slower.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets

from vrl.data.rlvr import (
    BAD_IMAGE_REF,
    BAD_TYPE,
    CORRUPT_IMAGE,
    LOAD_ERRORS_KEY,
    MISSING_IMAGE,
    PATH_ESCAPES_ROOT,
    SOURCE_KEY,
    BadImage,
    open_image,
    without_image_decoding,
)
from vrl.rollout.prompts import IMAGE_PLACEHOLDER, to_messages
from vrl.types import ANSWER_TYPES

log = logging.getLogger(__name__)

BAD_IMAGE_SIZE = "bad_image_size"
EMPTY_ANSWER = "empty_answer"
UNKNOWN_ANSWER_TYPE = "unknown_answer_type"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
RESERVED_TOKEN = "reserved_token"
PROMPT_TOO_LONG = "prompt_too_long"
PROCESSOR_ERROR = "processor_error"

#: Every reason a row can be bad for, as written in the report.
REASONS = {
    MISSING_IMAGE: "an image path does not exist or cannot be read",
    CORRUPT_IMAGE: "an image does not decode (PIL verify or load failed)",
    BAD_IMAGE_REF: "an image is neither a path, bytes, a {bytes, path} dict nor a PIL image",
    PATH_ESCAPES_ROOT: "an image path resolves outside the data root (../, absolute path or symlink)",
    BAD_IMAGE_SIZE: "the processor cannot resize the image (e.g. an aspect ratio above its limit)",
    BAD_TYPE: "the prompt is not a string, or images is not a list",
    EMPTY_ANSWER: "the answer is missing (None) or empty after str()",
    UNKNOWN_ANSWER_TYPE: f"answer_type is not one of {ANSWER_TYPES}",
    PLACEHOLDER_MISMATCH: f"the prompt's {IMAGE_PLACEHOLDER} count is neither 0 nor the number of images",
    RESERVED_TOKEN: "the prompt contains a special token of the tokenizer (e.g. <|image_pad|>) as text",
    PROMPT_TOO_LONG: "the predicted prompt length (text + image tokens) exceeds max_prompt_tokens",
    PROCESSOR_ERROR: "the processor raised on the row (exact_lengths mode, where sizes are not checked first)",
}
ON_BAD_ROW = ("quarantine", "error")
#: A progress bar is shown above this many rows (when ``progress`` is left at None).
PROGRESS_MIN_ROWS = 300


class BadRowError(ValueError):
    """The data failed the preflight: a bad row with ``on_bad_row=error``, or too many bad rows."""


@dataclass
class RowVerdict:
    """The preflight's finding on one row: ``problems`` is empty for a good row."""

    index: int
    file: str | None
    row: int | None
    uid: str | None
    problems: list[dict[str, str]] = field(default_factory=list)
    prompt_tokens: int | None = None

    def where(self) -> str:
        place = f"{self.file} row {self.row}" if self.file is not None else f"dataset index {self.index}"
        return f"{place} (uid {self.uid!r})"


@dataclass
class PreflightResult:
    """What the preflight found: the dataset without bad rows, and the counts.

    Attributes:
        dataset: the input without its bad rows (the input itself when none were bad).
        total: rows checked.
        bad_rows: rows with at least one problem.
        by_reason: problems per reason (a row can have several).
        report_path: the JSONL report, when one was written.
        seconds: wall time of the pass.
        prompt_tokens_max: the longest predicted prompt among good rows (to size ``max_prompt_tokens``).
    """

    dataset: Any
    total: int
    bad_rows: int
    by_reason: dict[str, int]
    report_path: str | None
    seconds: float
    prompt_tokens_max: int

    @property
    def kept(self) -> int:
        return self.total - self.bad_rows

    @property
    def bad_fraction(self) -> float:
        return self.bad_rows / self.total if self.total else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.by_reason.items())) or "none"
        report = f"; report: {self.report_path}" if self.report_path else ""
        return (
            f"{self.bad_rows} of {self.total} rows bad ({self.bad_fraction:.1%}), {self.kept} kept; "
            f"problems: {reasons}; longest prompt {self.prompt_tokens_max} tokens; "
            f"{self.rows_per_s:.0f} rows/s{report}"
        )


def preflight(
    dataset: Any,
    processor: Any,
    max_prompt_tokens: int,
    on_bad_row: str = "quarantine",
    max_bad_fraction: float = 0.05,
    report_path: str | None = None,
    system_prompt: str | None = None,
    prompt_suffix: str = "",
    num_proc: int = 1,
    batch_size: int = 64,
    progress: bool | None = None,
    exact_lengths: bool = False,
) -> PreflightResult:
    """Check every row of ``dataset`` before training; drop or stop on bad rows (see the module docstring).

    Args:
        dataset: rows in the :mod:`vrl.types` schema: a ``datasets.Dataset`` (images stored under an ``Image``
            feature are checked from their stored bytes or path) or any map-style dataset of row dicts.
        processor: the policy's processor (``vlm.processor``): its tokenizer, chat template and image resize
            rule define the prompt length.
        max_prompt_tokens: rows whose predicted prompt (text + image tokens) is longer are bad.
        on_bad_row: ``quarantine`` drops bad rows and reports them; ``error`` stops at the first one.
        max_bad_fraction: in ``quarantine`` mode, stop anyway when more than this fraction of rows is bad.
        report_path: JSONL file for the quarantine report (one line per problem); None writes none.
        system_prompt: the rollout's system prompt (it counts towards the length).
        prompt_suffix: the rollout's prompt suffix (it counts too).
        num_proc: worker processes (``datasets.map``; only for a ``datasets.Dataset``); 1 checks in this
            process with a progress bar.
        batch_size: rows tokenised together.
        progress: show a progress bar; None shows one above :data:`PROGRESS_MIN_ROWS` rows.
        exact_lengths: call the processor on every row instead of predicting image tokens from sizes.

    Returns:
        A :class:`PreflightResult`; its ``dataset`` holds the good rows, unchanged and in order.

    Raises:
        BadRowError: a bad row with ``on_bad_row=error`` (naming file, row and field), more than
            ``max_bad_fraction`` bad rows, or no good row left.
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    checker = RowChecker(processor, max_prompt_tokens, system_prompt, prompt_suffix, exact_lengths)
    start = time.perf_counter()
    if num_proc > 1 and isinstance(dataset, datasets.Dataset):
        verdicts = _scan_parallel(dataset, checker, batch_size, num_proc)
    else:
        show = len(dataset) > PROGRESS_MIN_ROWS if progress is None else progress
        verdicts = _scan(dataset, checker, batch_size, show, stop_at_first_bad=on_bad_row == "error")
    bad = [v for v in verdicts if v.problems]
    if bad and on_bad_row == "error":
        raise BadRowError(_bad_row_message(bad[0]))
    if report_path is not None:
        _write_report(bad, report_path)
    lengths = [v.prompt_tokens for v in verdicts if v.prompt_tokens is not None and not v.problems]
    result = PreflightResult(
        dataset=_without_rows(dataset, {v.index for v in bad}),
        total=len(verdicts),
        bad_rows=len(bad),
        by_reason=dict(Counter(p["reason"] for v in bad for p in v.problems)),
        report_path=str(report_path) if report_path is not None else None,
        seconds=time.perf_counter() - start,
        prompt_tokens_max=max(lengths, default=0),
    )
    _check_result(result, bad, max_bad_fraction)
    return result


def run_preflight(
    dataset: Any,
    processor: Any,
    split: str = "train",
    report_path: str | None = None,
    **preflight_cfg: Any,
) -> Any:
    """The build step's entry (``vrl/build.py``): :func:`preflight` with the ``data.preflight`` config node.

    Each split gets its own report, named by inserting the split before the suffix
    (``quarantine.jsonl`` -> ``quarantine.train.jsonl``); only the rank-zero process writes it (every rank
    runs the same deterministic pass and drops the same rows).

    Args:
        dataset: the instantiated ``data.train`` or ``data.val`` dataset.
        processor: ``vlm.processor``.
        split: names the split in the log line and the report file.
        report_path: the configured report path, or None for no report.
        **preflight_cfg: the other :func:`preflight` arguments (``max_prompt_tokens``, ``on_bad_row``,
            ``max_bad_fraction``, ``system_prompt``, ``prompt_suffix``, ``num_proc``, ...).

    Returns:
        The dataset without its bad rows.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    path = None
    if report_path is not None and getattr(rank_zero_only, "rank", 0) == 0:
        report = Path(report_path)
        path = str(report.with_name(f"{report.stem}.{split}{report.suffix or '.jsonl'}"))
    result = preflight(dataset, processor, report_path=path, **preflight_cfg)
    (log.warning if result.bad_rows else log.info)("preflight %s: %s", split, result.summary())
    return result.dataset


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
            names = _source_names(_meta(rows[j]))
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
        meta = _meta(row)
        source, names = meta.get(SOURCE_KEY) or {}, _source_names(meta)
        uid = None if row.get("uid") is None else str(row["uid"])
        verdict = RowVerdict(index, source.get("file"), source.get("row", index), uid)
        verdict.problems = [dict(p) for p in meta.get(LOAD_ERRORS_KEY) or []]
        known = {p.get("field") for p in verdict.problems}  # fields the loader already reported

        def add(name: str, reason: str, detail: str) -> None:
            if name not in known:
                verdict.problems.append(_problem(name, reason, detail))

        prompt, answer, images = row.get("prompt"), row.get("answer"), row.get("images")
        if not isinstance(prompt, str):
            add(names["prompt"], BAD_TYPE, f"prompt is {type(prompt).__name__}, expected str")
        if answer is None or not str(answer).strip():
            add(names["answer"], EMPTY_ANSWER, f"answer is {answer!r}")
        if row.get("answer_type") not in ANSWER_TYPES:
            add("answer_type", UNKNOWN_ANSWER_TYPE, f"{row.get('answer_type')!r} is not one of {ANSWER_TYPES}")
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


def _batches(dataset: Any, batch_size: int) -> Iterator[tuple[int, list[dict]]]:
    """(start index, rows) in order; a ``datasets.Dataset`` is read as stored, without decoding images."""
    n = len(dataset)
    if isinstance(dataset, datasets.Dataset):
        features = without_image_decoding(dataset.features)
        table = dataset.with_format("arrow")
        for start in range(0, n, batch_size):
            yield start, _rows(features, table[start : start + batch_size])
    else:
        for start in range(0, n, batch_size):
            yield start, [dataset[i] for i in range(start, min(n, start + batch_size))]


def _rows(features: datasets.Features, table: Any) -> list[dict]:
    columns = features.decode_batch(table.to_pydict())
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def _scan(
    dataset: Any, checker: RowChecker, batch_size: int, progress: bool, stop_at_first_bad: bool
) -> list[RowVerdict]:
    from rich.progress import Progress

    verdicts: list[RowVerdict] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("preflight", total=len(dataset))
        for start, rows in _batches(dataset, batch_size):
            batch = checker.check(rows, start)
            verdicts += batch
            if stop_at_first_bad and any(v.problems for v in batch):
                break  # the caller raises on the first bad row
            bar.advance(task, len(rows))
    return verdicts


class _MapCheck:
    """``datasets.map`` function for ``num_proc > 1``: arrow batch -> one JSON verdict per row (picklable)."""

    def __init__(self, checker: RowChecker, features: datasets.Features) -> None:
        self.checker, self.features = checker, features

    def __call__(self, table: Any, indices: list[int]) -> dict[str, list[str]]:
        rows = _rows(self.features, table)
        verdicts = self.checker.check(rows, indices[0]) if rows else []
        return {"verdict": [json.dumps(asdict(v)) for v in verdicts]}


def _scan_parallel(dataset: datasets.Dataset, checker: RowChecker, batch_size: int, num_proc: int) -> list:
    out = dataset.with_format("arrow").map(
        _MapCheck(checker, without_image_decoding(dataset.features)),
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        features=datasets.Features({"verdict": datasets.Value("string")}),
        keep_in_memory=True,
        load_from_cache_file=False,
        desc="preflight",
    )
    return [RowVerdict(**json.loads(v)) for v in out.with_format(None)["verdict"]]


def _meta(row: dict) -> dict:
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


def _bad_row_message(verdict: RowVerdict) -> str:
    lines = [f"bad row in {verdict.where()}:"]
    lines += [f"  field {p['field']!r}: {p['reason']}: {p['detail']}" for p in verdict.problems]
    lines.append("Fix the row, or set data.preflight.on_bad_row=quarantine to drop bad rows and report them.")
    return "\n".join(lines)


def _write_report(bad: list[RowVerdict], report_path: str | Path) -> None:
    """One JSON line per problem: enough to find the row (file, row, dataset index, uid) and to fix it."""
    path = Path(report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for v in bad:
            for p in v.problems:
                line = {"file": v.file, "row": v.row, "index": v.index, "uid": v.uid}
                line |= {"field": p.get("field"), "reason": p.get("reason"), "detail": p.get("detail")}
                f.write(json.dumps(line) + "\n")


def _without_rows(dataset: Any, drop: set[int]) -> Any:
    if not drop:
        return dataset
    keep = [i for i in range(len(dataset)) if i not in drop]
    if isinstance(dataset, datasets.Dataset):
        return dataset.select(keep)
    import torch.utils.data

    return torch.utils.data.Subset(dataset, keep)


def _check_result(result: PreflightResult, bad: list[RowVerdict], max_bad_fraction: float) -> None:
    """Stop on a mostly broken dataset (or an empty one); the report is already written."""
    too_many = result.bad_fraction > max_bad_fraction
    if not too_many and result.kept > 0:
        return
    examples = "\n".join(_bad_row_message(v).splitlines()[0] + " " + v.problems[0]["reason"] for v in bad[:5])
    why = f"more than max_bad_fraction={max_bad_fraction:.1%}" if too_many else "no good row is left"
    raise BadRowError(
        f"preflight: {result.summary()} -- {why}. A dataset this broken usually means a wrong data_root, "
        f"column key or max_prompt_tokens, not noise. First bad rows:\n{examples}"
    )
