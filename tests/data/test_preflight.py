"""preflight: every bad-row kind is caught, named (file, row, field) or quarantined, and lengths are exact.

Token arithmetic for the tiny Qwen processors (patch 14, merge 2, so the resize factor is 28; pixel bounds
56*56 = 3136 to 224*224 = 50176): a side-by-side image of s px keeps its size when s is a multiple of 28 within
the bounds, has (s/14)^2 patches and (s/14)^2 / 4 image tokens: 56 px -> 4, 112 px -> 16, 224 px -> 64.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vrl.build import build_module
from vrl.data.preflight import (
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
    RESERVED_TOKEN,
    UNKNOWN_ANSWER_TYPE,
    BadRowError,
    RowChecker,
    preflight,
    run_preflight,
)
from vrl.data.rlvr import load_rlvr
from vrl.errors import DataError
from vrl.models.loading import load_vlm
from vrl.sampler.prompts import encode_prompts

Q = "<image>What colour?"


def png(size: tuple[int, int], color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def processor():
    return load_vlm("tiny:qwen2_5_vl").processor


def actual_length(processor, row: dict, system_prompt: str | None = None, suffix: str = "") -> int:
    """The prompt length the rollout really produces (one row, so no padding)."""
    enc, _ = encode_prompts(processor, [row], system_prompt, suffix)
    return enc["input_ids"].shape[1]


#: (row in the jsonl, the reason it is bad or None, the field the report names). Index = jsonl row.
JSONL_ROWS = [
    ({"problem": Q, "answer": "red", "images": ["img/red.png"]}, None, None),
    ({"problem": "Which is bigger?", "answer": "A", "images": ["img/red.png", "img/blue.png"]}, None, None),
    ({"problem": Q, "answer": "red", "images": ["img/missing.png"]}, MISSING_IMAGE, "images[0]"),
    ({"problem": Q, "answer": "", "images": ["img/red.png"]}, EMPTY_ANSWER, "answer"),
    ({"problem": Q, "answer": None, "images": ["img/red.png"]}, EMPTY_ANSWER, "answer"),
    ({"problem": 5, "answer": "red", "images": ["img/red.png"]}, BAD_TYPE, "problem"),
    ({"problem": "<image><image>Same?", "answer": "no", "images": ["img/red.png"]}, PLACEHOLDER_MISMATCH, "problem"),
    ({"problem": Q, "answer": "red", "images": ["img/big.png"]}, PROMPT_TOO_LONG, "problem"),
    ({"problem": Q, "answer": "red", "images": ["../outside.png"]}, PATH_ESCAPES_ROOT, "images[0]"),
    ({"problem": Q, "answer": "red", "images": ["<OUTSIDE>"]}, PATH_ESCAPES_ROOT, "images[0]"),
    ({"problem": "2+2?", "answer": "4", "images": []}, None, None),
    ({"problem": "<|image_pad|><image>?", "answer": "a", "images": ["img/red.png"]}, RESERVED_TOKEN, "problem"),
    ({"problem": Q, "answer": "red", "images": ["img/thin.png"]}, BAD_IMAGE_SIZE, "images[0]"),
    ({"problem": Q, "answer": "red", "images": ["img/red.png"], "answer_type": "vibes"}, UNKNOWN_ANSWER_TYPE, None),
]
#: The parquet file (loaded after the jsonl): raw image bytes, one good row and one corrupt one.
PARQUET_ROWS = [
    ({"problem": Q, "answer": "blue", "images": [png((56, 56), "blue")]}, None, None),
    ({"problem": Q, "answer": "red", "images": [b"\x89PNG\r\n\x1a\n but not really"]}, CORRUPT_IMAGE, "images[0]"),
]
ALL_ROWS = JSONL_ROWS + PARQUET_ROWS
GOOD = [i for i, (_, reason, _) in enumerate(ALL_ROWS) if reason is None]
BAD = [i for i, (_, reason, _) in enumerate(ALL_ROWS) if reason is not None]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The mixed dataset: a jsonl (paths) and a parquet (bytes) under one folder, loaded together."""
    tmp = tmp_path_factory.mktemp("preflight")
    root = tmp / "data"
    (root / "img").mkdir(parents=True)
    (root / "img" / "red.png").write_bytes(png((56, 56), "red"))
    (root / "img" / "blue.png").write_bytes(png((56, 56), "blue"))
    (root / "img" / "big.png").write_bytes(png((224, 224), "red"))
    (root / "img" / "thin.png").write_bytes(png((300, 1), "red"))  # aspect ratio 300 > Qwen's limit of 200
    (tmp / "outside.png").write_bytes(png((56, 56), "red"))
    rows = [{"answer_type": None, **row} for row, _, _ in JSONL_ROWS]
    rows[9]["images"] = [str(tmp / "outside.png")]  # an absolute path outside the data root
    jsonl = root / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = root / "train.parquet"
    pq.write_table(pa.Table.from_pylist([{"answer_type": None, **row} for row, _, _ in PARQUET_ROWS]), parquet)
    return load_rlvr([str(jsonl), str(parquet)]), jsonl, parquet


