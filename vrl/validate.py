"""Check a composed config before anything heavy is built (model, data, processes).

A typo or a wrong type should cost a second and name the key, not a minute of model loading followed by a
traceback from deep inside a constructor. Three passes, cheapest first:

1. every ``_target_`` node binds to its constructor (unknown keys) and plain values match the annotated
   types (``sampler.group_size=abc``). The signature is read from the constructor's source file
   (``vrl.utils.signature``), so this pass imports neither torch nor any library a target lives in; only
   targets whose signature cannot be read statically are imported;
2. the cheap method objects are built, so their own value checks run (G < 2, negative clip, ...); this
   imports torch, nothing heavier;
3. cross-group rules that no single constructor can see (filters naming reward terms that do not exist); the
   objective node, built in pass 2, checks that the kernel path can fuse the chosen loss itself.

Rules about configs that run but probably do not do what was meant log a warning on the ``vrl`` logger instead.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import logging
import os
import types
import typing
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from vrl.errors import ConfigError
from vrl.fit_checks import check_fit
from vrl.utils.signature import static_signature

__all__ = ["ConfigError", "check_keys", "check_values", "validate_config"]

log = logging.getLogger("vrl")

#: Nodes built in pass 2 (torch only). ``objective`` last: it holds the three loss axes (interpolated) and checks
#: that the fused kernel path can compute them.
CHEAP_GROUPS = ("sampler", "advantage", "policy_loss", "loss_agg", "kl", "objective")


def validate_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming the first offending key, or return silently."""
    check_values(cfg, check_keys(cfg))


