"""STIC on the tiny model: self-built DPO pairs, then description-infused SFT, as one staged run; resume is exact
inside the DPO stage (its pair records travel in the checkpoint)."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from PIL import Image

from vrl.build import build_module, build_trainer

S = "hooks.curriculum.stages."
# 4 images -> at most 4 pairs, 2 per DPO step; 2 described questions, 2 per SFT step.
SHORT = [
    "+method=stic",
    "trainer.limit_val_batches=0",
    S + "pref.preference.max_prompts=4",
    S + "pref.preference.batch_size=2",
    S + "pref.preference.pairs.max_new_tokens=6",
    S + "describe.rejection.max_prompts=2",
    S + "describe.rejection.batch_size=2",
    S + "describe.rejection.max_new_tokens=6",
]


class Record(L.Callback):
    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        sched = module.hooks.hooks[0]
        if sched.done:
            return
        m = trainer.callback_metrics
        keys = ("dpo/loss", "dpo/nll", "dpo/accuracy", "sft/loss", "train/grad_norm")
        self.steps.append({"stage": sched.stage.kind} | {k: float(m[k]) for k in keys if k in m})


def _train(compose, overrides, ckpt_path=None):
    cfg = compose(overrides + ([f"ckpt_path={ckpt_path}"] if ckpt_path else []))
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    rec = Record()
    trainer = build_trainer(cfg, callbacks=[rec])
    trainer.fit(module, ckpt_path=cfg.ckpt_path)
    return module, trainer, rec


def test_stic_runs_dpo_on_self_built_pairs_then_description_infused_sft(compose, tiny_overrides):
    overrides = [o for o in tiny_overrides if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=20"]
    module, trainer, rec = _train(compose, overrides + SHORT)
    sched = module.hooks.hooks[0]
    pairs = sched.kept[0]
    assert module.reference is not None  # built for the DPO stage although kl=none
    assert 1 <= len(pairs) <= 4 and all(len(p["segments"]) == 1 for p in pairs)
    assert all(p["segments"][0]["chosen"] != p["segments"][0]["rejected"] for p in pairs)
    described = sched.kept[1]
    assert len(described) == 2 and all(e[2].startswith("Image description: ") for e in described)
    dpo_steps = math.ceil(len(pairs) / 2)
    assert [s["stage"] for s in rec.steps] == ["dpo"] * dpo_steps + ["sft"]
    first = rec.steps[0]
    # the first step's policy is the reference: every margin is 0, so the DPO loss is log 2 per pair (weight 1)
    assert math.isclose(first["dpo/loss"], math.log(2.0), rel_tol=1e-5)
    assert first["dpo/nll"] > 0 and math.isfinite(first["train/grad_norm"])
    assert rec.steps[-1]["sft/loss"] > 0
    assert trainer.global_step == dpo_steps + 1 < 20


@pytest.mark.slow
def test_resume_inside_the_dpo_stage_is_exact(compose, tiny_overrides, tmp_path):
    base = [o for o in tiny_overrides if not o.startswith(("output_dir", "trainer.max_steps"))]
    base += SHORT + ["ckpt_every=1", S + "pref.preference.batch_size=1"]
    straight, _, full = _train(compose, base + [f"output_dir={tmp_path}/a", "trainer.max_steps=3"])
    out, ckpt = f"output_dir={tmp_path}/b", tmp_path / "b" / "checkpoints" / "last.ckpt"
    _, _, first = _train(compose, base + [out, "trainer.max_steps=1"])
    state = torch.load(ckpt, weights_only=True)["vrl"]["hooks"]["curriculum"]
    assert state["index"] == 0 and len(state["kept"][0]) >= 2
    resumed, _, second = _train(compose, base + [out, "trainer.max_steps=3"], ckpt_path=ckpt)
    assert first.steps + second.steps == full.steps
    assert resumed.hooks.hooks[0].kept == straight.hooks.hooks[0].kept
    a, b = dict(straight.policy.named_parameters()), dict(resumed.policy.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_dpo_stage_trains_on_a_pair_file_in_stics_schema(compose, tiny_overrides, tmp_path, lora):
    Image.new("RGB", (56, 56), (200, 30, 30)).save(tmp_path / "red.png")
    msgs = lambda answer: [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": answer}]  # noqa: E731
    rows = [
        {"image": "red.png", "chosen": msgs("a red square"), "rejected": msgs(f"a {c} cat")} for c in ("blue", "green")
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [o for o in tiny_overrides if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=20"]
    overrides += [
        "+method=stic",
        "trainer.limit_val_batches=0",
        f"{S}pref.data={{_target_:vrl.data.preference.load_preference,path:{tmp_path}/pairs.jsonl}}",
        f"~{S}pref.preference.pairs",  # the default: FilePairs (the rows hold the pairs)
        f"{S}pref.preference.batch_size=2",
        f"{S}pref.epochs=2",
        f"{S}describe=null",
    ] + (["lora=r8", "optimizer.lr=0.05"] if lora else [])
    module, trainer, rec = _train(compose, overrides)
    assert module.hooks.hooks[0].kept[0][1] == {
        "index": 1,
        "segments": [{"chosen": "a red square", "rejected": "a green cat", "weight": 1.0}],
    }
    assert [s["stage"] for s in rec.steps] == ["dpo", "dpo"]  # 2 pairs, 2 per step, 2 epochs
    assert (module.reference is None) == lora  # LoRA: the reference is the adapter-off policy
    assert math.isclose(rec.steps[0]["dpo/loss"], math.log(2.0), rel_tol=1e-5)  # policy == reference at first
    assert rec.steps[1]["dpo/loss"] < rec.steps[0]["dpo/loss"]  # one step towards the chosen responses
    assert rec.steps[1]["dpo/accuracy"] == 1.0
