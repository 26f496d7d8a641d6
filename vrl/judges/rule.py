"""``RuleJudge``: the CPU default judge, by normalised word containment (no model).

Perception-R1 judges with Qwen2.5-32B on 8 GPUs. On a CPU box the only models at hand are random tiny
ones, which judge nothing, so the default is a transparent rule: an annotation counts as stated when
its content words all occur in the response. It is a stand-in for tests and smoke runs, and a floor
for real ones; it cannot tell "the circle is not red" from "the circle is red".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from .base import JudgeItem, JudgeStats, Verdict, VerdictCache, judge_cached

#: Words dropped before matching: they carry the grammar of a fact, not its content.
STOPWORDS = frozenset(
    {"a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "of", "there", "here", "this", "that"}
    | {"these", "those", "it", "its", "and", "to", "in", "on", "at", "as", "by", "with", "has", "have", "had"}
    | {"which", "what", "who", "whose"}
)
#: Number words -> digits (both sides get the same mapping, so "three objects" matches "3 objects").
_UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
_TEENS = ("thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
NUMBER_WORDS = {w: str(i) for i, w in enumerate(_UNITS + _TEENS)} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "seventy": "70",
    "eighty": "80",
    "ninety": "90",
}
#: Spelling variants folded to one form.
SPELLINGS = {"colour": "color", "colours": "colors", "grey": "gray", "centre": "center", "metre": "meter"}

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")


def _canonical_number(token: str) -> str:
    """``"03"`` -> ``"3"``, ``"3.50"`` -> ``"3.5"``, ``"3.0"`` -> ``"3"`` (string surgery, no float rounding)."""
    whole, _, frac = token.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def normalize_tokens(text: str) -> list[str]:
    """The tokens :class:`RuleJudge` compares, in order.

    Steps: Unicode NFKC and lowercase; thousands separators removed (``1,200`` -> ``1200``); tokens are
    runs of letters or numbers with an optional decimal part, so every punctuation mark, LaTeX command
    backslash and ``$`` separates tokens and disappears (``$\\angle ABC$`` -> ``angle``, ``abc``);
    spelling variants folded (``colour`` -> ``color``); number words up to twenty and the tens mapped to
    digits (``three`` -> ``3``; compounds such as ``twenty one`` are not joined); numbers canonical
    (``3.0`` -> ``3``, ``07`` -> ``7``); a plural ``s`` dropped from letter words longer than three letters
    not ending in ``ss`` and not a stopword (``objects`` -> ``object``, ``bars`` -> ``bar``; the rule is crude
    but applied to both sides alike). Stopwords are *not* removed here.
    """
    text = _THOUSANDS.sub("", unicodedata.normalize("NFKC", text).lower())
    out = []
    for token in _TOKEN.findall(text):
        token = SPELLINGS.get(token, token)
        token = NUMBER_WORDS.get(token, token)
        if token[0].isdigit():
            token = _canonical_number(token)
        elif len(token) > 3 and token.endswith("s") and not token.endswith("ss") and token not in STOPWORDS:
            token = token[:-1]
        out.append(token)
    return out


def content_words(text: str) -> set[str]:
    """:func:`normalize_tokens` minus :data:`STOPWORDS`; all the tokens when every one is a stopword."""
    tokens = normalize_tokens(text)
    content = {t for t in tokens if t not in STOPWORDS}
    return content or set(tokens)


class RuleJudge:
    """Scores an annotation 1 when enough of its content words occur anywhere in the response, else 0.

    Exactly what matches: both texts go through :func:`normalize_tokens`; the annotation's content words
    are its tokens minus :data:`STOPWORDS` (``"there are 3 objects"`` -> ``{3, object}``; ``"the triangle
    is red"`` -> ``{triangle, red}``). The annotation is stated when the fraction of those words found in
    the response's token *set* is at least ``min_overlap``. Word order, negation, and which object a word
    belongs to are ignored: ``"the red square and the blue triangle"`` states ``"the triangle is red"``.
    An annotation with no tokens at all (pure punctuation) scores 0. Every verdict is ``ok``.

    Args:
        min_overlap: fraction of an annotation's content words the response must contain. 1.0 (default)
            asks for all of them, the closest a word rule gets to "clearly states it"; lower values pay for
            near misses ("3 objects" for "there are 3 red objects").
        cache_size: verdicts kept (:class:`~vrl.judges.base.VerdictCache`); 0 (default) keeps none,
            since a rule is cheaper than a hash.
    """

    def __init__(self, min_overlap: float = 1.0, cache_size: int = 0) -> None:
        if not 0.0 < min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
        self.min_overlap = min_overlap
        self.cache = VerdictCache(cache_size)
        self.stats = JudgeStats()

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One verdict per item (see the class docstring for the rule)."""
        return judge_cached(items, self.cache, self.stats, self._judge_uncached)

    def _judge_uncached(self, items: list[JudgeItem]) -> list[Verdict]:
        return [self._judge_one(item) for item in items]

    def _judge_one(self, item: JudgeItem) -> Verdict:
        said = set(normalize_tokens(item.response))
        scores = []
        for annotation in item.annotations:
            words = content_words(annotation)
            found = len(words & said) / len(words) if words else 0.0
            scores.append(1.0 if words and found >= self.min_overlap else 0.0)
        return Verdict(tuple(scores), len(scores), True)
