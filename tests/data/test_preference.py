"""Preference files: STIC's published schema and the multi-segment layout, read with datasets; bad rows named."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vrl.data.preference import load_preference
from vrl.errors import DataError
from vrl.lit.preference import FilePairs


def _msgs(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def image_dir(tmp_path):
    Image.new("RGB", (8, 6), (255, 0, 0)).save(tmp_path / "a.png")
    return tmp_path


def test_stic_rows_become_vrl_rows_with_chosen_and_rejected_texts(image_dir):
    rows = [
        {
            "image": "a.png",
            "image_corruption": True,
            "hallu_prompt": "",
            "chosen": _msgs("<image>\nDescribe.", "red"),
            "rejected": _msgs("<image>\nDescribe.", "blue"),
        },
        {
            "prompt": "<image>\nQ",
            "image": "a.png",
            "segments": [
                {"chosen": "x", "rejected": "y", "weight": 0.5},
                {"chosen": "z", "rejected": "w", "weight": 0.5},
            ],
        },
    ]
    data = load_preference(str(_write(image_dir / "pairs.jsonl", rows)))
    first = data[0]
    assert (first["prompt"], first["chosen"], first["rejected"]) == ("<image>\nDescribe.", "red", "blue")
    assert first["images"][0].size == (8, 6) and first["image_corruption"] is True
    records, stats = FilePairs().build(None, data, [0, 1])
    assert records[0] == {"index": 0, "segments": [{"chosen": "red", "rejected": "blue", "weight": 1.0}]}
    assert [s["weight"] for s in records[1]["segments"]] == [0.5, 0.5] and stats["dpo/pairs_built"] == 2.0


def test_bad_rows_and_files_are_named(image_dir):
    bad = [{"image": "a.png", "chosen": _msgs("p", "a"), "rejected": [{"role": "user", "content": "p"}]}]
    with pytest.raises(DataError, match=r"bad.jsonl: row 0: field 'rejected' must be chat messages"):
        load_preference(str(_write(image_dir / "bad.jsonl", bad)))
    missing = [{"image": "nope.png", "chosen": _msgs("p", "a"), "rejected": _msgs("p", "b")}]
    data = load_preference(str(_write(image_dir / "missing.jsonl", missing)))
    with pytest.raises(DataError, match=r"missing.jsonl: row 0: field 'image'"):
        data[0]
    with pytest.raises(DataError, match="no such preference file"):
        load_preference(str(image_dir / "absent.jsonl"))
