"""Accuracy: one checker per answer type, plus the shipped reward configs."""

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from vrl.rewards import Accuracy, AnswerExtractor, BoxIoU, ThinkAnswerFormat
from vrl.rewards.accuracy import gold_problem

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def row(answer: str, answer_type: str, uid: str = "u0", **extra) -> dict:
    return {"answer": answer, "answer_type": answer_type, "uid": uid, "task": "t", "format": "open", **extra}


def scores(responses: list[str], answer: str, answer_type: str, **knobs) -> list[float]:
    return Accuracy(**knobs)(responses, [row(answer, answer_type)] * len(responses))


def test_yesno():
    responses = ["yes", "Yes, it is.", "<answer>true</answer>", "no", "I don't know", "no or yes"]
    assert scores(responses, "yes", "yesno") == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    # "I don't know" contains "no" but its first word is "I": not a "no".
    assert scores(["No.", "I don't know", "know"], "no", "yesno") == [1.0, 0.0, 0.0]


def test_choice_exact_set():
    responses = ["C, A", "(A) and (C)", "A", "A,B,C", "answer: a, c", "a red cube"]
    assert scores(responses, "A,C", "choice") == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert scores(["B", "(B)", "B.", "answer: b", "B. blue", "A,B"], "B", "choice") == [1, 1, 1, 1, 1, 0]


def test_choice_partial_credit_is_jaccard():
    # {A} vs {A,C}: 1/2. {A,B,C} vs {A,C}: 2/3. {B} vs {A,C}: 0. Exact: 1.
    responses = ["A", "A,B,C", "B", "C,A"]
    assert scores(responses, "A,C", "choice", choice_partial_credit=True) == pytest.approx([1 / 2, 2 / 3, 0, 1])


def test_number():
    responses = ["3", "3.0", "<answer>There are 3</answer>", "4", "three", "-3", "I count 1, 2, 3"]
    assert scores(responses, "3", "number") == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert scores(["1,234", "1234.0"], "1234", "number") == [1.0, 1.0]
    assert scores(["I count 1, 2, 3"], "3", "number", number_position="first") == [0.0]


def test_number_tolerance_knobs():
    # 10001 vs 10000 is 1e-4 off: wrong under the default 1e-6, right under rel_tol 1e-3.
    assert scores(["10001"], "10000", "number") == [0.0]
    assert scores(["10001"], "10000", "number", numeric_rel_tol=1e-3) == [1.0]
    # Near zero a relative tolerance vanishes; rounding to 2 decimals needs abs_tol 0.005.
    assert scores(["0.004"], "0", "number") == [0.0]
    assert scores(["0.004"], "0", "number", numeric_abs_tol=0.005) == [1.0]


def test_text():
    responses = ["Red", "the red.", "<answer> RED </answer>", "dark red", "blue", ""]
    assert scores(responses, "red", "text") == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert scores(["grey"], "gray", "text") == [0.0]
    assert scores(["grey", "Grey."], "gray", "text", synonyms={"grey": "gray"}) == [1.0, 1.0]


def test_bbox_accuracy_thresholds_iou():
    image = Image.new("RGB", (200, 100))
    sample = row("[0, 0, 2, 2]", "bbox", images=[image])
    # IoU 1, IoU 1/7, IoU 0.5 ([0,0,2,2] vs [0,0,2,1]: inter 2, union 4), unparsable.
    responses = ["[0, 0, 2, 2]", "[1, 1, 3, 3]", "(0,0),(2,1)", "the left one"]
    assert Accuracy()(responses, [sample] * 4) == [1.0, 0.0, 1.0, 0.0]
    assert Accuracy(bbox_iou_threshold=0.6)(["(0,0),(2,1)"], [sample]) == [0.0]
    # The same box written in 0..1000 coordinates of the 200x100 image: [0,0,10,20].
    assert Accuracy(bbox_frame="norm1000")(["[0, 0, 10, 20]"], [sample]) == [1.0]


def test_detection_accuracy_needs_every_box_paired_and_none_left_over():
    image = Image.new("RGB", (200, 100))
    sample = row("[[0, 0, 2, 2], [10, 10, 20, 20]]", "detection", images=[image])
    responses = [
        "[[10, 10, 20, 20], [0, 0, 2, 2]]",  # order is free: 1
        "[[0, 0, 2, 2]]",  # one box missing: 0
        "[[0, 0, 2, 1], [10, 10, 20, 20]]",  # [0,0,2,1] vs [0,0,2,2]: inter 2, union 4, IoU 0.5 >= 0.5: 1
        "[[0, 0, 2, 2], [10, 10, 20, 20], [50, 50, 60, 60]]",  # one box too many: 0
        '<answer>[{"Position": [0, 0, 2, 2], "Confidence": 0.9}, {"Position": [10, 10, 20, 20]}]</answer>',  # 1
        "No Objects",  # 0
    ]
    assert Accuracy()(responses, [sample] * 6) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert Accuracy(bbox_iou_threshold=0.6)([responses[2]], [sample]) == [0.0]  # IoU 0.5 < 0.6
    empty = row("No Objects", "detection")
    assert Accuracy()(["No Objects", "[]", "[[0, 0, 2, 2]]"], [empty] * 3) == [1.0, 1.0, 0.0]