def where(i: int, jsonl: Path, parquet: Path) -> tuple[str, int]:
    """(file, row) of dataset index i in the source files."""
    return (str(jsonl), i) if i < len(JSONL_ROWS) else (str(parquet), i - len(JSONL_ROWS))


def test_limit_sits_between_the_good_and_the_big_image_prompt(data, processor):
    """Precondition of the fixture: max_prompt_tokens=L0+30 passes every good row and fails row 7 only."""
    ds, _, _ = data
    base = actual_length(processor, ds[0])
    # Row 7 has row 0's text with a 224 px image instead of a 56 px one: 64 - 4 = 60 more tokens.
    assert actual_length(processor, ds[7]) == base + 60
    assert all(actual_length(processor, ds[i]) <= base + 30 for i in GOOD)


def test_quarantine_drops_reports_and_counts_every_kind(data, processor, tmp_path):
    ds, jsonl, parquet = data
    limit = actual_length(processor, ds[0]) + 30
    report = tmp_path / "q.jsonl"
    result = preflight(ds, processor, limit, max_bad_fraction=1.0, report_path=str(report))
    assert (result.total, result.bad_rows, result.kept) == (len(ALL_ROWS), len(BAD), len(GOOD))
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    found = {(line["file"], line["row"], line["reason"]) for line in lines}
    assert found == {(*where(i, jsonl, parquet), ALL_ROWS[i][1]) for i in BAD}
    # JSON lines also give the 1-based line (no blank lines in the fixture: row + 1); parquet has none.
    assert all(line["line"] == line["row"] + 1 for line in lines if line["file"] == str(jsonl))
    assert not any("line" in line for line in lines if line["file"] == str(parquet))
    fields = {(line["row"], line["field"]) for line in lines if line["file"] == str(jsonl)}
    assert fields == {(i, ALL_ROWS[i][2] or "answer_type") for i in BAD if i < len(JSONL_ROWS)}
    # rows 3 ("") and 4 (None) are the two empty answers; rows 8 and 9 the two escapes; one of each other kind.
    assert result.by_reason == {
        MISSING_IMAGE: 1,
        EMPTY_ANSWER: 2,
        BAD_TYPE: 1,
        PLACEHOLDER_MISMATCH: 1,
        PROMPT_TOO_LONG: 1,
        PATH_ESCAPES_ROOT: 2,
        RESERVED_TOKEN: 1,
        BAD_IMAGE_SIZE: 1,
        UNKNOWN_ANSWER_TYPE: 1,
        CORRUPT_IMAGE: 1,
    }
    assert all(line["uid"] and line["detail"] for line in lines)
    # Good rows survive unchanged and in order, images included.
    assert len(result.dataset) == len(GOOD)
    for kept, i in zip(result.dataset, GOOD):
        original = ds[i]
        assert {k: v for k, v in kept.items() if k != "images"} == {k: v for k, v in original.items() if k != "images"}
        assert [im.tobytes() for im in kept["images"]] == [im.tobytes() for im in original["images"]]


@pytest.mark.parametrize("i", BAD, ids=lambda i: f"row{i}-{ALL_ROWS[i][1]}")
def test_error_mode_names_file_row_field_reason_and_fix_in_one_line(data, processor, i):
    ds, jsonl, parquet = data
    limit = actual_length(processor, ds[0]) + 30
    file, row = where(i, jsonl, parquet)
    with pytest.raises(DataError) as err:  # python -m vrl prints a DataError as one line and exits 2
        preflight(ds.select([0, i]), processor, limit, on_bad_row="error")
    message = str(err.value)
    assert isinstance(err.value, BadRowError)
    place = f"line {row + 1}" if file == str(jsonl) else f"row {row}"  # JSON lines: the 1-based line
    assert f"{file} {place} " in message
    assert f"field '{ALL_ROWS[i][2] or 'answer_type'}'" in message
    assert ALL_ROWS[i][1] in message
    assert f"Fix: {FIXES[ALL_ROWS[i][1]]}" in message
    assert "\n" not in message


