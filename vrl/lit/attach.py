"""Model-based judges as parts of the training module (the project's design: policy, reference and reward models
are all Lightning modules of one ``RLModule``).

A reward term, hook or advantage estimator may hold a judge with a model of its own (``LocalJudge``:
``module()``) or one that uses the policy (``PolicyJudge``: ``bind_policy(vlm)``). At setup the loop finds
them (:func:`find_models`) and

- registers every judge model as a frozen submodule under ``RLModule.judges``: Lightning moves it to the rank's
  device with the policy, DDP keeps one copy per rank (frozen parameters take no part in gradient sync), FSDP
  sees it, and checkpoints leave it out (they keep trainable weights only; the judge is rebuilt from its source,
  its ``model`` path or config, on resume);
- binds every policy judge to the policy bundle: the same weights, no copy.

A term run in a reward worker process (``reward_sandbox`` with ``isolate=process``) holds a pickled copy the
module cannot see: model-based judges belong in-process terms.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

#: How deep the walk looks below a root (reward set -> terms -> term -> judge is 3; a curriculum hook's stage
#: rewards are deeper: hooks -> list -> hook -> stages -> stage -> reward set -> terms -> term -> judge).
MAX_DEPTH = 8
#: Longer lists and mappings (rows a hook keeps, say) are not searched: judges sit in small containers.
MAX_ITEMS = 256


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, (Mapping, list, tuple)) and len(obj) > MAX_ITEMS:
        return
    if isinstance(obj, Mapping):
        yield from ((str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        yield from ((str(i), v) for i, v in enumerate(obj))
    elif type(obj).__module__.startswith("vrl.") and hasattr(obj, "__dict__"):
        yield from vars(obj).items()


def _walk(name: str, obj: Any, depth: int, seen: set[int]) -> Iterator[tuple[str, Any]]:
    if id(obj) in seen or isinstance(obj, torch.nn.Module) or depth > MAX_DEPTH:
        return
    seen.add(id(obj))
    if callable(getattr(obj, "module", None)) or callable(getattr(obj, "bind_policy", None)):
        yield name, obj
    for key, child in _children(obj):
        if not key.startswith("_"):
            yield from _walk(f"{name}.{key}" if name else key, child, depth + 1, seen)


def find_models(roots: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(dotted path, object) of every judge-like object below ``roots`` (``module()`` or ``bind_policy``)."""
    seen: set[int] = set()
    return [found for name, root in roots.items() for found in _walk(name, root, 0, seen)]


def attach_models(roots: Mapping[str, Any], vlm: Any) -> torch.nn.ModuleDict:
    """Bind the policy judges below ``roots`` to ``vlm`` and return the other judges' models, frozen, keyed by
    their path (dots as ``__``), for the module to register."""
    models = torch.nn.ModuleDict()
    for path, obj in find_models(roots):
        if callable(getattr(obj, "bind_policy", None)):
            obj.bind_policy(vlm)
        if callable(getattr(obj, "module", None)):
            model = obj.module()
            if isinstance(model, torch.nn.Module):
                models[path.replace(".", "__")] = model.eval().requires_grad_(False)
    return models
