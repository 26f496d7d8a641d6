"""load_rlvr: local parquet / jsonl / json in the common RLVR schema -> vrl rows, images decoded on access.

Every fixture file is written into tmp_path by the test itself (no binary fixtures in the repository).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vrl.data.rlvr import (
    BAD_IMAGE_REF,
    BAD_TYPE,
    LOAD_ERRORS_KEY,
    PATH_ESCAPES_ROOT,
    SOURCE_KEY,
    load_rlvr,
    resolve_files,
)
from vrl.errors import DataError

RED, BLUE = (255, 0, 0), (0, 0, 255)


def png(size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = RED) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: Path, size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = RED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(size, color))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def meta(row: dict) -> dict:
    return json.loads(row["meta"])


def test_jsonl_maps_schema_and_keeps_extra_columns(tmp_path):
    save_png(tmp_path / "data" / "img" / "a.png", (8, 6), RED)
    file = write_jsonl(
        tmp_path / "data" / "train.jsonl",
        [
            {
                "id": "q0",
                "problem": "<image>How many?",
                "answer": 3,  # an int answer becomes the string "3"
                "images": ["img/a.png"],  # relative to the file's folder (no data_root)
                "probe_problem": "Is there a shape?",
                "probe_answer": "yes",
                "visual_key_info": {"objects": ["square"]},
            }
        ],
    )
    ds = load_rlvr(str(file))
    row = ds[0]
    assert row["prompt"] == "<image>How many?"
    assert row["answer"] == "3"
    assert (row["answer_type"], row["task"], row["format"], row["uid"]) == ("math", "rlvr", "open", "q0")
    (image,) = row["images"]
    assert image.size == (8, 6) and image.convert("RGB").getpixel((0, 0)) == RED
    # Extra columns reach the row untouched.
    assert row["probe_problem"] == "Is there a shape?" and row["probe_answer"] == "yes"
    assert row["visual_key_info"] == {"objects": ["square"]}
    assert "problem" not in row  # the question column became `prompt`
    source = meta(row)[SOURCE_KEY]
    assert (source["file"], source["row"]) == (str(file.resolve()), 0)
    assert LOAD_ERRORS_KEY not in meta(row)


def test_detection_answers_are_box_lists_the_preflight_accepts(tmp_path):
    from vrl.rewards.accuracy import gold_problem

    rows = [{"problem": "<image>Find every car.", "answer": [[1, 2, 3, 4], [5, 6, 7, 8]], "images": ["a.png"]}]
    save_png(tmp_path / "a.png")
    ds = load_rlvr(str(write_jsonl(tmp_path / "d.jsonl", rows)), answer_type="detection")
    assert ds[0]["answer"] == "[[1, 2, 3, 4], [5, 6, 7, 8]]" and ds[0]["answer_type"] == "detection"
    assert LOAD_ERRORS_KEY not in meta(ds[0]) and gold_problem(ds[0]["answer"], "detection") is None


def test_images_are_stored_as_paths_and_decoded_only_on_access(tmp_path):
    save_png(tmp_path / "a.png")
    ds = load_rlvr(str(write_jsonl(tmp_path / "d.jsonl", [{"problem": "q", "answer": "a", "images": ["a.png"]}])))
    assert ds.features["images"] == datasets.List(datasets.Image())
    stored = ds.with_format("arrow")["images"].to_pylist()  # what the dataset holds: no pixels
    assert stored == [[{"bytes": None, "path": str((tmp_path / "a.png").resolve())}]]


def test_json_array_with_data_root_and_answer_type_column(tmp_path):
    save_png(tmp_path / "images" / "b.png", (5, 7), BLUE)
    file = tmp_path / "meta" / "val.json"
    file.parent.mkdir()
    rows = [
        {"problem": "<image>Colour?", "answer": "blue", "images": ["images/b.png"], "answer_type": "text"},
        {"problem": "<image>Colour?", "answer": "blue", "images": ["images/b.png"], "answer_type": None},
    ]
    file.write_text(json.dumps(rows))  # one JSON array, not JSON lines
    ds = load_rlvr(str(file), data_root=str(tmp_path), answer_type="choice")
    assert ds[0]["images"][0].size == (5, 7)
    assert [r["answer_type"] for r in ds] == ["text", "choice"]  # the column wins; a null falls back


def test_parquet_with_bytes_dicts_single_image_column_and_pil(tmp_path):
    raw = write_parquet(tmp_path / "raw.parquet", [{"problem": "<image>q", "answer": "a", "images": [png((3, 4))]}])
    dicts = write_parquet(
        tmp_path / "dicts.parquet",
        [{"problem": "<image>q", "answer": "a", "images": [{"bytes": png((4, 5)), "path": "orig.png"}]}],
    )
    save_png(tmp_path / "one.png", (6, 2))
    single = write_parquet(tmp_path / "single.parquet", [{"problem": "q", "answer": "a", "image": "one.png"}])
    # A parquet written by `datasets` from PIL images (an Image feature, as on the Hub).
    features = datasets.Features(
        {"problem": datasets.Value("string"), "answer": datasets.Value("string"), "images": [datasets.Image()]}
    )
    hub = tmp_path / "hub.parquet"
    pil = Image.new("RGB", (9, 3), BLUE)
    datasets.Dataset.from_dict({"problem": ["q"], "answer": ["a"], "images": [[pil]]}, features).to_parquet(hub)
    sizes = {name: load_rlvr(str(f))[0]["images"][0].size for name, f in [("raw", raw), ("dicts", dicts)]}
    assert sizes == {"raw": (3, 4), "dicts": (4, 5)}
    row = load_rlvr(str(single))[0]
    assert [im.size for im in row["images"]] == [(6, 2)] and "image" not in row
    hub_image = load_rlvr(str(hub))[0]["images"][0]
    assert hub_image.size == (9, 3) and hub_image.convert("RGB").getpixel((0, 0)) == BLUE


def test_several_files_concatenate_with_file_row_uids(tmp_path):
    a = write_jsonl(tmp_path / "a" / "part.jsonl", [{"problem": "q0", "answer": "0"}, {"problem": "q1", "answer": "1"}])
    b = write_jsonl(tmp_path / "b" / "part.jsonl", [{"problem": "q2", "answer": "2"}])
    ds = load_rlvr([str(a), str(b)])
    # Named relative to the files' common folder (tmp_path), so the two part.jsonl stay distinct.
    assert ds["uid"] == ["a/part.jsonl:0", "a/part.jsonl:1", "b/part.jsonl:0"]
    assert ds["prompt"] == ["q0", "q1", "q2"]
    assert [r["images"] for r in ds] == [[], [], []]  # no image column: text-only rows
    assert len(load_rlvr([str(a), str(b)], limit=2)) == 2


def test_folder_with_split_and_glob(tmp_path):
    write_jsonl(tmp_path / "d" / "train-00000.jsonl", [{"problem": "t", "answer": "1"}])
    write_jsonl(tmp_path / "d" / "test.jsonl", [{"problem": "v", "answer": "1"}])
    write_jsonl(tmp_path / "d" / "train" / "more.jsonl", [{"problem": "t2", "answer": "1"}])
    (tmp_path / "d" / "README.md").write_text("not data")
    names = [p.relative_to(tmp_path / "d").as_posix() for p in resolve_files(str(tmp_path / "d"), split="train")]
    assert names == ["train/more.jsonl", "train-00000.jsonl"]  # sorted by path parts: "train" < "train-00000.jsonl"
    assert load_rlvr(str(tmp_path / "d" / "*.jsonl"))["prompt"] == ["v", "t"]  # sorted: test < train
    with pytest.raises(DataError, match="matches no file"):
        load_rlvr(str(tmp_path / "nothing*.jsonl"))


def test_escaping_paths_are_recorded_for_the_preflight_not_raised(tmp_path):
    root = tmp_path / "root"
    save_png(root / "in.png")
    outside = save_png(tmp_path / "outside.png")
    os.symlink(outside, root / "link.png")  # a symlink inside the root that points out of it
    refs = ["../outside.png", str(outside), "link.png", str(root / "in.png"), "http://x/y.png", 42]
    rows = [{"problem": "q", "answer": "a", "images": [ref]} for ref in refs]
    ds = load_rlvr(str(write_jsonl(root / "d.jsonl", rows[:-1])))
    errors = [meta(r).get(LOAD_ERRORS_KEY, [{}])[0].get("reason") for r in ds]
    assert errors == [PATH_ESCAPES_ROOT, PATH_ESCAPES_ROOT, PATH_ESCAPES_ROOT, None, BAD_IMAGE_REF]
    assert ds[0]["images"] == [None]  # the row still reads; its meta says why the image is gone
    assert ds[3]["images"][0].size == (8, 6)  # an absolute path inside the root is fine
    odd = load_rlvr(str(write_jsonl(root / "odd.jsonl", rows[-1:])))[0]
    assert meta(odd)[LOAD_ERRORS_KEY][0] == {
        "field": "images[0]",
        "reason": BAD_IMAGE_REF,
        "detail": "unsupported image reference of type int",
    }


def test_non_text_question_is_recorded_as_bad_type(tmp_path):
    rows = [{"problem": 5, "answer": "a"}, {"problem": "fine", "answer": None}]
    ds = load_rlvr(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert ds[0]["prompt"] is None
    assert meta(ds[0])[LOAD_ERRORS_KEY][0]["reason"] == BAD_TYPE
    assert meta(ds[0])[LOAD_ERRORS_KEY][0]["field"] == "problem"
    assert ds[1]["answer"] is None  # left for the preflight to report, not turned into "None"


def test_verl_layout_chat_prompt_and_nested_answer(tmp_path):
    rows = [
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>Angle?"}],
            "images": [{"bytes": png(), "path": None}],
            "reward_model": {"ground_truth": "30", "style": "rule"},
            "extra_info": {"index": 7},
        }
    ]
    file = write_parquet(tmp_path / "verl.parquet", rows)
    row = load_rlvr(str(file), question_key="prompt", answer_key="reward_model.ground_truth")[0]
    assert (row["prompt"], row["answer"]) == ("<image>Angle?", "30")
    assert row["reward_model"] == {"ground_truth": "30", "style": "rule"}  # nested source columns stay
    assert row["extra_info"] == {"index": 7}


def test_configuration_mistakes_fail_at_load(tmp_path):
    file = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a", "prompt": "other"}])
    with pytest.raises(ValueError, match="no column 'problem'"):
        load_rlvr(str(file))
    with pytest.raises(ValueError, match="'prompt' would be overwritten by 'question'"):
        load_rlvr(str(file), question_key="question")
    with pytest.raises(ValueError, match="answer_type must be one of"):
        load_rlvr(str(file), answer_type="vibes")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported data file suffix"):
        load_rlvr(str(tmp_path / "d.csv"))
