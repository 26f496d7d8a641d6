"""The tool-use warm start (``+curriculum=zoom_warm_start``) on the tiny model: SFT steps on scripted crop traces
replayed through the multi-turn sampler, then RL with the tool; resume inside the SFT stage is exact."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer

S = "hooks.curriculum.stages."
# 2 SFT steps of 2 scripted traces each, then RL; RL turns are cut to 4 tokens (the replay ignores the per-turn cap)
ZOOM = [
    "data=zoom",
    "+method=zoom",
    "+curriculum=zoom_warm_start",
    "trainer.limit_val_batches=0",
    "sampler.group_size=2",
    S + "warm.after_steps=2",
    S + "warm.rejection.max_prompts=8",
]


class Record(L.Callback):
    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        sched = module.hooks.hooks[0]
        if sched.done:
            return
        m = trainer.callback_metrics
        keys = ("sft/loss", "sft/tool_calls_per_trace", "sft/invalid_calls_per_trace", "rollout/reward_mean")
        self.steps.append({"stage": sched.index} | {k: float(m[k]) for k in keys if k in m})


def _train(compose, overrides, ckpt_path=None):
    cfg = compose(overrides + ([f"ckpt_path={ckpt_path}"] if ckpt_path else []))
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    rec = Record()
    trainer = build_trainer(cfg, callbacks=[rec])
    trainer.fit(module, ckpt_path=cfg.ckpt_path)
    return module, rec


@pytest.mark.slow
def test_sft_on_replayed_tool_traces_then_rl_and_an_exact_resume_inside_sft(compose, tiny_overrides, tmp_path):
    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "trainer.max_steps"))]
    base += ZOOM + ["ckpt_every=1"]
    straight, full = _train(compose, base + [f"output_dir={tmp_path}/a", "trainer.max_steps=3"])
    assert [s["stage"] for s in full.steps] == [0, 0, 1]
    for step in full.steps[:2]:  # every trace made its one valid call; the loss is the policy turns' NLL
        assert step["sft/tool_calls_per_trace"] == 1.0 and step["sft/invalid_calls_per_trace"] == 0.0
        assert step["sft/loss"] > 0
    assert "rollout/reward_mean" in full.steps[2]
    kept = straight.hooks.hooks[0].kept[0]
    assert len(kept) == 8 and all(len(e[1]) == 2 and e[1][0].startswith("<tool_call>") for e in kept)
    out, ckpt = f"output_dir={tmp_path}/b", tmp_path / "b" / "checkpoints" / "last.ckpt"
    _, first = _train(compose, base + [out, "trainer.max_steps=1"])  # ends inside the SFT stage
    state = torch.load(ckpt, weights_only=True)["vrl"]["hooks"]["curriculum"]
    assert state["index"] == 0 and state["kept"][0] == [list(e) for e in kept]  # traces as plain lists
    resumed, second = _train(compose, base + [out, "trainer.max_steps=3"], ckpt_path=ckpt)
    assert first.steps + second.steps == full.steps
    a, b = dict(straight.policy.named_parameters()), dict(resumed.policy.named_parameters())
    assert not [n for n in a if not torch.equal(a[n], b[n])], "weights differ after resume"