def check_keys(cfg: DictConfig) -> list[tuple[str, dict]]:
    """Pass 1 without importing any target: names and types of every key whose constructor can be read from
    source, the top-level keys and the plain blocks, and the ``_target_`` allow-list. Returns the
    ``(path, node)`` pairs whose signature could not be read that way, for ``check_values``."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key}: required value is missing (???); set it, e.g. {err.full_key}=...") from err
    except OmegaConfBaseException as err:  # a bad interpolation, e.g. ${oc.env:...} without a default
        raise ConfigError(f"{getattr(err, 'full_key', '') or 'config'}: {err.msg}") from err
    _check_top_level(tree)
    for block, (targets, types_) in PLAIN_BLOCKS.items():
        _check_plain_block(block, tree.get(block), targets, types_)
    _check_callbacks(tree.get("callbacks"))
    aliases = _aliases(cfg)
    nodes = [(path, node) for path, node in _targets(tree) if not _under(path, aliases)]
    allowed = allowed_target_prefixes()
    for path, node in nodes:
        target = str(node["_target_"])
        if not target.startswith(allowed):
            raise ConfigError(
                f"{path}._target_: {target!r} is outside the packages vrl imports from configs "
                f"({', '.join(p.rstrip('.') for p in allowed)}); to allow your own package, "
                f"export {ALLOW_ENV}=<package>[,<package>...]"
            )
    return [(path, node) for path, node in nodes if not _check_node_static(path, node)]


def _aliases(cfg: Any, path: str = "") -> set[str]:
    """Paths whose value is an interpolation of another node (``objective.policy_loss: ${policy_loss}``): they
    are checked where they are defined, so an error names the key a user sets."""
    out: set[str] = set()
    if not isinstance(cfg, DictConfig):
        return out
    for key in cfg:
        where = f"{path}.{key}".lstrip(".")
        if OmegaConf.is_interpolation(cfg, key):
            out.add(where)
        else:
            out |= _aliases(cfg._get_node(key), where)
    return out


def _under(path: str, prefixes: set[str]) -> bool:
    return any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in prefixes)


def _check_callbacks(node: Any) -> None:
    """``callbacks`` (conf/callbacks) is a mapping of named ``_target_`` nodes; null switches one off."""
    if node is None:
        return
    if not isinstance(node, dict):
        raise ConfigError(f"callbacks: expected a mapping of named callbacks, got {node!r}")
    for name, entry in node.items():
        if entry is not None and not (isinstance(entry, dict) and "_target_" in entry):
            raise ConfigError(f"callbacks.{name}: expected a node with a _target_ (or null to switch it off)")


#: Packages whose callables a config may name in ``_target_``. Hydra imports and calls whatever a config
#: names, so a config from elsewhere could otherwise run any function on this machine; user code is one
#: explicit opt-in away: ``export VRL_ALLOWED_TARGETS=mypkg`` (comma-separated package names).
ALLOWED_TARGETS = ("vrl", "vrl_kernels", "torch", "lightning", "transformers", "peft", "datasets")
ALLOW_ENV = "VRL_ALLOWED_TARGETS"


def allowed_target_prefixes() -> tuple[str, ...]:
    extra = [p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]
    return tuple(f"{name}." for name in (*ALLOWED_TARGETS, *extra))


#: The run's own top-level keys (read by ``vrl.train`` and ``vrl.build``) and their types.
TOP_LEVEL = {
    "seed": int,
    "run_name": (str, type(None)),
    "output_dir": str,
    "ckpt_every": int,  # alias of callbacks.checkpoints.every_n_steps
    "ckpt_path": (str, type(None)),
    "save_policy": bool,
    "merge_lora": bool,
    "objective": dict,  # vrl.lit.loss.Objective (a _target_ node, checked with the others)
    "callbacks": (dict, type(None)),  # conf/callbacks: named _target_ nodes
    "extract_judge": dict,  # `vrl eval --extract-judge NAME` adds it (+judge@extract_judge=NAME): a judge node
}

#: Plain blocks (no ``_target_``) -> the constructors their keys reach, and keys with their own types.
PLAIN_BLOCKS = {
    "update": (("vrl.lit.rl_module.RLModule",), {}),
    "data_loader": ((), {"batch_size": int, "val_batch_size": int}),  # -> RLModule(batch_size, val_batch_size)
}


def _top_level_names() -> set[str]:
    """Keys ``conf/train.yaml`` may hold: its own keys and its defaults-list groups."""
    from vrl.cli import primary_keys

    own, groups = primary_keys()
    return {*own, *groups, *TOP_LEVEL}


def _check_top_level(tree: dict) -> None:
    known = _top_level_names()
    for key, value in tree.items():
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            also = f"; did you mean {hint[0]}?" if hint else ""
            raise ConfigError(f"{key}: unknown top-level key{also} (a typo, or a group that is not installed)")
        if key in TOP_LEVEL and not _is(value, TOP_LEVEL[key]):
            raise ConfigError(f"{key}: expected {_names(TOP_LEVEL[key])}, got {value!r} ({type(value).__name__})")
    if tree.get("ckpt_every", 0) < 0:
        raise ConfigError(f"ckpt_every must be >= 0 (0 = only at the end and on signals), got {tree['ckpt_every']}")


def _check_plain_block(block: str, node: Any, targets: tuple[str, ...], types_: dict[str, Any]) -> None:
    if node is None:
        return
    if not isinstance(node, dict):
        raise ConfigError(f"{block}: expected a mapping of settings, got {node!r}")
    sigs = [sig for sig in (static_signature(t) for t in targets) if sig is not None]
    valid = {*types_, *(name for sig in sigs for name in sig.params)}
    for key, value in node.items():
        if key not in valid:
            hint = difflib.get_close_matches(key, sorted(valid), n=1)
            also = f"; did you mean {block}.{hint[0]}?" if hint else ""
            raise ConfigError(f"{block}.{key}: unknown key{also} (valid: {', '.join(sorted(valid))})")
        if key in types_:
            if not _is(value, types_[key]):
                raise ConfigError(f"{block}.{key}: expected {_names(types_[key])}, got {value!r}")
            continue
        hint = next((sig.annotations[key] for sig in sigs if key in sig.annotations), None)
        if hint is not None and not _matches_ast(value, hint):
            raise ConfigError(f"{block}.{key}: expected {ast.unparse(hint)}, got {value!r} ({type(value).__name__})")


def _is(value: Any, types_: type | tuple[type, ...]) -> bool:
    """``isinstance`` where a bool is not an int (``save_policy: 1`` and ``seed: true`` are mistakes)."""
    types_ = types_ if isinstance(types_, tuple) else (types_,)
    return isinstance(value, types_) and (bool in types_ or not isinstance(value, bool))


def _names(types_: Any) -> str:
    types_ = types_ if isinstance(types_, tuple) else (types_,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types_)


def check_values(cfg: DictConfig, unread: list[tuple[str, dict]]) -> None:
    """Passes 1 (for the ``unread`` nodes, by importing them), 2 and 3; imports torch."""
    for path, node in unread:
        _check_node(path, node)
    for group in CHEAP_GROUPS:
        if cfg.get(group):
            try:
                instantiate(cfg[group])
            except Exception as err:  # noqa: BLE001 - re-raised with the key named
                raise ConfigError(f"{group}: {_root_cause(err)}") from err
    _check_plain_values(cfg)
    _check_cross_group(cfg)
    _run_own_checks(cfg)
    check_fit(cfg)  # settings that are each valid but do not work together (vrl/fit_checks.py)


def _check_plain_values(cfg: DictConfig) -> None:
    """Values of the plain blocks, which no constructor sees before the model is built; and the optimizer's own
    checks (torch's ``Invalid learning rate`` ...), run on a stand-in parameter."""
    update = cfg.get("update") or {}
    for key in ("ppo_epochs", "micro_batch_size", "mini_batch_size", "max_bad_steps", "max_empty_steps"):
        if update.get(key) is not None and update[key] < 1:
            raise ConfigError(f"update.{key} must be >= 1, got {update[key]}")
    if update.get("max_grad_norm") is not None and update.max_grad_norm <= 0:
        raise ConfigError(f"update.max_grad_norm must be > 0 (or null: no clipping), got {update.max_grad_norm}")
    for key in ("batch_size", "val_batch_size"):
        if (cfg.get("data_loader") or {}).get(key, 1) < 1:
            raise ConfigError(f"data_loader.{key} must be >= 1, got {cfg.data_loader[key]}")
    if cfg.get("optimizer"):
        import torch

        try:
            instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
        except Exception as err:  # noqa: BLE001 - re-raised with the group named
            raise ConfigError(f"optimizer: {_root_cause(err)}") from err


def _targets(node: Any, path: str = ""):
    if isinstance(node, dict):
        if "_target_" in node:
            yield path.lstrip("."), node
        for key, value in node.items():
            yield from _targets(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}[{i}]")


def _check_node_static(path: str, node: dict) -> bool:
    """Check a node against its constructor's source; ``False`` when the signature cannot be read that way."""
    sig = static_signature(str(node["_target_"]))
    if sig is None:
        return False
    for key, value in node.items():
        if key.startswith("_"):
            continue
        if key not in sig.params and not sig.var_keyword:
            raise ConfigError(f"{path}.{key}: unknown key for {node['_target_']} (valid: {', '.join(sig.params)})")
        hint = sig.annotations.get(key)
        if hint is not None and not (isinstance(value, dict) and "_target_" in value) and not _matches_ast(value, hint):
            raise ConfigError(f"{path}.{key}: expected {ast.unparse(hint)}, got {value!r} ({type(value).__name__})")
    return True


def _matches_ast(value: Any, hint: ast.expr) -> bool:
    """``_matches`` for an annotation read from source: plain scalars, ``X | None``, ``Optional``/``Union``,
    and containers are judged; any other annotation passes."""
    if isinstance(hint, ast.Constant) and isinstance(hint.value, str):  # a quoted annotation
        try:
            hint = ast.parse(hint.value, mode="eval").body
        except SyntaxError:
            return True
    if isinstance(hint, ast.Constant) and hint.value is None:
        return value is None
    if isinstance(hint, ast.BinOp) and isinstance(hint.op, ast.BitOr):
        return _matches_ast(value, hint.left) or _matches_ast(value, hint.right)
    name = hint.attr if isinstance(hint, ast.Attribute) else getattr(hint, "id", None)
    if isinstance(hint, ast.Subscript):
        outer = hint.value.attr if isinstance(hint.value, ast.Attribute) else getattr(hint.value, "id", "")
        args = hint.slice.elts if isinstance(hint.slice, ast.Tuple) else [hint.slice]
        if outer == "Optional":
            return value is None or _matches_ast(value, args[0])
        if outer == "Union":
            return any(_matches_ast(value, a) for a in args)
        name = outer
    plain = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
    containers = {"list": list, "List": list, "tuple": tuple, "Tuple": tuple, "Sequence": list, "dict": dict}
    containers |= {"Dict": dict, "Mapping": dict}
    if name in plain:
        return _matches(value, plain[name])
    if name in containers:
        return _matches(value, containers[name])
    return True


def _check_node(path: str, node: dict) -> None:
    try:
        target = get_object(node["_target_"])
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"{path}._target_: cannot import {node['_target_']!r} ({err})") from err
    signature = inspect.signature(target)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip type checks, keep name checks
        hints = {}
    for key, value in node.items():
        if key.startswith("_"):
            continue
        if key not in signature.parameters and not accepts_any:
            valid = ", ".join(k for k in signature.parameters if k not in ("self", "args", "kwargs"))
            raise ConfigError(f"{path}.{key}: unknown key for {node['_target_']} (valid: {valid})")
        if key in hints and not (isinstance(value, dict) and "_target_" in value) and not _matches(value, hints[key]):
            raise ConfigError(
                f"{path}.{key}: expected {_type_name(hints[key])}, got {value!r} ({type(value).__name__})"
            )


