"""Transit maps: route search and gold answers on a hand-built map, rendering, builder determinism, the type knob."""

import json
import random

import pytest

from vrl.data.transit import ASK, FEATURES, build_transit_maps, resolve_question_types
from vrl.data.transit_render import INK, LINE_COLORS, TransitMap, node_pixels, render_map, sample_map
from vrl.data.transit_route import Leg, format_route, plan_route
from vrl.rewards.rewardmap import RewardMapAccuracy

# A hand-built city on a 7 x 7 grid (columns 0-6 across, rows 0-3 down; lines drawn between listed stations):
#
#      A - P - Q - R - S - T          Teal:  A P Q R S T H   (row 0, then down to H)
#      |                   H          Red:   A B C D         (column 1)
#      B                 /            Blue:  E C F           (row 2)
#  E - C ----- F ----- G              Green: F G H           (row 2, then up to H)
#      D
#
# Transfer stations (on two lines): A (Red, Teal), C (Red, Blue), F (Blue, Green), H (Green, Teal).
LINES = {
    "Red Line": ["A", "B", "C", "D"],
    "Blue Line": ["E", "C", "F"],
    "Green Line": ["F", "G", "H"],
    "Teal Line": ["A", "P", "Q", "R", "S", "T", "H"],
}
NODES = {
    "A": (1, 0), "P": (2, 0), "Q": (3, 0), "R": (4, 0), "S": (5, 0), "T": (6, 0), "H": (6, 1),
    "B": (1, 1), "C": (1, 2), "D": (1, 3), "E": (0, 2), "F": (3, 2), "G": (5, 2),
}  # fmt: skip
CITY = TransitMap(LINES, {n: n.split()[0] for n in LINES}, NODES, 7, "hard")


def test_fewest_transfers_beats_fewer_stops():
    # A -> H: Teal direct = 0 transfers, 6 stops; Red A-C, Blue C-F, Green F-H = 2 transfers, 2+1+2 = 5 stops.
    assert plan_route(LINES, "A", "H") == [Leg("Teal Line", "A", "H", 6)]


def test_fewest_stops_among_equal_transfers():
    # D -> G, 2 transfers either way: Red D-C, Blue C-F, Green F-G = 1+1+1 = 3 stops;
    # Red D-A, Teal A-H, Green H-G = 3+6+1 = 10 stops. The short one wins.
    assert plan_route(LINES, "D", "G") == [
        Leg("Red Line", "D", "C", 1),
        Leg("Blue Line", "C", "F", 1),
        Leg("Green Line", "F", "G", 1),
    ]
    # E -> B: Blue E-C (1 stop), then Red C-B (1 stop): one transfer.
    assert plan_route(LINES, "E", "B") == [Leg("Blue Line", "E", "C", 1), Leg("Red Line", "C", "B", 1)]


def test_equal_cost_tie_goes_to_the_line_listed_first():
    # Two lines A-B-C and A-D-C: both 0 transfers, 2 stops; the earlier line in the map wins.
    assert plan_route({"Red Line": ["A", "B", "C"], "Blue Line": ["A", "D", "C"]}, "A", "C")[0].line == "Red Line"
    assert plan_route({"Blue Line": ["A", "D", "C"], "Red Line": ["A", "B", "C"]}, "A", "C")[0].line == "Blue Line"


def test_route_search_errors():
    with pytest.raises(ValueError, match="no route"):
        plan_route({"Red Line": ["A", "B"], "Blue Line": ["C", "D"]}, "A", "D")
    with pytest.raises(ValueError, match="on no line"):
        plan_route(LINES, "A", "Z")
    with pytest.raises(ValueError, match="itself"):
        plan_route(LINES, "A", "A")


def ask_until(kind: str, found) -> object:
    """The first question of ``kind`` (seeds 0, 1, ...) about what ``found`` looks for."""
    for seed in range(2000):
        q = ASK[kind](CITY, random.Random(seed))
        if found(q):
            return q
    raise AssertionError(f"no {kind} question matched in 2000 seeds")


