"""load_reasonmap: published ReasonMap(-Plus) rows + city JSONs -> vrl rows the RewardMap reward scores.

Every file is written into tmp_path by the test itself (no binary fixtures in the repository).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from vrl.data.reasonmap import ReasonMapError, load_reasonmap
from vrl.rewards.rewardmap import RewardMap, RewardMapAccuracy

# A city JSON in the published form: station markers appended to transfer / branch stations.
CITY = {
    "Line 1": ["Alpha Station (Transfer Station)", "Beta Station", "Gamma Station (Transfer Station)"],
    "Line 2": ["Delta Station", "Gamma Station (Transfer Station)", "Epsilon Station (Branch-starting Station)"],
}


def png_bytes(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(buf, format="PNG")
    return buf.getvalue()


def base_row(**fields) -> dict:
    row = {
        "question": "Q?",
        "answer": 1,
        "type": "TorF1",
        "difficulty_city": "middle",
        "question_transfer_count": 0,
        "city_line_count": 2,
        "city_transfer_count": 2,
        "country": "testland",
        "city": "testcity",
        "station_1": "Alpha Station",
        "station_2": "Beta Station",
        "json": "stations/testland/testcity.json",
        "figure": "maps/testland/testcity.png",
    }
    return {**row, **fields}


@pytest.fixture
def city_dir(tmp_path: Path) -> Path:
    (tmp_path / "stations" / "testland").mkdir(parents=True)
    (tmp_path / "stations" / "testland" / "testcity.json").write_text(json.dumps(CITY), encoding="utf-8")
    (tmp_path / "maps" / "testland").mkdir(parents=True)
    (tmp_path / "maps" / "testland" / "testcity.png").write_bytes(png_bytes())
    return tmp_path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_published_rows_become_scoreable_vrl_rows(city_dir):
    rows = [
        base_row(),  # TorF1, answer 1 -> yes
        base_row(type="TorF2", answer=0),  # -> no
        base_row(type="Counting1", answer=2),  # option index 2 -> C
        base_row(type="Counting2", answer=3),
        base_row(type="Counting3", answer=2, difficulty_city="hard"),
        base_row(type="planning", answer=-1, station_1="Alpha", station_2="Delta", question_transfer_count=1),
    ]
    ds = load_reasonmap(str(write_jsonl(city_dir / "plus.jsonl", rows)))
    assert ds["answer"] == ["yes", "no", "C", "3", "2", "-1"]
    assert ds["answer_type"] == ["yesno", "yesno", "choice", "number", "number", "text"]
    assert ds["format"] == ["yesno", "yesno", "mc", "open", "open", "open"]
    assert ds["prompt"][0] == "<image>\nQ?"
    assert ds["uid"][0] == "plus.jsonl:0" and ds["country"][0] == "testland"  # unmapped columns ride along
    assert ds[0]["images"][0].size == (28, 28)
    metro = json.loads(ds["metro"][0])  # markers removed, as the published reward does before matching
    assert metro["Line 1"] == ["Alpha Station", "Beta Station", "Gamma Station"]
    assert metro["Line 2"][2] == "Epsilon Station"
    # The reward reads these rows as they are: gold answers score 1, and a route via Gamma is correct.
    answers = ["\\boxed{yes}", "\\boxed{no}", "\\boxed{C}", "\\boxed{3}", "\\boxed{2}"]
    route = (
        "Route Name: Line 1\nDeparture Stop: Alpha Station\nArrival Stop: Gamma\n--\n"
        "Route Name: Line 2\nDeparture Stop: Gamma Station\nArrival Stop: Delta Station"
    )
    assert RewardMapAccuracy()([*answers, route], list(ds)) == [1.0] * 6
    # W: middle 1.2 (TorF1), hard 1.5 (Counting3), middle 1.2 + 0.5 (planning, one transfer).
    # Planning D (published) = 2 + (3 + 1) + (3 - 5) = 4  ->  1.7 * (10 + 2) = 20.4.
    scores = RewardMap()([answers[0], answers[4], route], [ds[0], ds[4], ds[5]])
    assert scores == pytest.approx([12.0, 15.0, 20.4])


def test_parquet_save_to_disk_and_base64_figures(city_dir):
    encoded = base64.b64encode(png_bytes((0, 0, 255))).decode()  # the benchmark's raw base64 figures
    datasets.Dataset.from_list([base_row(figure=encoded)]).to_parquet(str(city_dir / "train.parquet"))
    ds = load_reasonmap(str(city_dir / "train.parquet"))
    assert ds[0]["images"][0].getpixel((0, 0)) == (0, 0, 255)
    datasets.DatasetDict({"train": datasets.Dataset.from_list([base_row()])}).save_to_disk(str(city_dir / "saved"))
    saved = load_reasonmap(str(city_dir / "saved"), data_root=str(city_dir))
    assert saved["answer"] == ["yes"] and saved[0]["images"][0].size == (28, 28)


def test_benchmark_rows_with_default_type_and_question_key(city_dir):
    row = base_row(question_short="From Alpha to Delta?", question_transfer_count=1)
    del row["type"], row["question"]
    ds = load_reasonmap(str(write_jsonl(city_dir / "bench.jsonl", [row])), question_key="question_short",
                        default_type="planning")  # fmt: skip
    assert ds["type"] == ["planning"] and ds["prompt"] == ["<image>\nFrom Alpha to Delta?"]


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"type": "Counting4"}, "type", "is not one of"),
        ({"difficulty_city": "extreme"}, "difficulty_city", "is not easy, middle or hard"),
        ({"difficulty_city": None}, "difficulty_city", "missing"),
        ({"type": "Counting1", "answer": 7}, "answer", "not a valid Counting1 answer"),
        ({"type": "planning", "station_2": None}, "station_2", "missing"),
        ({"figure": "../outside.png"}, "figure", "outside the data root"),
    ],
)
def test_bad_rows_name_file_row_and_field(city_dir, fields, field, problem):
    file = write_jsonl(city_dir / "bad.jsonl", [base_row(), base_row(**fields)])
    with pytest.raises(ReasonMapError, match=rf"bad\.jsonl: row 1: field '{field}': .*{problem}"):
        load_reasonmap(str(file))


def test_missing_or_malformed_city_json(city_dir):
    file = write_jsonl(city_dir / "rows.jsonl", [base_row(json="stations/nowhere.json")])
    with pytest.raises(FileNotFoundError, match=r"rows\.jsonl: row 0: field 'json': .*nowhere\.json"):
        load_reasonmap(str(file))
    (city_dir / "stations" / "list.json").write_text("[1, 2]")
    file = write_jsonl(city_dir / "rows.jsonl", [base_row(json="stations/list.json")])
    with pytest.raises(ReasonMapError, match="not an object of line name -> station list"):
        load_reasonmap(str(file))