def test_max_bad_fraction_stops_the_run_after_writing_the_report(data, processor, tmp_path):
    ds, _, _ = data
    four = ds.select([0, 1, 10, 2])  # one bad row (missing image) in four: a bad fraction of 0.25
    report = tmp_path / "q.jsonl"
    with pytest.raises(BadRowError, match="1 of 4 rows are bad .25.0%., more than max_bad_fraction=20.0%"):
        preflight(four, processor, 4096, max_bad_fraction=0.2, report_path=str(report))
    assert json.loads(report.read_text())["reason"] == MISSING_IMAGE
    ok = preflight(four, processor, 4096, max_bad_fraction=0.25)  # "more than" the fraction stops, not equal
    assert ok.kept == 3
    with pytest.raises(BadRowError, match="no good row is left"):
        preflight(ds.select([2]), processor, 4096, max_bad_fraction=1.0)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_predicted_length_equals_the_processor_output(data, family, tmp_path):
    processor = load_vlm(f"tiny:{family}").processor
    ds, _, _ = data
    extra = {
        "prompt": "Compare: <image> and <image>",
        "images": [Image.new("RGB", (112, 84)), Image.new("L", (60, 90))],
    }
    rows = [ds[0], ds[1], ds[7], ds[10], {**ds[0], **extra}]
    for system_prompt, suffix in [(None, ""), ("Think first.", " Answer in one word.")]:
        expected = [actual_length(processor, r, system_prompt, suffix) for r in rows]
        for exact in (False, True):
            checker = RowChecker(processor, 10_000, system_prompt, suffix, exact_lengths=exact)
            verdicts = checker.check(rows, 0)
            assert [v.prompt_tokens for v in verdicts] == expected
            assert not any(v.problems for v in verdicts)


def test_exact_mode_reports_rows_the_processor_rejects(data, processor):
    """Exact mode skips the size check and lets the processor judge: row 12's 300x1 image makes it raise."""
    ds, _, _ = data
    result = preflight(ds.select([0, 12]), processor, 4096, max_bad_fraction=1.0, exact_lengths=True)
    assert result.by_reason == {PROCESSOR_ERROR: 1}
    assert result.dataset["uid"] == [ds[0]["uid"]]


def test_image_tokens_follow_the_resize_rule(processor):
    """Same text, 112 px vs 56 px image: 16 - 4 = 12 more tokens (module docstring arithmetic)."""
    checker = RowChecker(processor, 10_000)
    small = {"prompt": Q, "images": [Image.new("RGB", (56, 56))], "answer": "red", "answer_type": "text"}
    big = {**small, "images": [Image.new("RGB", (112, 112))]}
    n_small, n_big = (v.prompt_tokens for v in checker.check([small, big], 0))
    assert n_big - n_small == 12


def test_parallel_pass_matches_the_serial_one(data, processor):
    ds, _, _ = data
    limit = actual_length(processor, ds[0]) + 30
    serial = preflight(ds, processor, limit, max_bad_fraction=1.0, num_proc=1)
    parallel = preflight(ds, processor, limit, max_bad_fraction=1.0, num_proc=2, batch_size=4)
    assert (parallel.by_reason, parallel.kept) == (serial.by_reason, serial.kept)
    assert parallel.dataset["uid"] == serial.dataset["uid"]


def test_plain_list_of_rows_with_pil_images(processor):
    # "red", not "a": a text answer is compared after dropping articles, so "a" alone is no answer at all
    good = {"prompt": Q, "images": [Image.new("RGB", (56, 56))], "answer": "red", "answer_type": "text", "uid": "g"}
    rows = [good, {**good, "prompt": 7, "uid": "p"}, {**good, "answer": "  ", "uid": "a"}]
    result = preflight(rows, processor, 4096, max_bad_fraction=1.0)
    assert result.by_reason == {BAD_TYPE: 1, EMPTY_ANSWER: 1}
    assert [r["uid"] for r in result.dataset] == ["g"]
    with pytest.raises(BadRowError, match=r"dataset index 1 \(uid 'p'\)"):
        preflight(rows, processor, 4096, on_bad_row="error")


