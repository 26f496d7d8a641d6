"""Unknown group options on the command line: one line naming group, value and options, exit 2, no Hydra dump."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vrl.cli import check_group_overrides, group_options
from vrl.errors import ConfigError

# every preset in conf/method (sessions add methods; the message lists them all)
METHODS = ", ".join(sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "method").glob("*.yaml")))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["+method=vpp"], f"+method=vpp: no option 'vpp' in group 'method' (options: {METHODS})"),
        (["+method=[vppo,nope]"], "no option 'nope' in group 'method'"),
        (["--multirun", "+method=grpo,drgrpo"], "no option 'drgrpo' in group 'method'"),
        (["model=foo"], "model=foo: no option 'foo' in group 'model'"),
        (["method=vppo"], "method=vppo: 'method' is not in the defaults list; append it with +method=vppo"),
        (["+method=perception_r1", "judge@reward.visual.judge=htp"], "no option 'htp' in group 'judge'"),
    ],
)
def test_bad_option_names_group_value_and_options(argv, message):
    with pytest.raises(ConfigError) as err:
        check_group_overrides(argv)
    assert message in str(err.value)


def test_good_lines_pass():
    for argv in (
        ["+method=[vppo,pearl]", "seed=1"],
        ["--multirun", "+method=grpo,dr_grpo", "seed=1,2"],
        ["+method=perception_r1", "judge@reward.visual.judge=http"],  # the preset adds judge to the defaults
        ["kl=null", "data.train.num_samples=8", "+reward.x={_target_:vrl.rewards.Accuracy}"],
    ):
        check_group_overrides(argv)
    assert "vppo" in group_options("method") and group_options("no_such_group") is None


def test_cli_prints_one_line_and_exits_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-P", "-m", "vrl", "+method=vpp"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"[vrl] config error: +method=vpp: no option 'vpp' in group 'method' "
                                       f"(options: {METHODS})"]  # fmt: skip
