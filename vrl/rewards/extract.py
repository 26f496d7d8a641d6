"""Answer extraction and normalisation shared by the built-in reward terms.

Grading a response takes two steps, kept apart so each can be configured and tested alone:

1. :class:`AnswerExtractor` cuts the answer *span* out of the free-form response (the last
   ``<answer>...</answer>``, else the last ``\\boxed{...}``, else a configurable fallback).
2. ``parse_*`` functions turn a span into a typed value (``"yes"``, a set of option letters, a float,
   four box coordinates) or ``None`` when the span holds no such value. ``None`` is how a reward learns
   "unparsable": it scores 0 instead of raising, because model output is never trusted to be well formed.

Everything here is plain string work: no ``eval``, no ``exec``, no sympy. Model output is only ever
matched against regular expressions.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping

#: Where the answer span falls back to when neither an answer tag nor ``\\boxed{}`` is present.
FALLBACKS = ("whole", "last_line", "first_word", "none")

# "answer: b", "The final answer is yes", "Option (C)": a lead-in that carries no answer itself.
_ANSWER_PREFIX = re.compile(
    r"^\s*(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)s?(?:\s+is|\s+are)?\s*[:=\-]?\s*",
    re.IGNORECASE,
)
# Markdown emphasis, quotes and code ticks models wrap short answers in.
_DECORATION = "*_`\"' \t\r\n"
_BOXED = re.compile(r"\\boxed\s*\{")
# A number as people write it: sign, thousands separators, decimals, exponent. The look-behind keeps
# digits that are part of a word ("Qwen2", "x1") or of a longer number ("1.5" must not yield "5") out.
_NUMBER = re.compile(r"(?<![\w.])[-+\u2212]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
# Box coordinates never use thousands separators, so "[100,200,300,400]" is four numbers, not one.
_COORD = r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)"
_PLAIN_NUMBER = re.compile(rf"(?<![\w.]){_COORD}")
_BOX_LIST = re.compile(rf"\[\s*({_COORD})\s*,\s*({_COORD})\s*,\s*({_COORD})\s*,\s*({_COORD})\s*\]")
_BOX_PAIRS = re.compile(rf"\(\s*({_COORD})\s*,\s*({_COORD})\s*\)\s*,?\s*\(\s*({_COORD})\s*,\s*({_COORD})\s*\)")
_QWEN_BOX = re.compile(r"<\|box_start\|>(.*?)<\|box_end\|>", re.DOTALL)
# Separators in a multi-select answer: "A, C", "A and C", "A/C", "A C".
_CHOICE_SEPARATOR = re.compile(r"\s*[,;/&+]\s*|\s+and\s+|\s+", re.IGNORECASE)
# A letter that introduces an option's text: "B. red", "(B) red", "b) red", "B: red".
_LEADING_OPTION = re.compile(r"^\(?([A-Za-z])\s*[).:]\s+\S")
_ARTICLES = frozenset({"a", "an", "the"})
_YESNO = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}


class AnswerExtractor:
    """Finds the answer span in a response; the first stage of every answer check.

    Precedence: the content of the **last** ``<answer>...</answer>`` pair, then the content of the
    **last** complete ``\\boxed{...}`` (nested braces are balanced, so ``\\boxed{\\frac{1}{2}}`` yields
    ``\\frac{1}{2}``), then ``fallback``. A ``\\boxed{}`` *inside* the answer tag is unwrapped too, since
    math prompts often ask for both. "Last" because models revise: the final tag is the committed answer,
    and earlier ones are usually quoted from the prompt or abandoned drafts. An unclosed tag (a
    truncated response) does not count as a tag.

    Args:
        answer_tag: Tag name whose content is the answer (``"answer"`` matches ``<answer>...</answer>``).
            ``None`` skips tag lookup, for prompts that never ask for tags.
        boxed: Whether to look for ``\\boxed{...}`` when no tag is found. On by default because math
            models emit it unprompted.
        fallback: What the span is when neither a tag nor a box is present. ``"whole"`` (default): the
            whole stripped response; right for the tiny synthetic tasks, whose prompts ask for a bare
            word and whose untrained policies rarely emit tags. ``"last_line"``: the last non-empty line,
            for chatty models that end with the answer. ``"first_word"``: the first whitespace-separated
            word, punctuation stripped, for one-word answers followed by anything (``"red. The shape..."``).
            ``"none"``: no span, so the response scores 0;
            use it to make the tags mandatory for accuracy.
    """

    def __init__(self, answer_tag: str | None = "answer", boxed: bool = True, fallback: str = "whole"):
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        self.answer_tag = answer_tag
        self.boxed = boxed
        self.fallback = fallback

    def __call__(self, response: str) -> str | None:
        """The answer span of ``response`` (stripped), or ``None`` when there is none."""
        if self.answer_tag:
            span = last_tag_content(response, self.answer_tag)
            if span is not None:
                inner = last_boxed(span) if self.boxed else None
                return (inner if inner is not None else span).strip()
        if self.boxed:
            inner = last_boxed(response)
            if inner is not None:
                return inner.strip()
        text = response.strip()
        if self.fallback == "whole":
            return text
        if self.fallback == "last_line":
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            return lines[-1] if lines else ""
        if self.fallback == "first_word":
            words = text.split()
            return words[0].strip(".,;:!?\"'()") if words else ""
        return None

    def __repr__(self) -> str:
        return f"AnswerExtractor(answer_tag={self.answer_tag!r}, boxed={self.boxed}, fallback={self.fallback!r})"


def last_tag_content(text: str, tag: str) -> str | None:
    """Content of the last complete ``<tag>...</tag>`` pair, or ``None``.

    Searches backwards from the last closing tag for the nearest opening tag, so for
    ``<answer>a<answer>b</answer>`` the answer is ``b`` (the innermost, latest one).
    """
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    opening = f"<{tag}>"
    start = text.rfind(opening, 0, close)
    if start < 0:
        return None
    return text[start + len(opening) : close]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` whose braces balance, or ``None``.

    A truncated ``\\boxed{`` at the end of a response is skipped in favour of an earlier complete one.
    """
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for i in range(match.end(), len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[match.end() : i]
    return None


def _strip_lead_in(text: str) -> str:
    """Drop decoration and an "answer:" style lead-in from a short answer."""
    return _ANSWER_PREFIX.sub("", text.strip(_DECORATION)).strip(_DECORATION)


def parse_yesno(text: str) -> str | None:
    """``"yes"`` or ``"no"`` from the *first word* of ``text`` (after an optional "answer:" lead-in).

    Only the first word counts: it is what the response commits to. ``"No, it is not."`` is ``"no"``,
    while ``"I don't know"`` is ``None``; a search through the whole text would find a "no" in it, and
    would have to pick between the two words of a hedge like ``"no or yes"``. ``true``/``false`` are
    accepted as synonyms.
    """
    match = re.match(r"[^a-z0-9]*([a-z]+)", _strip_lead_in(text).lower())
    return _YESNO.get(match.group(1)) if match else None


def parse_choices(text: str) -> frozenset[str] | None:
    """The set of option letters in ``text`` (upper case), or ``None``.

    Accepts a bare list of single letters, each optionally wrapped as ``(B)``, ``B.`` or ``B)`` and
    separated by commas, ``and``, slashes or spaces (``"A, C"``, ``"(a) and (c)"``, ``"answer: b"``),
    or one letter that introduces an option's text (``"B. red"``, ``"(B) red"``). Anything else is
    ``None``, so the article in ``"a red cube"`` is not read as option A. Returning a set makes order and
    duplicates irrelevant: ``"C, A"`` equals ``"A,C"``.
    """
    body = _strip_lead_in(text).rstrip(".").strip(_DECORATION)
    tokens = [token.strip("()[].:") for token in _CHOICE_SEPARATOR.split(body) if token]
    if tokens and all(len(token) == 1 and token.isascii() and token.isalpha() for token in tokens):
        return frozenset(token.upper() for token in tokens)
    match = _LEADING_OPTION.match(body)
    return frozenset({match.group(1).upper()}) if match else None


def parse_number(text: str, position: str = "last") -> float | None:
    """The first or last number written in ``text``, as a finite float, or ``None``.

    Handles signs (ASCII and Unicode minus), thousands separators (``1,234.5``), bare decimals
    (``.5``) and exponents (``1e-3``). Digits glued to letters (``Qwen2``, ``x1``) are not numbers.

    Args:
        text: The span to search.
        position: ``"last"`` (the conclusion of a worked answer) or ``"first"``.
    """
    if position not in ("first", "last"):
        raise ValueError(f"position must be 'first' or 'last', got {position!r}")
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    token = matches[-1] if position == "last" else matches[0]
    value = float(token.replace(",", "").replace("\u2212", "-"))
    return value if math.isfinite(value) else None


def parse_box(text: str) -> list[float] | None:
    """Four box coordinates ``[x1, y1, x2, y2]`` as written in ``text``, or ``None``.

    Tried in order, the first form found wins: the inside of a Qwen
    ``<|box_start|>...<|box_end|>`` (parsed with the rules below), a JSON-style list ``[x1, y1, x2, y2]``
    (also inside ``{"bbox_2d": [...]}``), a point pair ``(x1,y1),(x2,y2)``, and finally the first four
    numbers anywhere (``"x1=10, y1=20, x2=30, y2=40"``). Coordinates are returned unchanged: the
    coordinate frame and corner order are the caller's business (see ``vrl.rewards.iou``).
    """
    qwen = _QWEN_BOX.search(text)
    if qwen is not None:
        text = qwen.group(1)
    for pattern in (_BOX_LIST, _BOX_PAIRS):
        match = pattern.search(text)
        if match is not None:
            return _finite_box(match.groups())
    numbers = _PLAIN_NUMBER.findall(text)
    return _finite_box(numbers[:4]) if len(numbers) >= 4 else None


def _finite_box(tokens: tuple[str, ...] | list[str]) -> list[float] | None:
    box = [float(token) for token in tokens]
    return box if all(math.isfinite(value) for value in box) else None


def normalize_text(text: str, synonyms: Mapping[str, str] | None = None) -> str:
    """Canonical form of a short free-text answer, for exact-match comparison.

    Steps: Unicode NFKC, lower case, punctuation and underscores to spaces, drop the articles
    a/an/the, collapse whitespace. Then ``synonyms`` (keys and values normalised the same way) map the
    whole string if it is a key, otherwise each word (``{"grey": "gray"}`` makes ``"Dark grey"`` equal
    ``"dark gray"``).
    """
    words = [
        word
        for word in re.sub(r"[^\w\s]|_", " ", unicodedata.normalize("NFKC", text).lower()).split()
        if word not in _ARTICLES
    ]
    normalised = " ".join(words)
    if not synonyms:
        return normalised
    table = {normalize_text(key): normalize_text(value) for key, value in synonyms.items()}
    if normalised in table:
        return table[normalised]
    return " ".join(table.get(word, word) for word in words)
