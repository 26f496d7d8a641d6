"""Per-sample verifier routing and per-source metrics (V-Triune's sample-level formatting and source-level
monitoring, arXiv 2505.18129; others.md §13 and cross-cutting note 1).

:class:`RoutedReward` is one reward term that scores each row with the verifier the row names: a batch can mix
math, detection, counting and OCR rows, each checked by its own term. The row field is read by a dotted path
(``verifier``, ``reward_spec.verifier``, V-Triune's ``reward_model.verifier``); when it holds a mapping, its
``verifier`` entry names the verifier. Each named sub-term is called once per batch on its rows, so a sub-term
keeps batch efficiency, and its failures are the reward set's to contain as any term's.

Per-source metrics: ``RewardSet(source_keys=[...])`` groups every call's rows by those row fields and reports,
per value, the mean total reward and the mean of each component (:func:`source_sums`, ``pop_stats``):
``by_data_source/<value>/reward``, ``by_data_source/<value>/accuracy``, ``by_verifier/<value>/...``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]")  # MLflow metric names: alphanumerics, _ - . space and / (a separator)


def row_value(sample: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of a row (``reward_spec.verifier``), or None when a part is missing."""
    value: Any = sample
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def metric_part(value: Any) -> str:
    """A row value as one segment of a metric name (characters MLflow refuses, and ``/``, become ``_``)."""
    return _UNSAFE.sub("_", str(value))[:80] or "_"


def source_sums(
    samples: Sequence[Mapping[str, Any]],
    total: torch.Tensor,
    components: Mapping[str, torch.Tensor],
    keys: Sequence[str],
) -> dict[str, list[float]]:
    """Per source value, the sums and count behind the per-source means: ``{metric prefix: [count, total sum,
    component sums...]}`` with components in ``components`` order. The prefix is ``by_<last key part>/<value>``;
    rows without the field are left out."""
    names = list(components)
    out: dict[str, list[float]] = {}
    for i, sample in enumerate(samples):
        for key in keys:
            value = row_value(sample, key) if isinstance(sample, Mapping) else None
            if value is None:
                continue
            if isinstance(value, Mapping):  # a spec mapping: its verifier names it
                value = value.get("verifier")
            prefix = f"by_{key.rsplit('.', 1)[-1]}/{metric_part(value)}"
            acc = out.setdefault(prefix, [0.0] * (2 + len(names)))
            acc[0] += 1
            acc[1] += float(total[i])
            for k, name in enumerate(names):
                acc[2 + k] += float(components[name][i])
    return out


def source_metrics(sums: Mapping[str, list[float]], names: Sequence[str]) -> dict[str, float]:
    """Means from :func:`source_sums`: ``<prefix>/reward``, ``<prefix>/<component>`` and ``<prefix>/count``."""
    out: dict[str, float] = {}
    for prefix, acc in sums.items():
        count = acc[0]
        out[f"{prefix}/count"] = count
        out[f"{prefix}/reward"] = acc[1] / count
        for k, name in enumerate(names):
            out[f"{prefix}/{name}"] = acc[2 + k] / count
    return out


def source_means(
    samples: Sequence[Mapping[str, Any]],
    total: torch.Tensor,
    components: Mapping[str, torch.Tensor],
    keys: Sequence[str],
    prefix: str = "val/",
) -> dict[str, tuple[float, int]]:
    """Per-source means of one batch with their row counts, ``{prefix + metric: (mean, count)}``: what validation
    logs (``self.log(name, mean, batch_size=count, on_epoch=True)`` averages them over the epoch by count)."""
    names = list(components)
    out: dict[str, tuple[float, int]] = {}
    for source, acc in source_sums(samples, total, components, keys).items():
        count = int(acc[0])
        out[f"{prefix}{source}/reward"] = (acc[1] / count, count)
        for k, name in enumerate(names):
            out[f"{prefix}{source}/{name}"] = (acc[2 + k] / count, count)
    return out


class RoutedReward:
    """Score each row with the sub-term its row field names (V-Triune's per-sample verifier).

    Args:
        verifiers: verifier name -> reward term (``_target_`` nodes, or null to switch one off).
        key: dotted path of the row field naming the verifier; a mapping there is read at ``verifier``.
        default: the verifier for rows without the field (None: such a row is an error, contained by the
            reward set: that row gets the set's default and ``reward/errors/<term>`` counts it).
        weight: multiplier applied by the reward set.
        name: key under which the reward set logs this term.

    A row naming a verifier that is not configured is an error of that row (contained the same way), with the
    configured names in the message. Terms that use the reward context read it from the rows, which this term
    passes through unchanged.
    """

    def __init__(
        self,
        verifiers: Mapping[str, Any],
        key: str = "reward_spec",
        default: str | None = None,
        weight: float = 1.0,
        name: str = "routed",
    ) -> None:
        self.verifiers = {n: t for n, t in verifiers.items() if t is not None}
        if not self.verifiers:
            raise ValueError("RoutedReward: no verifiers configured")
        if default is not None and default not in self.verifiers:
            raise ValueError(f"RoutedReward: default {default!r} is not a verifier ({sorted(self.verifiers)})")
        self.key, self.default, self.weight, self.name = key, default, float(weight), name

    def verifier_of(self, sample: Mapping[str, Any]) -> str:
        """The verifier name of a row.

        Raises:
            ValueError: the row names none (and there is no default) or names one that is not configured.
        """
        value = row_value(sample, self.key)
        if isinstance(value, Mapping):
            value = value.get("verifier")
        if value is None:
            if self.default is None:
                raise ValueError(f"sample uid={sample.get('uid')!r} has no {self.key!r} naming its verifier")
            return self.default
        if value not in self.verifiers:
            raise ValueError(
                f"sample uid={sample.get('uid')!r} names verifier {value!r}; configured: {sorted(self.verifiers)}"
            )
        return str(value)

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        routes: dict[str, list[int]] = {}
        for i, sample in enumerate(samples):
            routes.setdefault(self.verifier_of(sample), []).append(i)
        out = [0.0] * len(responses)
        for verifier, idx in routes.items():
            values = list(self.verifiers[verifier]([responses[i] for i in idx], [samples[i] for i in idx]))
            if len(values) != len(idx):
                raise ValueError(f"verifier {verifier!r} returned {len(values)} values for {len(idx)} responses")
            for i, value in zip(idx, values):
                out[i] = float(value)
        return out

    def pop_stats(self) -> dict[str, float]:
        """The sub-terms' own counters (a judge's failures), when they keep any."""
        stats: dict[str, float] = {}
        for term in self.verifiers.values():
            if callable(getattr(term, "pop_stats", None)):
                stats |= term.pop_stats()
        return stats