def test_true_false_gold_answers():
    assert ask_until("TorF1", lambda q: {q.station_1, q.station_2} == {"B", "D"}).answer == "yes"  # both on Red
    assert ask_until("TorF1", lambda q: {q.station_1, q.station_2} == {"B", "G"}).answer == "no"  # Red vs Green
    assert ask_until("TorF1", lambda q: {q.station_1, q.station_2} == {"A", "H"}).answer == "yes"  # both on Teal
    on = ask_until("TorF2", lambda q: q.station_1 == "G" and q.details["line"] == "Green Line")
    off = ask_until("TorF2", lambda q: q.station_1 == "G" and q.details["line"] == "Red Line")
    assert (on.answer, off.answer, on.format, on.answer_type) == ("yes", "no", "yesno", "yesno")
    assert "Is G on the Green Line?" in on.question and "\\boxed{}" in on.question


def test_counting_gold_answers():
    # Teal A..H: intermediate stops P, Q, R, S, T = 5; the answer is the letter of the option 5.
    q = ask_until("Counting1", lambda q: q.details["line"] == "Teal Line" and {q.station_1, q.station_2} == {"A", "H"})
    assert q.details["value"] == 5 and len(set(q.details["options"])) == 4
    assert q.answer == "ABCD"[q.details["options"].index(5)] and q.answer_type == "choice"
    assert f"{q.answer}. 5" in q.question
    # Red B..C are adjacent: 0 intermediate stops.
    assert ask_until("Counting1", lambda q: {q.station_1, q.station_2} == {"B", "C"}).details["value"] == 0
    assert ask_until("Counting2", lambda q: q.station_1 == "C").answer == "2"  # Red and Blue
    assert ask_until("Counting2", lambda q: q.station_1 == "G").answer == "1"  # Green only
    assert ASK["Counting3"](CITY, random.Random(0)).answer == "4"


def test_planning_gold_answer_is_the_searched_route_in_the_published_format():
    q = ask_until("planning", lambda q: (q.station_1, q.station_2) == ("D", "G"))
    assert q.transfer_count == 2  # three legs (test_fewest_stops_among_equal_transfers)
    assert q.answer == (
        "Route Name: Red Line\nDeparture Stop: D\nArrival Stop: C\n--\n"
        "Route Name: Blue Line\nDeparture Stop: C\nArrival Stop: F\n--\n"
        "Route Name: Green Line\nDeparture Stop: F\nArrival Stop: G"
    )
    assert q.answer == format_route(plan_route(LINES, "D", "G"))
    assert "Route Name:" in q.question and "--" in q.question


