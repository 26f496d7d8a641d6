"""RewardMap's difficulty-aware reward for transit-map questions (Feng et al., arXiv 2510.02240).

Published code: ``github.com/fscdc/RewardMap`` ``verl/utils/reward_score/reason_map.py`` (snapshot 15428ac),
mode ``difficulty_aware``. Per response::

    R = W * (10 * correct + 0.5 * D)          D: planning "detail" reward (0 for other types)

**Correctness.** TorF and Counting answers are the last ``\\boxed{}`` (else the text after "the answer is"
and similar phrases, else the whole response), lower-cased with spaces removed: ``yes``/``no``, an integer,
or a letter a-d. A planning answer is the whole response, read as sections separated by ``--``, each with
``Route Name:``, ``Departure Stop:`` and ``Arrival Stop:`` (:func:`parse_route`). It is correct when the first
departure is station_1 and the last arrival station_2, every route name is a line of the city, both stops
of each section are on that line, and each arrival is the next section's departure. It need not be the
shortest route. Station names are compared after the published normalisation (:func:`clean_station`).

**Detail reward D** (planning only; capped at 10, may be negative). 0 unless the endpoints are right; then
+2, and for each section i = 1..n with T = question_transfer_count:

- -5 when i > T  (see the off-by-one note below);
- if its route name is a line: +4 when T = 0 and that line holds both stations, +3 when T >= 1;
- +1 when i <= T and its stops are on its line and its arrival is the next departure (a correct transfer).

**The off-by-one.** A route with T transfers has T + 1 sections, so "-5 when i > T" also fires on the last
section of every correct route: a correct direct route gets D = 2 - 5 + 4 = 1, a correct one-transfer route
D = 2 + (3 + 1) + (3 - 5) = 4, while a *wrong* one-section answer to a one-transfer question with valid
endpoints and line gets D = 2 + 3 = 5. The penalty reads as meant for sections beyond the T + 1 needed, but
the paper's formula was not found and the published numbers come from the code, so
``section_penalty="published"`` (default) keeps it and ``"corrected"`` penalises only i > T + 1 (D = 6 and
9 for the two correct routes above).

**Difficulty weight W** = {easy 1.0, middle 1.2, hard 1.5} by map, + 0.5 for a planning question that needs
a transfer. W is the same for every rollout of a prompt, so a std-normalised advantage (GRPO's group
z-score) divides it out again, up to eps (shared/methods/core.md §5.6). ``weight_after_norm=True`` leaves W
out of the reward, and :class:`vrl.methods.rewardmap.DifficultyWeight` multiplies it into the advantages
after normalisation,
where it does scale the update; ``vrl.validate`` warns when W sits where it cancels.

Deliberate differences from the published parser, all lenient: ``\\text{yes}`` inside a box reads as
``yes``; a missing space after ``Route Name:`` / ``Departure Stop:`` is accepted. Section markers are matched
case-sensitively for both correctness and D (the published D also keeps sections whose markers differ in
case, but then cannot read them). Samples carry the published columns (see :mod:`vrl.data.transit`):
``type``, ``answer``, ``difficulty_city``, ``question_transfer_count``, ``station_1``, ``station_2`` and
``metro`` (the city's line -> stations JSON).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .extract import last_boxed

logger = logging.getLogger("vrl")

DIFFICULTY_WEIGHTS = {"easy": 1.0, "middle": 1.2, "hard": 1.5, "tiny": 1.0}  # tiny (ours) weighs as easy
SECTION_PENALTIES = ("published", "corrected")
#: Substrings of Beijing route names the published scorer maps to the JSON's line names.
ROUTE_ALIASES = {"八通": "Line 1", "大兴": "Line 4"}
_PHRASES = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")
_MARKERS = ("Route Name:", "Departure Stop:", "Arrival Stop:")
_ROUTE = re.compile(r"Route Name:[ \t]*(.*?)\n")
_DEPARTURE = re.compile(r"Departure Stop:[ \t]*(.*?)\n")
_TEXT = re.compile(r"\\text\{([^{}]*)\}")
_INTEGER = re.compile(r"[+-]?\d+")


def clean_station(name: str) -> str:
    """The published station normalisation (``clean_string``), replacement order and quirks kept.

    Drops "Metro"/"Station", punctuation, parenthesised notes, spaces and hyphens, expands Univ/Tech, maps
    "road" to "lu" (pinyin), strips a trailing 站, lower-cases. E.g. ``"Jurong East Station"`` -> ``"jurongeast"``.
    """
    s = name.replace("Metro", "").replace("metro", "").replace(",", "").replace("*", "").replace("\n", "")
    s = s.replace("'", "").replace("Univ.", "University").replace("Univ", "University")
    s = s.replace("Tech.", "Technology").replace("Tech", "Technology").replace("road", "lu").replace("Road", "lu")
    s = s.replace("Station", "").replace("station", "").replace("Asian Games Village", "yayuncun")
    s = s.removesuffix("站")
    s = re.sub(r"[\(\（][^\)\）]*[\)\）]", "", s)
    return re.sub(r"[\s\-]+", "", s).lower()


@dataclass(frozen=True)
class Section:
    """One parsed route section; stops are normalised with :func:`clean_station`, None when unreadable."""

    route: str | None
    departure: str | None
    arrival: str


def parse_route(response: str) -> list[Section]:
    """Sections of a planning answer; text between ``--`` that lacks any of the three markers is skipped."""
    sections = []
    for part in response.split("--"):
        if not part.strip() or not all(marker in part for marker in _MARKERS):
            continue
        route, departure = _ROUTE.search(part), _DEPARTURE.search(part)
        name = route.group(1).strip() if route else None
        for key, alias in ROUTE_ALIASES.items():
            name = alias if name and key in name else name
        arrival = clean_station(part.split("Arrival Stop:")[-1].strip())
        sections.append(Section(name, clean_station(departure.group(1)) if departure else None, arrival))
    return sections


@functools.lru_cache(maxsize=64)
def metro_lines(metro: str) -> dict[str, frozenset[str]]:
    """Line name -> normalised station names, from a line -> stations JSON (cached: G rollouts share it)."""
    return {line: frozenset(clean_station(s) for s in stops) for line, stops in json.loads(metro).items()}


def _endpoints_match(sections: list[Section], station_1: str, station_2: str) -> bool:
    return sections[0].departure == clean_station(station_1) and sections[-1].arrival == clean_station(station_2)


def route_correct(sections: list[Section], lines: Mapping[str, frozenset[str]], station_1: str, station_2: str) -> bool:
    """The published planning check: right endpoints, real lines, stops on their lines, chained sections."""
    if not sections or not _endpoints_match(sections, station_1, station_2):
        return False
    for i, sec in enumerate(sections):
        stops = lines.get(sec.route) if sec.route is not None else None
        if stops is None or sec.departure not in stops or sec.arrival not in stops:
            return False
        if i + 1 < len(sections) and sec.arrival != sections[i + 1].departure:
            return False
    return True


def detail_reward(
    sections: list[Section],
    lines: Mapping[str, frozenset[str]],
    station_1: str,
    station_2: str,
    transfers: int,
    section_penalty: str = "published",
    cap: float = 10.0,
) -> float:
    """The planning detail reward D (module docstring), ``min(D, cap)``.

    Args:
        sections: the parsed answer.
        lines: the city's normalised lines (:func:`metro_lines`).
        station_1: departure station of the question.
        station_2: arrival station.
        transfers: ``question_transfer_count``: transfers of the question's reference route.
        section_penalty: ``published`` (-5 from section T on) or ``corrected`` (-5 only after section T + 1).
        cap: upper bound on D (published: 10).
    """
    if section_penalty not in SECTION_PENALTIES:
        raise ValueError(f"section_penalty must be one of {SECTION_PENALTIES}, got {section_penalty!r}")
    if not sections or not _endpoints_match(sections, station_1, station_2):
        return 0.0
    s1, s2 = clean_station(station_1), clean_station(station_2)
    exempt = transfers if section_penalty == "published" else transfers + 1
    score = 2.0
    for i, sec in enumerate(sections, start=1):
        if i > exempt:
            score -= 5
        stops = lines.get(sec.route) if sec.route is not None else None
        if stops is None:
            continue
        if transfers == 0:
            score += 4 if s1 in stops and s2 in stops else 0
        else:
            score += 3
        chained = i < len(sections) and sec.arrival == sections[i].departure
        if i <= transfers and chained and sec.departure in stops and sec.arrival in stops:
            score += 1
    return min(score, cap)


def short_answer(response: str) -> str:
    """The TorF / Counting answer span, normalised as published: last box, else an "answer is" phrase."""
    text = last_boxed(response)
    if text is None:
        text = response
        for phrase in _PHRASES:
            for flag in (phrase, phrase.replace("the", "The")):
                if flag in text:
                    text = text.split(flag)[-1].strip().split("\n")[0].split(". ")[0]
    text = _TEXT.sub(r"\1", text.lower()).split("=")[-1]
    return re.sub(r"\s+", "", text).rstrip(".").lstrip(":").strip()


def short_correct(kind: str, response: str, answer: str) -> bool:
    """Whether a TorF / Counting response matches ``answer`` (vrl form: yes/no, a letter, an integer).

    The published integer forms (TorF 1/0, Counting1 option index 0-3) are accepted as ``answer`` too.
    """
    span, gold = short_answer(response), str(answer).strip().lower()
    if kind.startswith("TorF"):
        gold = {"1": "yes", "true": "yes", "0": "no", "false": "no"}.get(gold, gold)
        return span == gold
    if kind == "Counting1":
        gold = "abcd"[int(gold)] if gold in ("0", "1", "2", "3") else gold
        return len(span) == 1 and span in "abcd" and span == gold
    return _INTEGER.fullmatch(span) is not None and int(span) == int(gold)


def difficulty_weight(sample: Mapping[str, Any], weights: Mapping[str, float], transfer_bonus: float) -> float:
    """W of one sample: the map's difficulty weight, + ``transfer_bonus`` for planning with a transfer."""
    level = sample.get("difficulty_city")
    if level not in weights:
        raise ValueError(f"sample uid={sample.get('uid')!r}: difficulty_city {level!r} not in {sorted(weights)}")
    bonus = transfer_bonus if sample.get("type") == "planning" and int(sample["question_transfer_count"]) > 0 else 0
    return float(weights[level]) + bonus


