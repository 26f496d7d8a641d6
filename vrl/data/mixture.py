"""Several datasets as one, each row tagged with its source and its reward spec (V-Triune's sample-level format).

V-Triune (arXiv 2505.18129) trains one policy on math, puzzle, detection, grounding, counting and OCR rows in the
same batches; each row says which verifier scores it and with which weights, and every metric is also reported per
``data_source``. :func:`build_mixture` gives any datasets that shape: row ``i`` of the mixture is a row of one
source (the sources one after the other; the prompt stream shuffles), with two fields added:

    data_source   the source's name
    reward_spec   {"verifier": <name>, "weights": {<term>: <weight>, ...}}   (weights only when given)

which :class:`vrl.rewards.routing.RoutedReward` (``key: reward_spec``) and the reward set's ``source_keys`` and
``row_weights_key`` (``reward_spec.weights``) read.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Mapping
from typing import Any


class MixedDataset:
    """Map-style concatenation of named datasets whose rows carry ``data_source`` and ``reward_spec``.

    Args:
        sources: name -> dataset (anything with ``len`` and integer indexing that yields dict rows).
        specs: name -> that source's reward spec (``{"verifier": ..., "weights": {...}}``; a bare string names
            the verifier).
    """

    def __init__(self, sources: Mapping[str, Any], specs: Mapping[str, Any]) -> None:
        self.names = list(sources)
        self.sources = [sources[n] for n in self.names]
        self.specs = [_spec(specs.get(n), n) for n in self.names]
        self.ends: list[int] = []
        total = 0
        for source in self.sources:
            total += len(source)
            self.ends.append(total)
        self.fingerprint = hashlib.sha256(
            json.dumps([[n, len(s), sp] for n, s, sp in zip(self.names, self.sources, self.specs)]).encode()
        ).hexdigest()[:16]

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        k = bisect.bisect_right(self.ends, index)
        start = self.ends[k - 1] if k else 0
        row = dict(self.sources[k][index - start])
        row["data_source"] = self.names[k]
        row["reward_spec"] = json.loads(json.dumps(self.specs[k]))  # a copy per row
        return row


def _spec(spec: Any, name: str) -> dict:
    if isinstance(spec, str):
        return {"verifier": spec}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("verifier"), str):
        raise ValueError(f"mixture source {name!r}: its spec needs a verifier name, got {spec!r}")
    out = {"verifier": spec["verifier"]}
    if spec.get("weights"):
        out["weights"] = {str(k): float(v) for k, v in spec["weights"].items()}
    return out


def build_mixture(sources: Mapping[str, Any], specs: Mapping[str, Any]) -> MixedDataset:
    """The datasets of ``sources`` as one (``data=v_triune_mixture``); see :class:`MixedDataset`.

    Args:
        sources: name -> dataset (in a config: each a ``_target_`` node, e.g. ``build_synthetic`` or
            ``build_detection``).
        specs: name -> reward spec: the verifier name, or ``{verifier: ..., weights: {accuracy: 1.0, format: 0.1}}``.
    """
    missing = sorted(set(sources) - set(specs))
    if missing:
        raise ValueError(f"mixture: sources {missing} have no spec (specs: {sorted(specs)})")
    if not sources:
        raise ValueError("mixture: no sources")
    return MixedDataset(sources, specs)
