"""Q-Insight's validation metrics: PLCC and SRCC between the predicted and the ground-truth quality scores.

Image-quality models are judged by correlation with the scores (Pearson's linear correlation, PLCC, and
Spearman's rank correlation, SRCC) rather than by hit rate. The score term (:class:`vrl.rewards.q_insight.ScoreHit`)
keeps the pairs of validation calls; :class:`QualityCorrelation`, a Lightning callback, gathers them at the end of
each validation epoch from every term of the reward set (routed sub-terms included) and logs

    val/plcc, val/srcc       over the responses whose rating parsed (``scipy.stats.pearsonr`` / ``spearmanr``)
    val/rating_parsed        the share of score rows whose rating parsed

Correlations need two parsed pairs with a spread on both sides; otherwise 0.0 is logged and ``val/rating_parsed``
tells why (a random policy rarely writes a rating at all). Pairs are this rank's (DDP:
each rank logs its own shard's, Lightning averages the logged values).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L


def correlations(predicted: Sequence[float], truth: Sequence[float]) -> tuple[float, float]:
    """(PLCC, SRCC) of the pairs; 0.0 for either when fewer than two pairs or a side without spread."""
    from scipy.stats import pearsonr, spearmanr

    if len(predicted) < 2 or len(set(predicted)) < 2 or len(set(truth)) < 2:
        return 0.0, 0.0
    plcc, srcc = float(pearsonr(predicted, truth)[0]), float(spearmanr(predicted, truth)[0])
    return (plcc if math.isfinite(plcc) else 0.0), (srcc if math.isfinite(srcc) else 0.0)


def score_terms(reward: Any) -> list[Any]:
    """The terms of a reward set (and of its routed terms) that keep validation pairs (``pop_val_pairs``)."""
    found, stack = [], list(getattr(reward, "terms", {}).values())
    while stack:
        term = stack.pop()
        if callable(getattr(term, "pop_val_pairs", None)):
            found.append(term)
        stack.extend(getattr(term, "verifiers", {}).values())
    return found


class QualityCorrelation(L.Callback):
    """Logs PLCC / SRCC of the quality ratings at the end of every validation epoch (module docstring)."""

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for term in score_terms(pl_module.reward):  # pairs left by a sanity check or an aborted epoch
            term.pop_val_pairs()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pairs = [pair for term in score_terms(pl_module.reward) for pair in term.pop_val_pairs()]
        if not pairs:
            return
        parsed = [(p, t) for p, t in pairs if p is not None]
        plcc, srcc = correlations([p for p, _ in parsed], [t for _, t in parsed])
        pl_module.log("val/plcc", plcc)
        pl_module.log("val/srcc", srcc)
        pl_module.log("val/rating_parsed", len(parsed) / len(pairs))
