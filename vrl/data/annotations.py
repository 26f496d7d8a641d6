"""Perception-R1 visual annotations (arXiv 2506.07218): the atomic facts about an image a response should state.

Perception-R1 distils correct chain-of-thought solutions from a strong model offline and has a text LLM pull
out short facts about the figure ("$JKLM$ is a parallelogram."). Each published row stores them in a
``visual_key_info`` column as ``<info1>..</info1>\\n<info2>..</info2>...``; a judge then checks which of them
a rollout states (:mod:`vrl.judges`, :class:`vrl.rewards.VisualPerception`). This module holds only pure
functions:

- :func:`parse_visual_key_info` / :func:`format_visual_key_info`: the column's tag format, both ways;
- :func:`annotations_from_scene`: the same kind of facts for synthetic rows, read off the scene graph in
  ``meta`` (so they are exact, not distilled);
- :func:`sample_annotations`: which of the two a row gets.

Synthetic facts are short declaratives in the words of :func:`vrl.data.tasks.vocabulary` (only the plural
"bars" is new): "the triangle is red", "there are 3 objects", "the cat bar is 5". A tiny policy can emit them
with its own tokens, and the rule judge (:class:`vrl.judges.RuleJudge`) can match them by their content words.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from itertools import combinations

from vrl.data.checklist import tag_contents, target_keys
from vrl.data.scene import Chart, Scene, SceneObject, from_dict

#: The published column with the annotations of a real row.
VISUAL_KEY_INFO = "visual_key_info"


def parse_visual_key_info(text: str | None) -> list[str]:
    """The annotations of a ``visual_key_info`` value, in K order.

    Tags are read tolerantly (whitespace and case inside ``< info1 >``, whitespace collapsed inside the
    content, a missing closing tag on the last item; the last occurrence of a K wins). Empty items are
    dropped. A non-empty value with no tags at all is one annotation (a hand-written single fact).
    Gaps in K are closed: ``<info1>``, ``<info3>`` give two annotations, re-numbered 1 and 2 when formatted.

    Args:
        text: the column value; None (a missing value in a parquet file) gives no annotations.

    Returns:
        m >= 0 annotations.
    """
    if not isinstance(text, str) or not text.strip():
        return []
    tags = dict(tag_contents(text, "info"))
    if not tags:
        return [" ".join(text.split())]
    return [tags[k] for k in sorted(tags) if tags[k]]


def format_visual_key_info(annotations: Sequence[str]) -> str:
    """``<info1>a</info1>\\n<info2>b</info2>...``: the published column format, as the judge prompt shows it."""
    return "\n".join(f"<info{k}>{a}</info{k}>" for k, a in enumerate(annotations, 1))


@lru_cache(maxsize=4096)
def _annotations_from_meta_json(meta: str, max_items: int | None, drop_constant: bool = False) -> tuple[str, ...]:
    return tuple(annotations_from_scene(json.loads(meta), max_items, drop_constant))


#: Scenes sampled per (task, difficulty) to find the facts every row of a task states (:func:`constant_facts`).
CONSTANT_FACT_SAMPLES = 64


@lru_cache(maxsize=256)
def constant_facts(task: str, difficulty: int = 1, samples: int = CONSTANT_FACT_SAMPLES) -> frozenset[str]:
    """Scene facts that every sampled row of a synthetic ``task`` states: they say nothing about the image.

    "there is 1 object" holds for every single-object row, so stating it is free reward that needs no look at the
    image (the issue-6 Perception-R1 run was gamed exactly so). The task's generator (:data:`vrl.data.tasks.TASKS`
    or :data:`vrl.data.testbed.TESTBED`) draws ``samples`` scenes from fixed seeds and the facts common to all of
    them are returned; a fact that varies in fewer than 1 row in ``samples`` could be missed, which for the
    generators here (uniform draws over at most 7 values) does not happen. Unknown tasks (real data, the
    multi-label classify rows) have none.
    """
    from vrl.data.tasks import TASKS, TaskOptions, row_rng
    from vrl.data.testbed import TESTBED

    if task in TASKS:
        draw = lambda rng: TASKS[task].make(rng, difficulty, 112, TaskOptions())[0]  # noqa: E731
    elif task in TESTBED:
        draw = lambda rng: TESTBED[task](rng, difficulty, 56).scene  # noqa: E731
    else:
        return frozenset()
    common: set[str] | None = None
    for k in range(samples):
        facts = set(annotations_from_scene(draw(row_rng("vrl-constant-facts", task, difficulty, k)).to_dict(), None))
        common = facts if common is None else common & facts
    return frozenset(common or ())


def annotations_from_scene(meta: dict | str, max_items: int | None = 8, drop_constant: bool = False) -> list[str]:
    """Visual facts of a synthetic row, read off its scene graph; facts about the question's target first.

    For a shapes scene: the object count; each object's colour (``the triangle is red`` when its shape is
    unique in the scene, else ``there is a red triangle``); how many objects each repeated colour has; and
    left/right relations between uniquely named objects whose boxes are disjoint horizontally (the
    relation then has one answer, as in :mod:`vrl.data.tasks`). For a bar chart: the bar count, the
    tallest bar, each bar's value and colour. Sizes and boxes are not stated: ``small``/``large`` is
    relative, and a judge cannot match pixel coordinates. The order is deterministic (no random choice),
    so the G rollouts of a row and every epoch see the same list.

    Args:
        meta: the row's ``meta`` (dict or JSON) holding ``scene``; a bare scene dict is accepted too.
        max_items: keep at most this many facts (target facts first); None keeps all.
        drop_constant: leave out the facts every row of the row's task states (:func:`constant_facts`, read from
            ``meta``'s ``task`` and ``difficulty``) before ``max_items`` applies.

    Returns:
        Facts as lowercase declaratives; empty when ``meta`` has no scene graph.
    """
    meta = json.loads(meta) if isinstance(meta, str) else meta
    graph_dict = meta.get("scene", meta) if isinstance(meta, dict) else {}
    if not isinstance(graph_dict, dict) or "kind" not in graph_dict:
        return []
    graph = from_dict(graph_dict)
    targets = target_keys(meta.get("target") or [])
    ranked = _chart_facts(graph, targets) if isinstance(graph, Chart) else _scene_facts(graph, targets)
    ranked.sort(key=lambda r: r[0])  # stable: ties keep their reading order
    facts = list(dict.fromkeys(fact for _, fact in ranked))
    if drop_constant and isinstance(meta.get("task"), str):
        constant = constant_facts(meta["task"], int(meta.get("difficulty") or 1))
        facts = [f for f in facts if f not in constant]
    return facts if max_items is None else facts[:max_items]


def _scene_facts(scene: Scene, targets: set[str]) -> list[tuple[int, str]]:
    """(tier, fact) pairs; tier 0 is about a target object, 1 the scene as a whole, 2 other objects."""
    objs = scene.objects
    shapes, colors = Counter(o.shape for o in objs), Counter(o.color for o in objs)
    names = Counter(o.name for o in objs)

    def tier(*about: SceneObject) -> int:
        return 0 if any(o.name in targets for o in about) else 2

    n = len(objs)
    out = [(1, f"there {'is' if n == 1 else 'are'} {n} {'object' if n == 1 else 'objects'}")]
    for o in objs:
        fact = f"the {o.shape} is {o.color}" if shapes[o.shape] == 1 else f"there is a {o.color} {o.shape}"
        out.append((tier(o), fact))
    for o in objs:
        if colors[o.color] > 1:
            out.append((tier(o), f"there are {colors[o.color]} {o.color} objects"))
    for a, b in combinations(objs, 2):
        if names[a.name] > 1 or names[b.name] > 1:
            continue
        if a.bbox[2] < b.bbox[0]:
            out.append((tier(a, b), f"the {a.name} is left of the {b.name}"))
        elif b.bbox[2] < a.bbox[0]:
            out.append((tier(a, b), f"the {b.name} is left of the {a.name}"))
    return out


def _chart_facts(chart: Chart, targets: set[str]) -> list[tuple[int, str]]:
    bars = chart.bars()
    categories = Counter(b["category"] for b in bars)
    values = Counter(b["value"] for b in bars)
    out = [(1, f"there {'is' if len(bars) == 1 else 'are'} {len(bars)} {'bar' if len(bars) == 1 else 'bars'}")]
    if bars:
        top = max(bars, key=lambda b: b["value"])
        if values[top["value"]] == 1:
            out.append((0 if top["category"] in targets else 1, f"the tallest bar is {top['category']}"))
    for bar in bars:
        cat = bar["category"]
        if categories[cat] > 1:  # "the cat bar" would be ambiguous
            continue
        tier = 0 if cat in targets else 2
        out.append((tier, f"the {cat} bar is {bar['value']}"))
        out.append((tier, f"the {cat} bar is {bar['color']}"))
    return out


def sample_annotations(
    sample: dict, key: str = VISUAL_KEY_INFO, max_items: int | None = 8, drop_constant: bool = False
) -> tuple[str, ...]:
    """The annotations a row is judged against.

    A row that has the ``key`` column uses it, even when it is empty: a published row without key info
    gets no visual reward (as in Perception-R1), rather than facts from somewhere else. A row without the
    column uses its scene graph (synthetic rows); a row with neither has none.

    Args:
        sample: a data row (:mod:`vrl.types`).
        key: the column holding ``<infoK>`` annotations.
        max_items: cap on scene-graph facts (:func:`annotations_from_scene`); published annotations are
            never cut, since they were extracted to be complete.
        drop_constant: leave out scene-graph facts that hold for every row of the task (:func:`constant_facts`).

    Returns:
        m >= 0 annotations.
    """
    if key in sample:
        return tuple(parse_visual_key_info(sample[key]))
    meta = sample.get("meta")
    if isinstance(meta, str) and meta:
        return _annotations_from_meta_json(meta, max_items, drop_constant)
    if isinstance(meta, dict):
        return tuple(annotations_from_scene(meta, max_items, drop_constant))
    return ()