def _matches(value: Any, hint: Any) -> bool:
    """Conservative type check: only plain scalars and containers are judged; anything else passes."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, typing.Mapping) or hint is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err)


def _provided_keys(hooks: Any) -> set[str]:
    """Per-sequence signals hooks add next to the reward terms (a hook class's ``provides``)."""
    out: set[str] = set()
    for hook in (hooks or {}).values():
        if hook and "_target_" in hook:
            out |= set(getattr(get_object(hook["_target_"]), "provides", ()))
    return out


def _run_own_checks(cfg: DictConfig) -> None:
    """Rules a method or reward carries itself: a hook's or reward term's class may define
    ``check(cfg, path)``, which raises ``ConfigError`` (or warns) about settings in other groups that do not
    work with it (a filter a later preset overwrote, a reward weight the advantage cancels). So validation
    never names a method."""
    for group in ("hooks", "reward"):
        for name, node in (cfg.get(group) or {}).items():
            if node and node.get("_target_"):
                check = getattr(get_object(node["_target_"]), "check", None)
                if callable(check):
                    check(cfg, f"{group}.{name}")


def _check_cross_group(cfg: DictConfig) -> None:
    terms = {name for name, node in (cfg.get("reward") or {}).items() if node} | _provided_keys(cfg.get("hooks"))
    for name, hook in (cfg.get("hooks") or {}).items():
        for key in (hook or {}).get("keys", []) or []:
            if key != "reward" and key not in terms:
                have = ", ".join(["reward", *sorted(terms)])
                raise ConfigError(f"hooks.{name}.keys: {key!r} is not a configured reward term (have: {have})")