def test_run_preflight_writes_a_report_per_split(data, processor, tmp_path):
    ds, _, _ = data
    report = str(tmp_path / "quarantine.jsonl")
    kept = run_preflight(ds, processor, "val", report, max_prompt_tokens=4096, max_bad_fraction=1.0)
    assert len(kept) == len(GOOD) + 1  # with 4096 tokens the big-image row (7) is fine
    assert (tmp_path / "quarantine.val.jsonl").exists()


def test_build_module_runs_the_configured_preflight(compose, data, tmp_path):
    ds, jsonl, parquet = data
    overrides = ["data=rlvr_local", f"data.train.path=[{jsonl},{parquet}]", "data.val=null", f"output_dir={tmp_path}"]
    cfg = compose([*overrides, "logger=none", "data.preflight.max_bad_fraction=1.0"])
    module = build_module(cfg)
    assert len(module.train_data) == len(GOOD) + 1  # the default 4096-token limit lets row 7 through
    assert (tmp_path / "quarantine.train.jsonl").exists()


# ----------------------------------------------------------------- bad data: one line or quarantined, never hung


@contextmanager
def deadline(seconds: int):
    """Fail the test (instead of hanging the suite) if the block takes longer than ``seconds``."""

    def fail(signum, frame):
        pytest.fail(f"still running after {seconds} s: the preflight hangs", pytrace=False)

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def report_rows(path: Path) -> set[tuple]:
    return {(r.get("line"), r["field"], r["reason"]) for r in map(json.loads, path.read_text().splitlines())}


def test_answers_that_do_not_parse_for_their_type_are_bad_rows(processor, tmp_path):
    """Each bad answer here used to be trained on with reward 0 (or, for the list, as the text "['red', 'blue']")."""
    rows = [
        ("[10, 20, 30, 40]", "bbox", None),
        ("[10, 20, 30]", "bbox", BAD_ANSWER),  # three numbers, not four
        ("the left one", "bbox", BAD_ANSWER),
        ("7", "number", None),
        ("seven", "number", BAD_ANSWER),  # a word: the number reward finds no number in it
        ("red", "text", None),
        (["red", "blue"], "text", BAD_TYPE),  # a list among strings
        ("maybe", "yesno", BAD_ANSWER),
        ("the red one", "choice", BAD_ANSWER),
        ("B", "choice", None),
    ]
    file = tmp_path / "train.jsonl"
    file.write_text("".join(json.dumps({"problem": "q", "answer": a, "answer_type": t}) + "\n" for a, t, _ in rows))
    report = tmp_path / "q.jsonl"
    result = preflight(load_rlvr(str(file)), processor, 4096, max_bad_fraction=1.0, report_path=str(report))
    assert report_rows(report) == {(n, "answer", why) for n, (_, _, why) in enumerate(rows, start=1) if why}
    assert result.dataset["answer"] == ["[10, 20, 30, 40]", "7", "red", "B"]


def test_a_nan_answer_in_parquet_is_a_bad_row_not_the_text_nan(processor, tmp_path):
    """``str(nan)`` is "nan", which the default "math" type would accept as a word; it is a missing value."""
    file = tmp_path / "train.parquet"
    pq.write_table(pa.table({"problem": ["q0", "q1", "q2"], "answer": [2.5, float("nan"), 4.0]}), file)
    report = tmp_path / "q.jsonl"
    result = preflight(load_rlvr(str(file)), processor, 4096, max_bad_fraction=1.0, report_path=str(report))
    assert report_rows(report) == {(None, "answer", BAD_ANSWER)}
    assert result.dataset["answer"] == ["2.5", "4.0"]


def test_a_bbox_answer_stored_as_a_list_of_numbers_is_a_box(processor, tmp_path):
    file = tmp_path / "train.jsonl"
    file.write_text(json.dumps({"problem": "q", "answer": [1, 2, 30, 40], "answer_type": "bbox"}) + "\n")
    result = preflight(load_rlvr(str(file)), processor, 4096)
    assert result.dataset["answer"] == ["[1, 2, 30, 40]"]


