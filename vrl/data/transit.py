"""Procedural transit maps and ReasonMap-Plus style questions about them: RewardMap's data, offline.

RewardMap (Feng et al., arXiv 2510.02240) trains on high-resolution metro maps of 30 real cities; those need
a download and a 7B model. This module draws small maps instead, so the same question types, reward and
curriculum run on CPU and in tests. A map is a set of **lines**, each an ordered list of stations; a station
on two or more lines is a **transfer** station. How maps are laid out and drawn is in
:mod:`vrl.data.transit_render`; this module asks questions about them and builds the dataset.

Difficulty follows ReasonMap's easy / middle / hard city labels: harder maps have a larger grid, more lines,
longer lines and hence more transfers (:data:`vrl.data.transit_render.LEVELS`).

Question types (the ``type`` column, named as in the published data):

=========  ===========================================================  ========  ===============
type       question                                                     format    answer
=========  ===========================================================  ========  ===============
TorF1      are stations A and B on the same line?                       yesno     ``yes`` / ``no``
TorF2      is station X on line L?                                      yesno     ``yes`` / ``no``
Counting1  intermediate stops between A and B on line L (4 options)     mc        letter A-D
Counting2  number of lines through station X                            open      integer
Counting3  number of lines on the map                                   open      integer
planning   a route from A to B, in the published section format         open      a gold route
=========  ===========================================================  ========  ===============

yes/no questions are true with probability 1/2. A planning question asks, with probability 1/2 each, for two
stations on one line or two stations that share no line (at least one transfer). The gold route is
:func:`plan_route`'s; the reward accepts any valid route, as the published one does.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import datasets

from vrl.data.synthetic import FEATURES as SCHEMA
from vrl.data.synthetic import PROGRESS_MIN_ROWS, SyntheticStream
from vrl.data.tasks import row_rng
from vrl.data.tasks import single_token_words as task_words
from vrl.data.transit_render import (
    DIFFICULTIES,
    LEVEL_NAMES,
    LINE_COLORS,
    TINY_STATIONS,
    TransitMap,
    render_map,
    sample_map,
)
from vrl.data.transit_route import format_route, plan_route

#: Question types, as in ReasonMap-Plus's ``type`` (plus ReasonMap's ``planning``).
QUESTION_TYPES = ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3", "planning")
#: Curriculum stage aliases a ``question_types`` list may use (RewardMap's order: tf -> counting -> planning).
STAGES = {"tf": ("TorF1", "TorF2"), "counting": ("Counting1", "Counting2", "Counting3"), "planning": ("planning",)}

YESNO = "Answer yes or no, and put the answer in \\boxed{}."
LETTER = "Answer with the option's letter (A, B, C or D) in \\boxed{}."
NUMBER = "Put the number in \\boxed{}."
ROUTE_FORMAT = (
    "Answer with one section per line ridden, in travel order, separated by a line with --. Each section is:\n"
    "Route Name: <line name>\nDeparture Stop: <station>\nArrival Stop: <station>"
)


@dataclass
class TransitQuestion:
    """A posed question and what the reward needs to check it.

    Attributes:
        type: one of :data:`QUESTION_TYPES`.
        question: question text with its answer instruction (no image placeholder).
        answer: ground truth in the form ``answer_type`` expects.
        answer_type: ``yesno``, ``choice``, ``number`` or ``text`` (planning: the gold route).
        format: ``yesno``, ``mc`` or ``open``.
        station_1: first station asked about ("" when none), as in the published rows.
        station_2: second station ("" when none).
        transfer_count: transfers of the gold route (planning), else 0.
        details: JSON-able extras for ``meta`` (the line asked about, options, the gold route's legs).
    """

    type: str
    question: str
    answer: str
    answer_type: str
    format: str
    station_1: str = ""
    station_2: str = ""
    transfer_count: int = 0
    details: dict = field(default_factory=dict)


def _pair_on_line(tmap: TransitMap, rng: random.Random) -> tuple[str, str, str]:
    """A random line and two distinct stations on it."""
    line = rng.choice(list(tmap.lines))
    a, b = rng.sample(tmap.lines[line], 2)
    return line, a, b


def _pair_apart(tmap: TransitMap, rng: random.Random) -> tuple[str, str] | None:
    """Two stations that share no line, or None when every pair shares one."""
    pairs = [
        (a, b)
        for a, b in itertools.permutations(tmap.stations(), 2)
        if not set(tmap.lines_at(a)) & set(tmap.lines_at(b))
    ]
    return rng.choice(pairs) if pairs else None


def _yesno(kind: str, question: str, truth: bool, **kw) -> TransitQuestion:
    """A yes/no question with its answer instruction."""
    return TransitQuestion(kind, f"{question} {YESNO}", "yes" if truth else "no", "yesno", "yesno", **kw)


def ask_torf1(tmap: TransitMap, rng: random.Random) -> TransitQuestion:
    """Same line? True or false with probability 1/2 (true when every pair of stations shares a line)."""
    apart = _pair_apart(tmap, rng) if rng.random() < 0.5 else None
    a, b = apart if apart else _pair_on_line(tmap, rng)[1:]
    return _yesno("TorF1", f"Are {a} and {b} on the same line?", apart is None, station_1=a, station_2=b)


def ask_torf2(tmap: TransitMap, rng: random.Random) -> TransitQuestion:
    """Is a station on a line? True or false with probability 1/2 (true when the line serves every station)."""
    line = rng.choice(list(tmap.lines))
    off = [s for s in tmap.stations() if s not in tmap.lines[line]]
    station = rng.choice(off) if off and rng.random() < 0.5 else rng.choice(tmap.lines[line])
    truth = station in tmap.lines[line]
    return _yesno("TorF2", f"Is {station} on the {line}?", truth, station_1=station, details={"line": line})


def ask_counting1(tmap: TransitMap, rng: random.Random) -> TransitQuestion:
    """Intermediate stops on one line, as 4 options.

    Distractors come from 0..(the most the line allows), not from around the truth, and the options are
    shuffled: in ascending order, adjacent stations (answer 0) would make "A" right far more often than not.
    """
    line, a, b = _pair_on_line(tmap, rng)
    stops = tmap.lines[line]
    value = abs(stops.index(a) - stops.index(b)) - 1
    options = [value, *rng.sample([v for v in range(max(len(stops) - 1, 4)) if v != value], 3)]
    rng.shuffle(options)
    letter = "ABCD"[options.index(value)]
    listed = "\n".join(f"{k}. {v}" for k, v in zip("ABCD", options))
    question = f"How many intermediate stops are there between {a} and {b} on the {line}?\n{listed}\n{LETTER}"
    details = {"line": line, "options": options, "answer_index": options.index(value), "value": value}
    return TransitQuestion("Counting1", question, letter, "choice", "mc", a, b, 0, details)


def ask_counting2(tmap: TransitMap, rng: random.Random) -> TransitQuestion:
    """Lines through a station; half the time a transfer station, else an answer of 1 would dominate."""
    transfers = tmap.transfer_stations()
    station = rng.choice(transfers if transfers and rng.random() < 0.5 else tmap.stations())
    value = str(len(tmap.lines_at(station)))
    return TransitQuestion(
        "Counting2", f"How many lines pass through {station}? {NUMBER}", value, "number", "open", station
    )


def ask_counting3(tmap: TransitMap, rng: random.Random) -> TransitQuestion:
    """Lines on the map (``rng`` unused: one possible question per map)."""
    return TransitQuestion(
        "Counting3", f"How many lines are there on the map? {NUMBER}", str(len(tmap.lines)), "number", "open"
    )


def ask_planning(tmap: TransitMap, rng: random.Random) -> TransitQuestion:
    """A route question; half of them need a transfer (when the map has stations that share no line)."""
    apart = _pair_apart(tmap, rng) if rng.random() < 0.5 else None
    a, b = apart if apart else _pair_on_line(tmap, rng)[1:]
    legs = plan_route(tmap.lines, a, b)
    question = f"Plan a route from {a} to {b}. {ROUTE_FORMAT}"
    details = {"route": [asdict(leg) for leg in legs]}
    return TransitQuestion("planning", question, format_route(legs), "text", "open", a, b, len(legs) - 1, details)


ASK = {
    "TorF1": ask_torf1,
    "TorF2": ask_torf2,
    "Counting1": ask_counting1,
    "Counting2": ask_counting2,
    "Counting3": ask_counting3,
    "planning": ask_planning,
}


def single_token_words() -> list[str]:
    """Words a tiny tokenizer should make single tokens for transit runs (``model.tiny_single_tokens``): the
    synthetic tasks' words, ``tiny`` maps' station names, line colours and the route format's words. A route
    answer is then ~15 tokens and each endpoint one token to copy from the question."""
    route = ["Route", "Name", "Departure", "Arrival", "Stop", "Line", "yes", "no", "Plan", "route", "from", "to"]
    return list(dict.fromkeys([*task_words(), *TINY_STATIONS, *LINE_COLORS, *route]))


def resolve_question_types(names: Sequence[str]) -> tuple[str, ...]:
    """Expand stage aliases (``tf``, ``counting``, ``planning``) and check the names, keeping first-seen order."""
    out: list[str] = []
    for name in names:
        for t in STAGES.get(name, (name,)):
            if t not in ASK:
                raise ValueError(f"unknown question type {name!r}; use {list(QUESTION_TYPES)} or {list(STAGES)}")
            if t not in out:
                out.append(t)
    if not out:
        raise ValueError("question_types is empty")
    return tuple(out)


#: Bump when generation changes in a way that alters rows (it is part of every uid).
GENERATOR_VERSION = 1
_STRING = datasets.Value("string")
_INT = datasets.Value("int64")
#: vrl's row schema plus the published ReasonMap columns the reward reads (``metro``: line -> stations JSON).
FEATURES = datasets.Features(
    {
        **SCHEMA,
        "type": _STRING,
        "difficulty_city": _STRING,
        "question_transfer_count": _INT,
        "city_line_count": _INT,
        "city_transfer_count": _INT,
        "station_1": _STRING,
        "station_2": _STRING,
        "metro": _STRING,
    }
)


@dataclass(frozen=True)
class TransitSpec:
    """Everything that determines the rows (but not how many): see :func:`build_transit_maps`."""

    question_types: tuple[str, ...]
    difficulties: tuple[str, ...]
    seed: int
    split: str
    image_size: int
    num_maps: int | None = None

    def __post_init__(self) -> None:
        resolve_question_types(self.question_types)
        if not self.difficulties or any(d not in LEVEL_NAMES for d in self.difficulties):
            raise ValueError(f"difficulties must be a non-empty subset of {LEVEL_NAMES}; got {self.difficulties}")
        if self.image_size < 112:
            raise ValueError(f"image_size must be >= 112 px to fit station labels; got {self.image_size}")
        if self.num_maps is not None and self.num_maps < 1:
            raise ValueError(f"num_maps must be >= 1 or null; got {self.num_maps}")

    def digest(self) -> str:
        blob = json.dumps([GENERATOR_VERSION, asdict(self)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def transit_map(self, rng: random.Random) -> TransitMap:
        """The row's map: its own draw, or (with ``num_maps``) one of a fixed pool of "cities" of this split."""
        if self.num_maps is None:
            return sample_map(rng, rng.choice(self.difficulties))
        city = row_rng("vrl-transit-map", self.seed, self.split, rng.randrange(self.num_maps))
        return sample_map(city, city.choice(self.difficulties))

    def row(self, index: int) -> dict:
        """Row ``index``: a pure function of the spec and the index."""
        rng = row_rng("vrl-transit", self.seed, self.split, index)
        kind = rng.choice(resolve_question_types(self.question_types))
        tmap = self.transit_map(rng)
        q = ASK[kind](tmap, rng)
        meta = {"map": tmap.to_dict(), **q.details, "seed": self.seed, "split": self.split, "index": index}
        return {
            "prompt": f"<image>\n{q.question}",
            "images": [render_map(tmap, self.image_size)],
            "answer": q.answer,
            "answer_type": q.answer_type,
            "task": "transit",
            "format": q.format,
            "meta": json.dumps(meta, sort_keys=True),
            "uid": f"transit-{self.split}-{self.digest()}-{index:06d}",
            "type": q.type,
            "difficulty_city": tmap.difficulty,
            "question_transfer_count": q.transfer_count,
            "city_line_count": len(tmap.lines),
            "city_transfer_count": len(tmap.transfer_stations()),
            "station_1": q.station_1,
            "station_2": q.station_2,
            "metro": json.dumps(tmap.lines),
        }


def _png(image) -> dict:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def build_transit_maps(
    num_samples: int = 1000,
    seed: int = 0,
    split: str = "train",
    question_types: Sequence[str] = QUESTION_TYPES,
    difficulties: Sequence[str] = DIFFICULTIES,
    image_size: int = 224,
    mode: str = "materialize",
    num_maps: int | None = None,
    progress: bool | None = None,
) -> datasets.Dataset | SyntheticStream:
    """Build RewardMap-style transit-map questions (row schema: :mod:`vrl.types` plus :data:`FEATURES`).

    Row ``i`` is drawn from a generator seeded by (seed, split, i): the same arguments give the same rows and
    image bytes, and another ``split`` gives independent draws.

    Args:
        num_samples: number of rows.
        seed: base seed; usually the run's ``${seed}``.
        split: mixed into every row's seed (and every map's), so ``val`` holds other questions on other maps.
        question_types: types to draw uniformly from, from :data:`QUESTION_TYPES`, or the stage aliases ``tf``,
            ``counting`` and ``planning`` (:data:`STAGES`). This is the knob a curriculum stage sets: RewardMap
            trains on ``[tf]``, then ``[counting]``, then ``[planning]``.
        difficulties: map difficulties to draw uniformly from (``easy``, ``middle``, ``hard``; ``tiny``: ours, 2-3
            lines of 2-3 stations on a 3 x 3 grid: short routes, small counts).
        image_size: square image side in pixels; 224 gives 64 vision tokens with patch 14 and merge 2 and
            keeps labels readable. At least 112.
        mode: ``materialize`` (a ``datasets.Dataset`` with PNG-encoded images) or ``stream`` (a torch dataset
            that draws row ``i`` on access; same rows).
        num_maps: ``None`` draws a new map for every row. An integer draws each row's map from a fixed pool of
            that many maps per split, like ReasonMap's 30 cities with many questions each.
        progress: progress bar while materialising; ``None`` shows one above 300 rows.

    Returns:
        A ``datasets.Dataset`` (``materialize``) or a map-style torch dataset (``stream``).
    """
    spec = TransitSpec(
        question_types=tuple(str(t) for t in question_types),
        difficulties=tuple(str(d) for d in difficulties),
        seed=int(seed),
        split=str(split),
        image_size=int(image_size),
        num_maps=None if num_maps is None else int(num_maps),
    )
    if mode == "stream":
        return SyntheticStream(spec, num_samples)  # generic: it only calls spec.row(i)
    if mode != "materialize":
        raise ValueError(f"mode must be 'materialize' or 'stream', got {mode!r}")
    from rich.progress import track

    show = num_samples > PROGRESS_MIN_ROWS if progress is None else progress
    rows = []
    for i in track(range(num_samples), description=f"transit {split}", disable=not show):
        row = spec.row(i)
        row["images"] = [_png(im) for im in row["images"]]
        rows.append(row)
    return datasets.Dataset.from_list(rows, features=FEATURES)
