"""Preflight: open every image, check every field and predict every prompt's length before training starts.

Why: in RLVR frameworks a bad row surfaces mid-run, hours in, as a crash far from its cause (a missing file, or
the "Image features and image tokens do not match" error of an over-long or placeholder-confused prompt;
shared/reference/frameworks.md (d)). One pass over the data before the first step turns each of those into a
line naming the file, the row and the field.

A row is bad for one of the reasons in :data:`REASONS`. What happens to bad rows is ``on_bad_row``:

* ``quarantine`` (the default): bad rows are dropped, each problem is written to a JSONL report (file, row,
  line for JSON lines, uid, field, reason, detail) and the counts per reason are logged as a warning and
  returned. Real datasets
  carry a few broken rows, and losing a run to one of them is worse than training without it. But a dataset
  that is *mostly* broken is a bug (a wrong ``data_root``, a wrong column), not noise: when more than
  ``max_bad_fraction`` of the rows are bad, the run stops anyway, after writing the report.
* ``error``: the first bad row stops the run with a one-line message naming its file, row (line), field,
  reason and fix.

Both stops raise :class:`BadRowError`, a :class:`vrl.errors.DataError`: ``python -m vrl`` prints the line and
exits with status 2, without a traceback. Reasons, their meaning and fixes: :mod:`vrl.data.reasons`; the
per-row checks: :mod:`vrl.data.row_check`.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets

from vrl.data.images import without_image_decoding
from vrl.data.reasons import (  # noqa: F401 - re-exported: the reason codes, for callers and tests
    BAD_ANSWER,
    BAD_IMAGE_REF,
    BAD_IMAGE_SIZE,
    BAD_LINE,
    BAD_TYPE,
    CORRUPT_IMAGE,
    EMPTY_ANSWER,
    FIXES,
    MISSING_IMAGE,
    NOT_A_FILE,
    PATH_ESCAPES_ROOT,
    PLACEHOLDER_MISMATCH,
    PROCESSOR_ERROR,
    PROMPT_TOO_LONG,
    REASONS,
    RESERVED_TOKEN,
    UNKNOWN_ANSWER_TYPE,
)
from vrl.data.row_check import RowChecker, RowVerdict
from vrl.errors import DataError

log = logging.getLogger(__name__)

ON_BAD_ROW = ("quarantine", "error")
#: A progress bar is shown above this many rows (when ``progress`` is left at None).
PROGRESS_MIN_ROWS = 300


class BadRowError(DataError):
    """The data failed the preflight: a bad row with ``on_bad_row=error``, or too many bad rows.

    A :class:`vrl.errors.DataError`: ``python -m vrl`` prints its one-line message and exits with status 2.
    """


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
    try:
        result = preflight(dataset, processor, report_path=path, **preflight_cfg)
    except BadRowError as err:
        raise BadRowError(f"{split} data: {err}") from None
    (log.warning if result.bad_rows else log.info)("preflight %s: %s", split, result.summary())
    return result.dataset


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


def _bad_row_message(verdict: RowVerdict) -> str:
    """One line: where the row is, each problem (field, reason, detail), and what to do."""
    problems = "; ".join(f"field {p['field']!r}: {p['reason']}: {_one_line(p['detail'])}" for p in verdict.problems)
    fixes = ", ".join(dict.fromkeys(FIXES.get(p["reason"], "fix the row") for p in verdict.problems))
    return (
        f"bad row in {verdict.where()}: {problems}. Fix: {fixes}; or set data.preflight.on_bad_row=quarantine "
        "to drop bad rows and list them in the quarantine report"
    )


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _write_report(bad: list[RowVerdict], report_path: str | Path) -> None:
    """One JSON line per problem: enough to find the row (file, row, dataset index, uid) and to fix it."""
    path = Path(report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for v in bad:
            for p in v.problems:
                line = {"file": v.file, "row": v.row, "index": v.index, "uid": v.uid}
                line |= {"line": v.line} if v.line is not None else {}
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
    if result.total == 0:
        raise BadRowError("preflight: the dataset has no rows; check the data path (and limit, split)")
    first = bad[0].where() + ": " + ", ".join(f"field {p['field']!r}: {p['reason']}" for p in bad[0].problems)
    why = f"more than max_bad_fraction={max_bad_fraction:.1%}" if too_many else "no good row is left"
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(result.by_reason.items()))
    report = f"; every bad row is listed in {result.report_path}" if result.report_path else ""
    raise BadRowError(
        f"preflight: {result.bad_rows} of {result.total} rows are bad ({result.bad_fraction:.1%}), {why} "
        f"(problems: {reasons}); first: {first}{report}. A dataset this broken usually means a wrong data_root, "
        "column key or max_prompt_tokens, not noise: fix that, or raise data.preflight.max_bad_fraction"
    )