def _check_type(sample: Mapping[str, Any]) -> str:
    kind = sample.get("type")
    if kind not in ("TorF1", "TorF2", "Counting1", "Counting2", "Counting3", "planning"):
        raise ValueError(f"sample uid={sample.get('uid')!r}: unknown ReasonMap question type {kind!r}")
    return kind


class RewardMap:
    """R = W * (correct_reward * correct + detail_coef * D): the published difficulty-aware reward.

    Args:
        weight: multiplier applied by the reward set.
        correct_reward: reward of a correct answer (published: 10).
        detail_coef: coefficient of the planning detail reward D (published: 0.5).
        detail_cap: upper bound on D (published: 10).
        section_penalty: ``published`` or ``corrected`` (the off-by-one in the module docstring).
        difficulty_weights: difficulty_city -> W; None for the published {easy 1.0, middle 1.2, hard 1.5}.
        transfer_bonus: added to W for planning questions that need a transfer (published: 0.5).
        weight_after_norm: False (published): multiply by W here, where a std-normalised advantage cancels it.
            True: leave W out; pair with :class:`DifficultyWeight` to apply it after normalisation.
        name: key under which the reward set logs this term.
    """

    @staticmethod
    def check(cfg: Any, path: str) -> None:
        """Warn where W does nothing or is applied twice (shared/methods/core.md §5.6).

        W is the same for all G rollouts of a prompt, so inside the reward a std-normalised advantage divides it
        out (up to eps); after normalisation (``weight_after_norm`` + a ``DifficultyWeight`` hook) it scales the
        update.
        """
        from hydra.utils import get_object, instantiate
        from omegaconf import OmegaConf

        hooks = [
            f"hooks.{k}"
            for k, v in (cfg.get("hooks") or {}).items()
            if v and v.get("_target_") and get_object(v["_target_"]).__name__ == "DifficultyWeight"
        ]
        after_norm = bool(OmegaConf.select(cfg, f"{path}.weight_after_norm", default=False))
        where = f"{path}: RewardMap's difficulty weight W"
        if not after_norm and hooks:
            logger.warning("%s is applied twice (reward and %s); set weight_after_norm=true", where, ", ".join(hooks))
        elif not after_norm and cfg.get("advantage") and instantiate(cfg.advantage).normalises_scale:
            logger.warning(
                "%s is inside the reward, where advantage=%s divides it out again (same W for the whole group); "
                "set %s.weight_after_norm=true and add a DifficultyWeight hook (as +method=rewardmap does) to "
                "apply it after normalisation, or use an advantage without std (group_mean, rloo)",
                where,
                cfg.advantage.get("_target_"),
                path,
            )
        elif after_norm and not hooks:
            logger.warning("%s is left out of the reward (weight_after_norm) and no DifficultyWeight hook applies it",
                           where)  # fmt: skip

    def __init__(
        self,
        weight: float = 1.0,
        correct_reward: float = 10.0,
        detail_coef: float = 0.5,
        detail_cap: float = 10.0,
        section_penalty: str = "published",
        difficulty_weights: Mapping[str, float] | None = None,
        transfer_bonus: float = 0.5,
        weight_after_norm: bool = False,
        name: str = "rewardmap",
    ) -> None:
        if section_penalty not in SECTION_PENALTIES:
            raise ValueError(f"section_penalty must be one of {SECTION_PENALTIES}, got {section_penalty!r}")
        self.weight, self.name = float(weight), name
        self.correct_reward, self.detail_coef, self.detail_cap = correct_reward, detail_coef, detail_cap
        self.section_penalty = section_penalty
        self.difficulty_weights = dict(difficulty_weights or DIFFICULTY_WEIGHTS)
        self.transfer_bonus = transfer_bonus
        self.weight_after_norm = weight_after_norm

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [self.score(r, s) for r, s in zip(responses, samples)]

    def parts(self, response: str, sample: Mapping[str, Any]) -> tuple[bool, float, float]:
        """(correct, D, W) of one response: the three factors of the reward, for tests and logging."""
        kind = _check_type(sample)
        weight = difficulty_weight(sample, self.difficulty_weights, self.transfer_bonus)
        if kind != "planning":
            return short_correct(kind, response, sample["answer"]), 0.0, weight
        sections, lines = parse_route(response), metro_lines(sample["metro"])
        s1, s2, transfers = sample["station_1"], sample["station_2"], int(sample["question_transfer_count"])
        correct = route_correct(sections, lines, s1, s2)
        detail = detail_reward(sections, lines, s1, s2, transfers, self.section_penalty, self.detail_cap)
        return correct, detail, weight

    def score(self, response: str, sample: Mapping[str, Any]) -> float:
        correct, detail, weight = self.parts(response, sample)
        value = self.correct_reward * correct + self.detail_coef * detail
        return value if self.weight_after_norm else weight * value


class RewardMapAccuracy:
    """1.0 for a correct answer to a ReasonMap question (any type), else 0.0.

    Pair it with :class:`RewardMap` at weight 0 to log ``accuracy`` (and ``val/accuracy``) or to key a
    group filter on it without changing the reward.
    """

    def __init__(self, weight: float = 0.0, name: str = "accuracy") -> None:
        self.weight, self.name = float(weight), name

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        return [float(_correct(r, s)) for r, s in zip(responses, samples)]


def _correct(response: str, sample: Mapping[str, Any]) -> bool:
    kind = _check_type(sample)
    if kind != "planning":
        return short_correct(kind, response, sample["answer"])
    return route_correct(parse_route(response), metro_lines(sample["metro"]), sample["station_1"], sample["station_2"])
