"""The package's import layers: a module may import its own layer and the ones below, never above.

Layers, lowest first (a module belongs to the longest prefix that names it):

- base: containers, errors, utilities, the Triton kernels (pure tensor functions) and the answer-text parsers
  (``vrl.rewards.extract`` imports nothing from vrl: data derives checklists with it, rewards score with it);
- data: rows, scenes, annotations, tag parsing, the prompt template (``vrl.sampler.prompts``) and the image tools
  of multi-turn rollouts (``vrl.tools``: pure image operations, which the samplers call);
  models: the VLM bundle and teacher-forced scoring;
- sampler: the samplers (``vrl.sampler``); rewards: reward terms and judges; data checks: preflight of rows against
  the reward parsers and prompt templates (above both);
- methods: method math and hooks; lit: the Lightning loop; app: config, build, train, command line.

A method module importing the loop (``methods -> lit``) or a reward importing a method is what made a new
method touch nine shared files; this test fails on the first such import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vrl

LAYERS = [
    ("base", ["vrl.types", "vrl.errors", "vrl.utils", "vrl.rewards.extract", "vrl_kernels"]),
    ("data", ["vrl.data", "vrl.sampler.prompts", "vrl.tools"]),
    ("models", ["vrl.models"]),
    ("sampler", ["vrl.sampler"]),
    ("rewards", ["vrl.rewards", "vrl.judges"]),
    ("data checks", ["vrl.data.preflight", "vrl.data.row_check"]),
    ("methods", ["vrl.methods", "vrl.hooks"]),
    ("lit", ["vrl.lit"]),
    ("app", ["vrl"]),
]


def layer_of(module: str) -> int:
    """Index of the layer whose longest matching prefix names ``module``."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise AssertionError(f"{module} is in no layer")
    return best


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
    return [(n, m) for n, m in out if m == "vrl" or m.startswith(("vrl.", "vrl_kernels"))]


def test_no_import_runs_against_the_layers():
    root = Path(vrl.__file__).parent
    bad = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        if module in ("vrl", "vrl.__main__"):
            continue
        for line, target in _imports(path):
            if layer_of(target) > layer_of(module):
                bad.append(
                    f"{path.relative_to(root.parent)}:{line} {module} ({LAYERS[layer_of(module)][0]}) imports "
                    f"{target} ({LAYERS[layer_of(target)][0]})"
                )
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_layer_of_uses_the_longest_prefix():
    assert LAYERS[layer_of("vrl.data.scene")][0] == "data"
    assert LAYERS[layer_of("vrl.data.preflight")][0] == "data checks"
    assert LAYERS[layer_of("vrl.rewards.extract")][0] == "base"
    assert LAYERS[layer_of("vrl.rewards.accuracy")][0] == "rewards"
    assert LAYERS[layer_of("vrl.build")][0] == "app"