def test_broken_json_lines_are_quarantined_with_file_and_line(processor, tmp_path):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "img" / "red.png").write_bytes(png((56, 56)))
    good = json.dumps({"problem": Q, "answer": "red", "images": ["img/red.png"]}).encode()
    lines = [good, b'{"problem": "<image>?", "answer": "re', b"\xff\xfe{}", b"[1, 2]", good]
    file = root / "train.jsonl"
    file.write_bytes(b"\n".join(lines) + b"\n")
    report = tmp_path / "q.jsonl"
    result = preflight(load_rlvr(str(file)), processor, 4096, max_bad_fraction=1.0, report_path=str(report))
    assert report_rows(report) == {(n, f"line {n}", BAD_LINE) for n in (2, 3, 4)}
    assert {r["file"] for r in map(json.loads, report.read_text().splitlines())} == {str(file.resolve())}
    assert result.kept == 2
    with pytest.raises(DataError, match=rf"{file.name} line 2 .*field 'line 2': bad_line: not valid JSON"):
        preflight(load_rlvr(str(file)), processor, 4096, on_bad_row="error")


def test_a_nul_byte_in_an_image_path_is_a_bad_row(processor, tmp_path):
    (tmp_path / "red.png").write_bytes(png((56, 56)))
    rows = [{"problem": Q, "answer": "red", "images": [name]} for name in ("red.png", "r\x00.png")]
    file = tmp_path / "train.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json.dumps escapes it: valid JSON
    report = tmp_path / "q.jsonl"
    result = preflight(load_rlvr(str(file)), processor, 4096, max_bad_fraction=1.0, report_path=str(report))
    assert report_rows(report) == {(2, "images[0]", BAD_IMAGE_REF)}
    assert result.kept == 1


def test_a_named_pipe_image_is_a_bad_row_not_a_hang(processor, tmp_path):
    (tmp_path / "red.png").write_bytes(png((56, 56)))
    os.mkfifo(tmp_path / "pipe.png")  # opening it for reading would block until a writer comes: never
    os.mkdir(tmp_path / "folder.png")
    rows = [{"problem": Q, "answer": "red", "images": [name]} for name in ("red.png", "pipe.png", "folder.png")]
    file = tmp_path / "train.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "q.jsonl"
    with deadline(30):
        result = preflight(load_rlvr(str(file)), processor, 4096, max_bad_fraction=1.0, report_path=str(report))
    assert report_rows(report) == {(2, "images[0]", NOT_A_FILE), (3, "images[0]", NOT_A_FILE)}
    assert "named pipe" in report.read_text()
    assert result.kept == 1


def test_a_mostly_bad_dataset_stops_with_one_line_and_the_count(processor, tmp_path):
    (tmp_path / "red.png").write_bytes(png((56, 56)))
    rows = [{"problem": Q, "answer": "red", "images": [f"{name}.png"]} for name in ("red", "gone1", "gone2", "gone3")]
    file = tmp_path / "train.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "q.jsonl"
    with pytest.raises(DataError) as err:  # 3 bad of 4 = 75% > the default 5%
        preflight(load_rlvr(str(file)), processor, 4096, report_path=str(report))
    message = str(err.value)
    assert "3 of 4 rows are bad (75.0%), more than max_bad_fraction=5.0%" in message
    assert f"{file.resolve()} line 2 " in message and "missing_image" in message and str(report) in message
    assert "\n" not in message


@pytest.mark.slow
def test_cli_prints_the_bad_row_as_one_line_and_exits_2(tmp_path):
    (tmp_path / "red.png").write_bytes(png((56, 56)))
    rows = [{"problem": Q, "answer": "red", "images": ["red.png"]}, {"problem": Q, "answer": "", "images": []}]
    file = tmp_path / "train.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["experiment=none", "data=rlvr_local", f"data.train.path={file}", "data.val=null"]
    args += ["data.preflight.on_bad_row=error"]
    out = subprocess.run(
        [sys.executable, "-P", "-m", "vrl", *args, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    said = [line for line in out.stderr.splitlines() if line.startswith("[vrl] data error: ")]
    assert len(said) == 1, out.stderr[-3000:]
    assert f"{file.resolve()} line 2 " in said[0] and "field 'answer': empty_answer" in said[0] and "Fix: " in said[0]
    assert "Traceback" not in out.stderr
