"""Read a ``_target_``'s signature from its source file, without importing it.

Why: a config typo should be reported before torch, transformers, lightning and mlflow are imported (seconds on
a quiet machine, far more on a busy one). A config names its constructors by dotted path; for most of them the
parameters can be read from the syntax tree of the file that defines them. This module follows
``from x import Name`` re-exports (absolute and relative) and reads ``def``/``class`` headers, dataclass fields
and annotations. When it cannot be sure (a name built at import time, a class whose ``__init__`` is inherited,
a lazy ``__getattr__``), it returns ``None`` and the caller falls back to importing the target.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_MAX_HOPS = 8  # re-export chains longer than this are not followed (real ones are 1-3 long)


@dataclass(frozen=True)
class StaticSignature:
    """Parameters of a constructor as written in its source.

    Attributes:
        target: the dotted path that was looked up.
        params: parameter names in order (without ``self``/``cls``, ``*args`` and ``**kwargs``).
        annotations: parameter name -> annotation expression (``ast`` node), for the annotated ones.
        var_keyword: whether it takes ``**kwargs`` (then any key is accepted).
    """

    target: str
    params: tuple[str, ...]
    annotations: dict[str, ast.expr]
    var_keyword: bool


def static_signature(target: str) -> StaticSignature | None:
    """The signature of ``target`` (``pkg.module.Name``), or ``None`` if it cannot be read without importing."""
    module, _, name = target.rpartition(".")
    if not module:
        return None
    return _resolve(module, name, 0)


def _resolve(module: str, name: str, hops: int) -> StaticSignature | None:
    if hops > _MAX_HOPS:
        return None
    tree = _module_tree(module)
    if tree is None:
        # ``pkg.module.Class.method``: the last module part may be a class
        parent, _, cls = module.rpartition(".")
        return None if not parent or hops else _method_of(parent, cls, name)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return _from_function(f"{module}.{name}", node, skip_first=False)
        if isinstance(node, ast.ClassDef) and node.name == name:
            return _from_class(f"{module}.{name}", node)
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = _absolute(module, node, _is_package(module))
                    found = _resolve(source, alias.name, hops + 1) if source else None
                    if found is None and source:  # ``from pkg import submodule`` is not a constructor
                        return None
                    return found
    return None  # assigned, built dynamically or served by a module __getattr__: import it instead


def _method_of(module: str, cls: str, method: str) -> StaticSignature | None:
    tree = _module_tree(module)
    for node in tree.body if tree else []:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == method:
                    static = any(_decorator_name(d) == "staticmethod" for d in item.decorator_list)
                    return _from_function(f"{module}.{cls}.{method}", item, skip_first=not static)
    return None


def _from_class(target: str, node: ast.ClassDef) -> StaticSignature | None:
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            return _from_function(target, item, skip_first=True)
    if not any(_decorator_name(d) == "dataclass" for d in node.decorator_list) or node.bases:
        return None  # an inherited __init__ (or a generated one we do not model)
    params, annotations = [], {}
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            if "ClassVar" in ast.unparse(item.annotation) or _is_field_without_init(item.value):
                continue
            params.append(item.target.id)
            annotations[item.target.id] = item.annotation
    return StaticSignature(target, tuple(params), annotations, var_keyword=False)


def _from_function(target: str, node: ast.FunctionDef | ast.AsyncFunctionDef, skip_first: bool) -> StaticSignature:
    args = node.args
    positional = [*args.posonlyargs, *args.args][1 if skip_first else 0 :]
    named = [*positional, *args.kwonlyargs]
    annotations = {a.arg: a.annotation for a in named if a.annotation is not None}
    return StaticSignature(target, tuple(a.arg for a in named), annotations, var_keyword=args.kwarg is not None)


def _is_field_without_init(value: ast.expr | None) -> bool:
    if not (isinstance(value, ast.Call) and _decorator_name(value.func) == "field"):
        return False
    return any(k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False for k in value.keywords)


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    """The absolute module an ``from ... import`` in ``module`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module
    package = (module if is_package else module.rpartition(".")[0]).split(".")
    if node.level - 1 >= len(package):
        return None
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _is_package(module: str) -> bool:
    path = _module_file(module)
    return path is not None and path.name == "__init__.py"


@lru_cache(maxsize=256)
def _module_tree(module: str) -> ast.Module | None:
    path = _module_file(module)
    if path is None:
        return None
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


@lru_cache(maxsize=256)
def _module_file(module: str) -> Path | None:
    """The ``.py`` file of ``module``, found by walking the package folders (no package ``__init__`` runs)."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level lookup imports nothing
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for folder in spec.submodule_search_locations or []:
        path = Path(folder).joinpath(*rest[:-1])
        for candidate in (path / rest[-1] / "__init__.py", path / f"{rest[-1]}.py"):
            if candidate.is_file():
                return candidate
    return None
