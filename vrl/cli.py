"""The command line before Hydra: group options that do not exist get one line, not Hydra's search-path dump.

``+method=vpp`` (a typo), ``model=foo`` or ``method=vppo`` (a group that must be appended with ``+``) are the
commonest first-hour mistakes. Hydra reports them in a multi-line message ending in "Set the environment
variable HYDRA_FULL_ERROR=1"; here the config folder is listed (no import, milliseconds) and the message names
the group, the bad value and the options.
"""

from __future__ import annotations

from importlib.resources import files

from omegaconf import DictConfig, OmegaConf

from vrl.errors import ConfigError


def group_options(group: str) -> list[str] | None:
    """Option names of a config group (``method``, ``judge``, ``model/lora`` ...), or None if it is no group."""
    folder = files("vrl_conf").joinpath(*group.split("/"))
    if not folder.is_dir():
        return None
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def primary_keys() -> tuple[set[str], set[str]]:
    """``conf/train.yaml``'s own keys and the groups of its defaults list (read from the file, no compose)."""
    primary = OmegaConf.load(files("vrl_conf") / "train.yaml")
    groups = set()
    for entry in primary.get("defaults", []):
        name = next(iter(entry)) if isinstance(entry, DictConfig) else str(entry)
        groups.add(name.removeprefix("override ").split("@")[0].split("/")[0].strip())
    return set(primary.keys()) - {"defaults"}, groups - {"_self_"}


#: Hydra plugins behind config options (``hydra/launcher=submitit_slurm``, ``+sweep=optuna_grpo``): the word in the
#: option, the module the plugin installs, its package. Both come with ``pip install -e ".[cluster]"``.
PLUGINS = {
    "submitit": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
}


def check_plugins(argv: list[str]) -> None:
    """Raise ``ConfigError`` when an override selects a launcher or sweeper whose Hydra plugin is not installed."""
    from importlib.util import find_spec

    for arg in argv:
        key, _, value = arg.partition("=")
        if not key.lstrip("+~").startswith(("hydra/launcher", "hydra/sweeper", "sweep")):
            continue
        for word, (module, package) in PLUGINS.items():
            if word in value and find_spec(module) is None:
                raise ConfigError(f'{arg} needs the {package} package: pip install -e ".[cluster]" (or {package})')


def check_group_overrides(argv: list[str]) -> None:
    """Raise ``ConfigError`` for an override that selects a group option that does not exist.

    Args:
        argv: the command line after the program name (flags such as ``--multirun`` are skipped). Sweeps
            (``+method=grpo,dr_grpo``) and lists (``+method=[vppo,pearl]``) are checked option by option.
    """
    in_defaults = None
    # presets (+method=..., experiment=...) may add groups to the defaults list: then only Hydra can tell
    presets = any(a.startswith("+method=") or a.lstrip("+").startswith("experiment=") for a in argv)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        plus = key.startswith("+")
        group = key.lstrip("+~").split("@")[0]
        if group.startswith("hydra/"):  # Hydra's own groups (launcher, sweeper, ...; plugins add options): Hydra's
            continue
        options = group_options(group)
        if options is None or not value or value == "null":
            continue
        if not plus and not presets and not key.startswith("~"):
            in_defaults = primary_keys()[1] if in_defaults is None else in_defaults
            if group not in in_defaults:
                raise ConfigError(f"{arg}: '{group}' is not in the defaults list; append it with +{arg}")
        for choice in value.strip("[]").split(","):
            choice = choice.strip()
            if choice and choice not in options and not choice.startswith(("glob(", "choice(", "range(")):
                raise ConfigError(f"{arg}: no option '{choice}' in group '{group}' (options: {', '.join(options)})")
