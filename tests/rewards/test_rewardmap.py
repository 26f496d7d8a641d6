"""RewardMap's reward on hand-written responses: correctness, the detail reward D, W, the off-by-one knob,
the after-normalisation hook, the start-up warning, and two training steps of the preset."""

import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from vrl.hooks import StepContext
from vrl.methods.advantage import group_zscore
from vrl.methods.rewardmap import DifficultyWeight
from vrl.rewards.rewardmap import (
    RewardMap,
    RewardMapAccuracy,
    clean_station,
    parse_route,
    short_answer,
)
from vrl.validate import validate_config

# The hand-built city of tests/data/test_transit.py. Transfers: A (Red, Teal), C (Red, Blue), F (Blue, Green),
# H (Green, Teal).
LINES = {
    "Red Line": ["A", "B", "C", "D"],
    "Blue Line": ["E", "C", "F"],
    "Green Line": ["F", "G", "H"],
    "Teal Line": ["A", "P", "Q", "R", "S", "T", "H"],
}


def planning(s1: str, s2: str, transfers: int, difficulty: str = "easy") -> dict:
    return {
        "type": "planning",
        "answer": "",
        "difficulty_city": difficulty,
        "question_transfer_count": transfers,
        "station_1": s1,
        "station_2": s2,
        "metro": json.dumps(LINES),
        "uid": f"{s1}-{s2}",
    }


def short(kind: str, answer: str, difficulty: str = "easy") -> dict:
    return {**planning("", "", 0, difficulty), "type": kind, "answer": answer}


def route(*sections: tuple[str, str, str]) -> str:
    return "\n--\n".join(f"Route Name: {r}\nDeparture Stop: {d}\nArrival Stop: {a}" for r, d, a in sections)


D_TO_G = route(("Red Line", "D", "C"), ("Blue Line", "C", "F"), ("Green Line", "F", "G"))
E_TO_B = route(("Blue Line", "E", "C"), ("Red Line", "C", "B"))


def test_correct_two_transfer_route():
    # D -> G needs 2 transfers; hard map: W = 1.5 + 0.5 (planning with a transfer) = 2.0.
    # D (published) = +2 endpoints; section 1: +3 line, +1 transfer C; section 2: +3, +1 transfer F;
    # section 3: -5 (3 > 2 transfers), +3 line  ->  2 + 4 + 4 - 2 = 8.  R = 2.0 * (10 + 0.5 * 8) = 28.
    rm = RewardMap()
    assert rm.parts(D_TO_G, planning("D", "G", 2, "hard")) == (True, 8.0, 2.0)
    assert rm([D_TO_G], [planning("D", "G", 2, "hard")]) == [28.0]
    # Corrected: no -5 on section 3 -> D = 13, capped at 10.  R = 2.0 * (10 + 5) = 30.
    assert RewardMap(section_penalty="corrected")([D_TO_G], [planning("D", "G", 2, "hard")]) == [30.0]
    # Not the fewest-stop route but valid: Red D-A, Teal A-H, Green H-G is also correct.
    detour = route(("Red Line", "D", "A"), ("Teal Line", "A", "H"), ("Green Line", "H", "G"))
    assert rm.parts(detour, planning("D", "G", 2, "hard"))[0] is True


def test_off_by_one_penalises_correct_routes_and_the_knob_fixes_it():
    sample = planning("E", "B", 1, "middle")  # W = 1.2 + 0.5 = 1.7
    wrong = route(("Blue Line", "E", "B"))  # B is not on Blue: wrong, but endpoints and line are right
    # published: correct D = 2 + (3 + 1) + (3 - 5) = 4; wrong D = 2 + 3 = 5 (no -5: 1 section <= 1 transfer).
    rm = RewardMap()
    assert rm.parts(E_TO_B, sample) == (True, 4.0, pytest.approx(1.7))
    assert rm.parts(wrong, sample) == (False, 5.0, pytest.approx(1.7))
    assert rm([E_TO_B, wrong], [sample] * 2) == pytest.approx([1.7 * (10 + 2), 1.7 * 2.5])  # 20.4, 4.25
    # corrected: correct D = 2 + 4 + 3 = 9 (> the wrong answer's 5, as intended).
    fixed = RewardMap(section_penalty="corrected")
    assert fixed.parts(E_TO_B, sample)[1] == 9.0 and fixed.parts(wrong, sample)[1] == 5.0
    # A direct route: published D = 2 - 5 + 4 (the line holds both stations) = 1; corrected 6.  W(easy) = 1.
    direct = route(("Red Line", "B", "D"))
    assert rm([direct], [planning("B", "D", 0)]) == [10.5]
    assert fixed([direct], [planning("B", "D", 0)]) == [13.0]


