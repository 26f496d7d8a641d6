"""Does the config fit together? Start-time checks of settings that are each valid but do not work together.

A preset written for long responses (an overlong penalty, a tag format) stacked on a one-token experiment, a
group filter that no group of G samples can pass, a validation interval longer than the run: each of these
runs without an error and quietly does something else than intended. The rules here look only at config
facts (lengths, G, bounds, intervals), never at which method preset asked for a component, and say in one
line what to change. A contradiction that leaves nothing to learn raises ``ConfigError`` (``python -m vrl``
exits with status 2); a setting that probably is not what was meant logs a warning on the ``vrl`` logger.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from vrl.errors import ConfigError

log = logging.getLogger("vrl")


def check_fit(cfg: DictConfig) -> None:
    """Run every rule: raise ``ConfigError`` on a contradiction, log a warning on a probable mistake."""
    _check_sampling(cfg)
    _check_group_filters(cfg)
    _check_overlong_window(cfg)
    _check_tag_rewards(cfg)
    _check_validation_schedule(cfg)
    _check_lora_vision(cfg)
    _check_tool_rollouts(cfg)


def _nodes(cfg: DictConfig, group: str, cls_path: str) -> dict[str, Any]:
    """``name -> node`` of the entries of ``cfg[group]`` whose ``_target_`` is ``cls_path`` (or a subclass)."""
    cls = get_object(cls_path)
    out = {}
    for name, node in (cfg.get(group) or {}).items():
        target = node.get("_target_") if node else None
        if target:
            obj = get_object(str(target))
            if obj is cls or (isinstance(obj, type) and issubclass(obj, cls)):
                out[name] = node
    return out


def _check_sampling(cfg: DictConfig) -> None:
    """top_k = 1 is greedy decoding: the G samples of a prompt are identical and every advantage is 0."""
    sampler = cfg.get("sampler") or {}
    if sampler.get("top_k") == 1:
        raise ConfigError(
            "sampler.top_k=1 samples greedily: the G responses of a prompt are identical, so every group "
            "advantage is 0 and nothing is learned; use top_k=0 (off) or >= 2"
        )


def _binary_terms(cfg: DictConfig) -> set[str]:
    """Reward terms whose per-sample value is 0 or 1: accuracy without partial credit."""
    accuracy = _nodes(cfg, "reward", "vrl.rewards.Accuracy")
    return {name for name, node in accuracy.items() if not node.get("choice_partial_credit", False)}


def _check_group_filters(cfg: DictConfig) -> None:
    """A ``mean_in_range`` filter no group can pass: with 0/1 values a group mean is one of k/G, k = 0..G."""
    group_size = int(cfg.sampler.group_size)
    binary = _binary_terms(cfg)
    for name, node in _nodes(cfg, "hooks", "vrl.methods.filters.DynamicSampling").items():
        flt = instantiate(node)
        if flt.criterion != "mean_in_range":
            continue
        where = f"hooks.{name}"
        if flt.lo >= flt.hi:
            raise ConfigError(f"{where}: lo={flt.lo} >= hi={flt.hi}, so no group mean lies strictly between them")
        means = [k / group_size for k in range(group_size + 1)]
        impossible = [k for k in flt.keys if k in binary and not any(flt.lo < m < flt.hi for m in means)]
        if impossible and (flt.combine == "all" or len(impossible) == len(flt.keys)):
            shown = ", ".join(f"{m:.3g}" for m in means)
            raise ConfigError(
                f"{where}: no group can pass: with 0/1 {impossible[0]} and G={group_size} a group's mean is one of "
                f"{shown}, none strictly inside ({flt.lo}, {flt.hi}); raise sampler.group_size or widen lo/hi"
            )


def _check_overlong_window(cfg: DictConfig) -> None:
    """An overlong penalty whose window does not match the response cap ``sampler.max_new_tokens``."""
    cap = int(cfg.sampler.max_new_tokens)
    for name, node in _nodes(cfg, "reward", "vrl.rewards.OverlongPenalty").items():
        term = instantiate(node)
        free = term.max_len - term.cache_len  # lengths 1..free are not penalised
        where = f"reward.{name}: overlong penalty (max_len={term.max_len}, cache_len={term.cache_len})"
        if free < 1:
            log.warning(
                "%s penalises every response: even a 1-token one is inside its window, and sampler.max_new_tokens=%d"
                " allows no shorter; rewards only shift down. Raise sampler.max_new_tokens (e.g. experiment="
                "color_words) or drop the term with ~reward.%s",
                where,
                cap,
                name,
            )
        elif free >= cap:
            log.warning(
                "%s never applies: sampler.max_new_tokens=%d stops every response before its window starts at %d "
                "tokens; set reward.%s.max_len=${sampler.max_new_tokens} or drop the term",
                where,
                cap,
                free + 1,
                name,
            )
        elif term.max_len != cap:
            log.warning(
                "%s differs from sampler.max_new_tokens=%d, the length responses are cut at; usually they are equal",
                where,
                cap,
            )


def _check_tag_rewards(cfg: DictConfig) -> None:
    """A think/answer format term that no response of at most ``max_new_tokens`` tokens can satisfy."""
    cap = int(cfg.sampler.max_new_tokens)
    for name, node in _nodes(cfg, "reward", "vrl.rewards.ThinkAnswerFormat").items():
        if node.get("pattern"):  # a custom pattern: count the tags it spells out, at least one token each
            needed, what = len(re.findall(r"</?[A-Za-z][\w-]*>", str(node.pattern))), "the tags its pattern names"
        else:  # each of the four (or two) tags is at least one token, and the answer holds at least one more
            needed, what = (5 if node.get("require_think", True) else 3), "its tags and a one-token answer"
        if cap < needed:
            log.warning(
                "reward.%s can never score: %s need >= %d tokens, but sampler.max_new_tokens=%d; raise it or "
                "drop the term with ~reward.%s",
                name,
                what,
                needed,
                cap,
                name,
            )


def _check_validation_schedule(cfg: DictConfig) -> None:
    """Validation data with an interval longer than the run: no validation would ever run."""
    trainer, data = cfg.get("trainer") or {}, cfg.get("data") or {}
    interval, max_steps = trainer.get("val_check_interval"), trainer.get("max_steps")
    if not data.get("val") or trainer.get("limit_val_batches") == 0:
        return
    if isinstance(interval, int) and isinstance(max_steps, int) and 0 < max_steps < interval:
        log.warning(
            "trainer.val_check_interval=%d is longer than trainer.max_steps=%d: no validation will run; "
            "set trainer.val_check_interval=%d",
            interval,
            max_steps,
            max_steps,
        )


def _check_lora_vision(cfg: DictConfig) -> None:
    """LoRA adapters in a frozen vision tower would never train."""
    model = cfg.get("model") or {}
    lora = model.get("lora") or {}
    rank = lora.get("r", 8) if lora else 0  # load_vlm's default rank when a LoRA dict leaves r out
    if model.get("freeze_vision") and rank and lora.get("include_vision"):
        raise ConfigError(
            "model.freeze_vision=true contradicts model.lora.include_vision=true (its vision adapters would not "
            "train); drop one of them"
        )


def _check_tool_rollouts(cfg: DictConfig) -> None:
    """Tool reward terms read multi-turn trajectories; a multi-turn sampler without tools makes every call invalid."""
    sampler = cfg.get("sampler") or {}
    multi = str(sampler.get("_target_", "")) == "vrl.sampler.multi_turn.MultiTurnSampler"
    terms = [
        n
        for n, t in (cfg.get("reward") or {}).items()
        if t and str(t.get("_target_", "")).startswith("vrl.rewards.tools.")
    ]
    if terms and not multi:
        raise ConfigError(
            f"reward.{terms[0]} scores tool trajectories, but sampler={sampler.get('_target_')} makes single-turn "
            "rollouts (the tool presets set sampler=multi_turn; a later sampler override replaced it); drop the "
            "override or the term"
        )
    if multi and not sampler.get("tools") and int(sampler.get("max_turns", 0)) > 0:
        log.warning(
            "sampler=multi_turn has no tools (sampler.tools is empty): every call gets an error observation; add "
            "one, e.g. +tool@sampler.tools.crop=crop, or set sampler.max_turns=0"
        )
