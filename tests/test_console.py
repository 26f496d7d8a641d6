"""What a run prints (vrl/console.py): parameter count, the periodic metrics line, the end-of-run summary and the
exit status of a run that stopped early."""

from __future__ import annotations

import re
import warnings

import pytest

from vrl.console import EXIT_STOPPED, ConsoleLog, metrics_line, parameter_line, policy_hint, run_summary


def test_parameter_line():
    # 8192 / 3_750_000_000 = 0.000218% -> 3 significant digits
    line = parameter_line(8192, 3_750_000_000, lora_rank=8)
    assert line == "[vrl] parameters: 8.19 K trainable of 3.75 B total (0.000218%, LoRA r=8)"
    assert parameter_line(250_000, 250_000) == "[vrl] parameters: 250 K trainable of 250 K total (100%)"


def test_metrics_line_keeps_order_and_skips_what_was_not_logged():
    labels = {"rollout/reward_mean": "reward", "train/loss": "loss", "perf/step_time_s": "s/step", "val/accuracy": "v"}
    logged = {"perf/step_time_s": 0.3125, "rollout/reward_mean": 0.61875}
    line = metrics_line(50, 250, logged, labels, elapsed=78.4)
    assert line == "[vrl] step 50/250 | reward 0.619 | 0.312 s/step | 1:18 elapsed"
    assert metrics_line(3, -1, {}, labels, None) == "[vrl] step 3"  # endless run, nothing logged yet


def test_policy_hint_tells_a_whole_model_from_an_adapter(tmp_path):
    assert policy_hint(tmp_path).startswith("AutoModelForImageTextToText.from_pretrained(dir)")
    (tmp_path / "adapter_config.json").write_text("{}")  # what save_vlm(merge_lora=False) writes
    assert policy_hint(tmp_path).startswith("a LoRA adapter: peft.PeftModel.from_pretrained(base, dir)")


def test_console_every_n_steps_must_be_non_negative():
    with pytest.raises(ValueError, match="every_n_steps"):
        ConsoleLog(every_n_steps=-1)


def _fit(compose, overrides, callbacks):
    import lightning as L

    from vrl.build import build_module, build_trainer

    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg, callbacks=callbacks)
    trainer.fit(module)
    return cfg, module, trainer


def test_a_run_prints_parameters_a_line_every_n_steps_and_a_summary(compose, tiny_overrides, capsys, tmp_path):
    console = ConsoleLog(every_n_steps=2)
    overrides = [*tiny_overrides, "trainer.max_steps=4", "model.lora.r=4"]
    cfg, module, trainer = _fit(compose, overrides, [console])
    out = capsys.readouterr().out
    assert "[vrl] parameters: 8.19 K trainable of " in out  # LoRA r=4 on the tiny model: 8192 (tests/models)
    assert "LoRA r=4" in out
    steps = re.findall(r"^\[vrl\] step (\d+)/4 \| reward .*\| .* elapsed$", out, flags=re.M)
    assert steps == ["2", "4"]  # every 2 optimizer steps of 4
    summary = run_summary(trainer, module.hooks.hooks, tmp_path, tmp_path / "policy", None, console.elapsed())
    assert summary.stopped is None
    assert re.match(r"\[vrl\] done: 4/4 steps in 0:\d\d \(\d+\.\d\d s/step\)$", summary.lines[0])
    assert summary.lines[1].startswith("[vrl] last validation: val/accuracy ")
    assert f"run directory: {tmp_path.resolve()}" in summary.text
    assert f"policy: {(tmp_path / 'policy').resolve()}" in summary.text


@pytest.mark.slow
def test_a_run_that_stops_early_says_so_and_exits_3_without_val_warnings(compose, tiny_overrides, capsys):
    from vrl.train import run

    # a 1-second time limit stops a 1000-step run after a few steps; data.val=null switches validation off
    overrides = [*tiny_overrides, "trainer.max_steps=1000", "+trainer.max_time=00:00:00:01", "data.val=null"]
    cfg = compose(overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as exit_info:
            run(cfg)
    assert exit_info.value.code == EXIT_STOPPED
    out = capsys.readouterr().out
    assert re.search(r"\[vrl\] stopped early \(trainer.max_time reached\): \d+/1000 steps", out)
    assert "ckpt_path=last (exit status 3)" in out
    assert "[vrl] last validation: none ran" in out
    assert not [w for w in caught if "across ranks is zero" in str(w.message)]


def test_a_run_stopped_by_a_callback_is_unfinished_unless_a_hook_ended_it(compose, tiny_overrides):
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import Callback

    from vrl.console import stop_reason

    class StopAfterOneStep(Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = True

    _, module, trainer = _fit(compose, [*tiny_overrides, "trainer.max_steps=3"], [StopAfterOneStep()])
    assert trainer.global_step == 1
    assert stop_reason(trainer, module.hooks.hooks) == "stopped before trainer.max_steps"
    # a hook that reports done (a curriculum whose last stage ended the run) makes the early stop the plan
    assert stop_reason(trainer, [SimpleNamespace(done=True)]) is None