def test_detail_components_of_wrong_routes():
    sample = planning("E", "B", 1, "middle")
    # Broken chain: Blue ends at C, Red starts at D. D = 2 + (3 + 0) + (-5 + 3) = 3; not correct.
    broken = route(("Blue Line", "E", "C"), ("Red Line", "D", "B"))
    assert RewardMap().parts(broken, sample)[:2] == (False, 3.0)
    # Unknown line: D = 2 - 5 (1 section, 0 transfers) + 0 = -3; R = 1.0 * 0.5 * -3 = -1.5.
    assert RewardMap()([route(("Purple Line", "B", "D"))], [planning("B", "D", 0)]) == [-1.5]
    # Wrong endpoints: no detail at all. No sections (free text): 0.
    assert RewardMap().parts(route(("Red Line", "A", "D")), planning("B", "D", 0))[:2] == (False, 0.0)
    assert RewardMap().parts("take the red line", planning("B", "D", 0))[:2] == (False, 0.0)
    # Trailing text after the last Arrival Stop is part of the station (published parser): not B any more.
    assert RewardMap().parts(E_TO_B + "\nThat is the route.", sample)[0] is False


def test_parser_normalises_names_like_the_published_code():
    assert clean_station("Jurong East Station (Transfer Station)") == "jurongeast"
    assert clean_station("Marina-Bay  Metro") == "marinabay"
    (sec,) = parse_route("Route Name:Red Line\nDeparture Stop: B Station\nArrival Stop: d\n")
    assert (sec.route, sec.departure, sec.arrival) == ("Red Line", "b", "d")
    assert parse_route("Route Name: X\nDeparture Stop: A\n--\nno markers here") == []  # section lacks Arrival


@pytest.mark.parametrize(
    ("kind", "answer", "responses", "expected"),
    [
        ("TorF1", "yes", ["\\boxed{Yes}", "The answer is yes. Because...", "\\boxed{\\text{yes}}", "no", "yes, both"],
         [1, 1, 1, 0, 0]),
        ("TorF2", "1", ["\\boxed{yes}", "\\boxed{no}"], [1, 0]),  # the published integer form
        ("Counting1", "C", ["\\boxed{C}", "c.", "\\boxed{(C)}", "\\boxed{B}", "C) 3"], [1, 1, 0, 0, 0]),
        ("Counting1", "2", ["\\boxed{C}"], [1]),  # option index 2 = C
        ("Counting2", "2", ["\\boxed{2}", "so \\boxed{1} no wait \\boxed{2}", "\\boxed{2.0}", "There are 2 lines"],
         [1, 1, 0, 0]),
        ("Counting3", "4", ["the final answer is 4", "\\boxed{ 4 }"], [1, 1]),
    ],
)  # fmt: skip
def test_true_false_and_counting_accuracy(kind, answer, responses, expected):
    assert RewardMapAccuracy()(responses, [short(kind, answer)] * len(responses)) == expected
    # R = W * 10 * correct, W by map difficulty alone (no transfer bonus outside planning): hard 1.5.
    assert RewardMap()(responses, [short(kind, answer, "hard")] * len(responses)) == [15.0 * e for e in expected]


def test_short_answer_extraction():
    assert short_answer("I think \\boxed{B}.") == "b"
    assert short_answer("The correct answer is Yes. Next") == "yes"
    assert short_answer("x = 3") == "3"