def test_rendering_shows_lines_stations_and_transfers():
    img = render_map(CITY, 224)
    assert (img.mode, img.size) == ("RGB", (224, 224))
    pixels = img.load()
    for name in LINES:  # every line is drawn in its colour
        color = LINE_COLORS[CITY.colors[name]]
        assert sum(1 for x in range(224) for y in range(224) if pixels[x, y] == color) > 50, name
    r = max(2, 224 // 64)
    for station, (x, y) in node_pixels(CITY, 224).items():
        assert pixels[x, y] == (255, 255, 255), station  # dots are white
        if station in {"A", "C", "F", "H"}:
            assert pixels[x - r - 1, y] == INK, station  # transfers get a black ring


@pytest.mark.parametrize("difficulty", ["tiny", "easy", "middle", "hard"])
def test_sampled_maps_are_connected_and_grow_with_difficulty(difficulty):
    sizes = []
    for seed in range(20):
        tmap = sample_map(random.Random(seed), difficulty)
        stations = tmap.stations()
        for goal in stations[1:]:  # connected: every station is reachable from the first
            plan_route(tmap.lines, stations[0], goal)
        sizes.append((len(tmap.lines), len(stations)))
    lines = sorted(n for n, _ in sizes)
    assert {"tiny": (2, 3), "easy": (2, 3), "middle": (3, 4), "hard": (4, 5)}[difficulty] == (lines[0], lines[-1])
    if difficulty == "tiny":  # 2-3 lines of 2-3 stations on a 3 x 3 grid: at most 9 stations, every line <= 3
        assert max(n for _, n in sizes) <= 9 and all(len(s) <= 3 for s in tmap.lines.values())


def test_tiny_station_names_come_from_the_pool_and_are_single_tokens_of_a_transit_tokenizer():
    from vrl.data.tasks import corpus
    from vrl.data.transit import single_token_words
    from vrl.data.transit_render import TINY_STATIONS
    from vrl.models.tiny import build_tiny_tokenizer

    names = set()
    for seed in range(30):
        tmap = sample_map(random.Random(seed), "tiny")
        assert set(tmap.stations()) <= set(TINY_STATIONS) and len(set(tmap.stations())) == len(tmap.stations())
        names |= set(tmap.stations())
    assert len(names) > 12  # drawn across the pool of 16, not a fixed few
    assert not set(sample_map(random.Random(0), "easy").stations()) <= set(TINY_STATIONS)  # other levels: syllables
    tok = build_tiny_tokenizer(corpus(), single_token_words())
    for name in TINY_STATIONS:  # the endpoint is one token after "Stop:" and after "from" in the question
        assert len(tok(" " + name)["input_ids"]) == 1 == len(tok(name)["input_ids"]), name
    # "Route Name: Red Line\nDeparture Stop: Bilo\nArrival Stop: Kamor": 3 lines of 1-2 word tokens + ":" + "\n"
    assert len(tok("Route Name: Red Line\nDeparture Stop: Bilo\nArrival Stop: Kamor")["input_ids"]) <= 16


@pytest.fixture(scope="module")
def mixed():
    return build_transit_maps(num_samples=48, seed=3)


def test_rows_carry_what_the_reward_needs_and_their_gold_answers_score(mixed):
    assert set(mixed.column_names) == set(FEATURES)
    accuracy = RewardMapAccuracy()
    for row in mixed:
        assert row["prompt"].startswith("<image>\n") and row["prompt"].count("<image>") == 1 == len(row["images"])
        assert row["images"][0].size == (224, 224)
        lines = json.loads(row["metro"])
        assert row["city_line_count"] == len(lines)
        meta = json.loads(row["meta"])
        assert TransitMap.from_dict(meta["map"]).lines == lines
        if row["type"] == "planning":
            assert row["question_transfer_count"] == len(meta["route"]) - 1
            response = row["answer"]
        else:
            response = f"\\boxed{{{row['answer']}}}"
        assert accuracy([response], [row]) == [1.0], row["uid"]


def test_tiny_maps_config_rows_score_their_gold_answers(compose):
    from hydra.utils import instantiate

    cfg = compose(["data=transit_tiny", "data.train.num_samples=24"])
    rows = instantiate(cfg.data.train)
    accuracy = RewardMapAccuracy()
    for row in rows:
        assert row["difficulty_city"] == "tiny" and row["images"][0].size == (112, 112)
        response = row["answer"] if row["type"] == "planning" else f"\\boxed{{{row['answer']}}}"
        assert accuracy([response], [row]) == [1.0], row["uid"]
        if row["type"] == "planning":  # at most 3 lines: a route has at most 3 legs
            assert row["question_transfer_count"] <= 2


def test_same_seed_same_rows_and_image_bytes_other_split_differs():
    a = build_transit_maps(num_samples=6, seed=1)
    b = build_transit_maps(num_samples=6, seed=1)
    val = build_transit_maps(num_samples=6, seed=1, split="val")
    stream = build_transit_maps(num_samples=6, seed=1, mode="stream")
    assert a.data.table.equals(b.data.table)  # every column, PNG bytes included
    assert a["prompt"] != val["prompt"] and a["metro"] != val["metro"]
    assert [stream[i]["prompt"] for i in range(6)] == a["prompt"]
    assert stream[2]["images"][0].tobytes() == a[2]["images"][0].tobytes()


def test_question_types_knob_selects_stages():
    assert resolve_question_types(["tf"]) == ("TorF1", "TorF2")
    assert resolve_question_types(["counting", "Counting1", "planning"]) == (
        "Counting1",
        "Counting2",
        "Counting3",
        "planning",
    )
    assert set(build_transit_maps(num_samples=12, question_types=["tf"])["type"]) <= {"TorF1", "TorF2"}
    planning = build_transit_maps(num_samples=6, question_types=["planning"], difficulties=["easy"])
    assert set(planning["type"]) == {"planning"} and set(planning["difficulty_city"]) == {"easy"}
    with pytest.raises(ValueError, match="unknown question type"):
        build_transit_maps(num_samples=1, question_types=["Counting4"])


def test_num_maps_reuses_a_pool_of_cities():
    ds = build_transit_maps(num_samples=20, seed=0, num_maps=2)
    assert len(set(ds["metro"])) <= 2
