"""The example dataset (examples/shapes) loads as documented in the README and trains with its experiment."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from vrl.types import ANSWER_TYPES

SHAPES = Path(__file__).resolve().parents[2] / "examples" / "shapes"


def _paths(tmp_path) -> list[str]:
    return [
        "experiment=grpo_shapes_tiny",
        f"data.train.path={SHAPES / 'train.jsonl'}",
        f"data.val.path={SHAPES / 'val.parquet'}",
        f"output_dir={tmp_path}",
    ]


def test_example_files_load_and_pass_the_preflight(compose, tmp_path):
    from hydra.utils import instantiate

    from vrl.data.preflight import run_preflight
    from vrl.models.loading import load_vlm
    from vrl.validate import validate_config

    cfg = compose(_paths(tmp_path))
    validate_config(cfg)
    train, val = instantiate(cfg.data.train), instantiate(cfg.data.val)
    assert (len(train), len(val)) == (48, 16)
    first = json.loads((SHAPES / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "problem", "answer", "answer_type", "images"}  # the schema the README shows
    assert Counter(train["answer_type"]) == {"text": 12, "yesno": 12, "number": 12, "choice": 12}
    assert set(val["answer_type"]) <= set(ANSWER_TYPES)
    row = train[3]  # the choice rows have no <image>: their image goes before the text
    assert "<image>" not in row["prompt"] and len(row["images"]) == 1
    assert val[0]["images"][0].size == (56, 56)  # parquet rows carry the image bytes
    processor = load_vlm("tiny:qwen2_5_vl").processor
    check = {"system_prompt": None, "prompt_suffix": "", **cfg.data.preflight}
    check["report_path"] = str(tmp_path / "quarantine.jsonl")
    assert len(run_preflight(train, processor, "train", **check)) == 48  # no row dropped
    assert len(run_preflight(val, processor, "val", **check)) == 16


@pytest.mark.slow
def test_example_experiment_trains(compose, tmp_path):
    from vrl.train import run

    overrides = ["trainer.max_steps=2", "trainer.val_check_interval=2", "logger=none", "save_policy=false"]
    metrics = run(compose([*_paths(tmp_path), *overrides, "trainer.enable_progress_bar=false"]))
    assert "val/accuracy" in metrics
    assert metrics["rollout/response_len_mean"] > 0


def test_the_readme_verl_command_reads_verl_parquet(compose, tmp_path):
    import io

    import datasets
    from hydra.utils import instantiate
    from PIL import Image

    # a row as verl's geo3k preprocessing writes it: chat-list prompt, nested ground truth, image structs
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), "red").save(buffer, format="PNG")
    row = {
        "data_source": "geo3k",
        "prompt": [{"role": "user", "content": "<image>Find x."}],
        "images": [{"bytes": buffer.getvalue(), "path": None}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "3"},
    }
    for split in ("train", "test"):
        datasets.Dataset.from_list([row]).to_parquet(str(tmp_path / f"{split}.parquet"))
    readme = [  # the overrides of the README's verl command
        "experiment=none",
        "data=rlvr_local",
        f"data.train.path={tmp_path / 'train.parquet'}",
        f"data.val.path={tmp_path / 'test.parquet'}",
        "data.train.question_key=prompt",
        "data.train.answer_key=reward_model.ground_truth",
        "data.train.answer_type=math",
    ]
    cfg = compose([*readme, f"output_dir={tmp_path}"])
    for node in (cfg.data.train, cfg.data.val):  # data.val.* follow data.train.*
        loaded = instantiate(node)[0]
        assert (loaded["prompt"], loaded["answer"], loaded["answer_type"]) == ("<image>Find x.", "3", "math")
        assert loaded["images"][0].size == (28, 28)