def test_difficulty_weight_by_level_and_transfers():
    rm = RewardMap(weight_after_norm=True)
    weights = [rm.parts(D_TO_G, planning("D", "G", t, d))[2] for d in ("easy", "middle", "hard") for t in (0, 2)]
    assert weights == pytest.approx([1.0, 1.5, 1.2, 1.7, 1.5, 2.0])
    # weight_after_norm leaves W out: 10 + 0.5 * 8 = 14 whatever the difficulty.
    assert rm([D_TO_G] * 2, [planning("D", "G", 2, "easy"), planning("D", "G", 2, "hard")]) == [14.0, 14.0]
    with pytest.raises(ValueError, match="difficulty_city 'extreme'"):
        rm(["x"], [short("TorF1", "yes", "extreme")])
    with pytest.raises(ValueError, match="question type 'Counting9'"):
        rm(["x"], [short("Counting9", "1")])


def test_w_cancels_under_zscore_and_the_hook_applies_it_after():
    rewards, groups = torch.tensor([0.0, 10.0, 10.5, 0.0]), torch.tensor([0, 0, 0, 0])
    # The same W = 2 for the whole group: z-score of W*r equals z-score of r (up to eps).
    torch.testing.assert_close(group_zscore(2.0 * rewards, groups), group_zscore(rewards, groups), atol=1e-5, rtol=0)
    samples = [short("TorF1", "yes", "easy"), short("TorF1", "yes", "hard"), planning("D", "G", 2, "middle")]
    rollout = SimpleNamespace(advantages=torch.tensor([1.0, -2.0, 0.5]), samples=samples)
    # W = 1.0, 1.5, 1.2 + 0.5 = 1.7  ->  [1.0, -3.0, 0.85]
    torch.testing.assert_close(
        rollout.advantages * DifficultyWeight().advantage_factor(rollout, StepContext()),
        torch.tensor([1.0, -3.0, 0.85]),
    )


def warnings_of(compose, caplog, overrides, tmp_path) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vrl"):
        validate_config(compose([*overrides, f"output_dir={tmp_path}"]))
    return [r.getMessage() for r in caplog.records if "difficulty weight W" in r.getMessage()]


def test_validate_warns_where_w_cancels(compose, caplog, tmp_path):
    assert warnings_of(compose, caplog, ["+method=rewardmap"], tmp_path) == []
    published = ["+method=rewardmap", "reward.rewardmap.weight_after_norm=false", "hooks.difficulty_weight=null"]
    (message,) = warnings_of(compose, caplog, published, tmp_path)
    assert "advantage.GroupZScore divides it out" in message and "weight_after_norm=true" in message
    assert warnings_of(compose, caplog, [*published, "advantage=group_mean"], tmp_path) == []  # no std: W matters
    (twice,) = warnings_of(compose, caplog, ["+method=rewardmap", "reward.rewardmap.weight_after_norm=false"], tmp_path)
    assert "applied twice" in twice
    (lost,) = warnings_of(compose, caplog, ["+method=rewardmap", "hooks.difficulty_weight=null"], tmp_path)
    assert "no DifficultyWeight hook" in lost


def test_preset_trains_two_steps(compose, tiny_overrides):
    import lightning as L

    from vrl.build import build_module, build_trainer

    cfg = compose([*tiny_overrides, "+method=rewardmap"])
    assert cfg.data.train._target_ == "vrl.data.transit.build_transit_maps" and cfg.kl.coef == 0.01
    L.seed_everything(cfg.seed, verbose=False)
    module, trainer = build_module(cfg), build_trainer(cfg)
    assert "difficulty_weight" in module.hooks.names
    trainer.fit(module)
    metrics = trainer.callback_metrics
    assert trainer.global_step == 2
    assert math.isfinite(float(metrics["train/grad_norm"]))
    assert {"reward/rewardmap_mean", "reward/accuracy_mean", "val/accuracy"} <= set(metrics)