def test_math_verify_equivalence():
    assert scores(["0.5", "\\boxed{\\frac{1}{2}}", "1/2", "\\frac{1}{3}"], "\\frac{1}{2}", "math") == [
        1,
        1,
        1,
        0,
    ]
    assert scores(["$2\\pi$", "2"], "2\\pi", "math") == [1.0, 0.0]


def test_math_falls_back_to_number_then_text():
    # Words make math-verify give up on both sides; the text check then decides.
    assert scores(["red", "blue"], "red", "math") == [1.0, 0.0]
    # math-verify 0.9 reads neither a Unicode minus nor "seven (7)" (it returns []), so the numeric
    # fallback decides.
    assert scores(["\u22124", "\u22125"], "-4", "math") == [1.0, 0.0]
    assert scores(["seven (7)", "six (6)"], "7", "math") == [1.0, 0.0]


def test_math_in_a_worker_thread():
    # math-verify's signal-based timeout raises off the main thread; Accuracy bounds it another way there.
    out: list = []
    worker = threading.Thread(target=lambda: out.append(scores(["0.5"], "\\frac{1}{2}", "math")))
    worker.start()
    worker.join()
    assert out == [[1.0]]


def test_math_verify_is_imported_lazily():
    code = "import sys, vrl.rewards; assert 'math_verify' not in sys.modules, 'imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CONF_DIR.parent)


def test_unknown_answer_type_names_type_and_uid():
    with pytest.raises(ValueError, match=r"'regex'.*uid='row-42'"):
        Accuracy()(["x"], [row("x", "regex", uid="row-42")])


def test_unparsable_gold_names_uid():
    with pytest.raises(ValueError, match="uid='bad-1'"):
        Accuracy()(["yes"], [row("maybe", "yesno", uid="bad-1")])


#: (answer, answer_type, readable by Accuracy): the preflight's check must say exactly what the reward does.
GOLDS = [
    ("yes", "yesno", True),
    ("True.", "yesno", True),
    ("maybe", "yesno", False),
    ("A, C", "choice", True),
    ("(B) red", "choice", True),
    ("the red one", "choice", False),
    ("1,234", "number", True),
    ("seven", "number", False),
    ("nan", "number", False),  # str(float("nan")): no digits, so no number
    ("Dark grey", "text", True),
    ("?!", "text", False),
    ("[1, 2, 3, 4]", "bbox", True),
    ("(1,2),(3,4)", "bbox", True),
    ("[1, 2, 3]", "bbox", False),
    ("the left one", "bbox", False),
    ("\\frac{1}{2}", "math", True),
    ("red", "math", True),  # the text fallback reads a word
    ("\\infty", "math", True),
    ("\u221e", "math", False),  # the infinity sign: math-verify 0.9 does not read it, and it is no word or number
    ("?", "math", False),
    ("[[1, 2, 3, 4], [5, 6, 7, 8]]", "detection", True),
    ("No Objects", "detection", True),
    ('[{"Position": [1, 2, 3, 4], "Confidence": 1}]', "detection", True),
    ("[[1, 2, 3]]", "detection", False),
    ("three boxes", "detection", False),
]


@pytest.mark.parametrize(("answer", "answer_type", "readable"), GOLDS)
def test_gold_problem_agrees_with_what_accuracy_can_score(answer, answer_type, readable):
    image = Image.new("RGB", (10, 10))
    sample = row(answer, answer_type, images=[image])
    try:
        Accuracy()(["<answer>x</answer>", "<answer>1</answer>"], [sample, sample])
        scored = True
    except ValueError:  # the reward's own verdict on a ground truth it cannot read
        scored = False
    assert (gold_problem(answer, answer_type) is None) == readable
    assert scored == readable


def test_extractor_fallback_none_makes_tags_mandatory():
    acc = Accuracy(extract=AnswerExtractor(fallback="none"))
    assert acc(["red", "<answer>red</answer>"], [row("red", "text")] * 2) == [0.0, 1.0]
    # A plain mapping (a Hydra node without _target_) configures the extractor too.
    assert Accuracy(extract={"fallback": "none"}).extract.fallback == "none"


def test_mixed_batch_returns_one_float_per_response():
    samples = [row("yes", "yesno"), row("B", "choice"), row("2", "number"), row("red", "text")]
    responses = ["yes", "B", "2", "blue"]
    out = Accuracy()(responses, samples)
    assert out == [1.0, 1.0, 1.0, 0.0]
    assert all(isinstance(x, float) for x in out)
    with pytest.raises(ValueError, match="responses"):
        Accuracy()(responses, samples[:2])


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("default", {"accuracy": Accuracy}),
        ("think_format", {"accuracy": Accuracy, "format": ThinkAnswerFormat}),
        ("grounding", {"accuracy": Accuracy, "iou": BoxIoU}),
    ],
)
def test_reward_configs_instantiate(config, expected):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name=f"reward/{config}")
    terms = {key: instantiate(node) for key, node in cfg.reward.items()}
    assert {key: type(term) for key, term in terms.items()} == expected
    assert isinstance(terms["accuracy"].extract, AnswerExtractor)
    assert terms["accuracy"].weight == 1.0
