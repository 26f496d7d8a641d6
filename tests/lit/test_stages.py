"""StageScheduler on a stand-in module: switch rules, what a stage changes, state round trips."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from vrl.lit import stages
from vrl.lit.stages import MetricRule, Stage, StageScheduler
from vrl.rewards.combine import RewardSet
from vrl.rollout.hf import HFRollout


class Term:
    """A reward term that scores every response ``value``."""

    def __init__(self, value: float, weight: float = 1.0) -> None:
        self.value, self.weight = value, weight

    def __call__(self, responses, samples):
        return [self.value] * len(responses)


class FakeModule:
    """The attributes of RLModule that the scheduler reads and writes."""

    def __init__(self, train_data=None, batch_size=2):
        self.rollout_engine = HFRollout(group_size=4, max_new_tokens=8, temperature=1.0, top_p=1.0)
        self.objective = SimpleNamespace(temperature=1.0)
        self.batch_size = batch_size
        self.reward = RewardSet({"accuracy": Term(1.0), "format": Term(0.5)}, default=-1.0)
        self.train_data = train_data if train_data is not None else rows("run", 8)
        self.data_seed, self.global_rank = 0, 0
        self.trainer = SimpleNamespace(world_size=1, callback_metrics={}, should_stop=False)
        self.prompts, self.logger = None, None
        self.logged: list[tuple[str, float]] = []
        self._opt = SimpleNamespace(param_groups=[{"lr": 0.1}])

    def log(self, name, value, **kwargs):
        self.logged.append((name, value))

    def log_dict(self, metrics, **kwargs):
        self.logged.extend(metrics.items())

    def print(self, *args):
        pass

    def optimizers(self):
        return self._opt


def rows(tag: str, n: int) -> list[dict]:
    return [{"prompt": f"{tag}{i}", "uid": f"{tag}{i}"} for i in range(n)]


def run(scheduler: StageScheduler, module: FakeModule, steps: int, start: int = 0, metrics=None) -> list[int]:
    """Step the scheduler like RLModule does (one prompt batch per RL step); the stage index of each step.

    ``metrics[step]`` is what the step logs (visible to the *next* step's switch check).
    """
    stages = []
    for step in range(start, start + steps):
        scheduler.on_step_start(step, module)
        if scheduler.done:
            break
        stages.append(scheduler.index)
        module.prompts.next_batch()
        if metrics:
            module.trainer.callback_metrics = metrics[step]
    return stages


def test_after_steps_switches_after_exactly_n_steps():
    sched = StageScheduler({"a": Stage(after_steps=2), "b": Stage(after_steps=3), "c": Stage()})
    assert run(sched, FakeModule(), 8) == [0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize(
    ("n_rows", "epochs", "steps_in_a"),
    [
        (6, None, 3),  # one pass over 6 rows at B = 2: 6 / 2 = 3 steps
        (6, 2, 6),  # two passes: 2 * 6 / 2 = 6 steps
        (7, None, 4),  # 7 rows: the 4th batch takes row 7 and the next epoch's first row, ceil(7 / 2) = 4
    ],
)
def test_exhausted_switches_after_one_pass_over_the_stage_data(n_rows, epochs, steps_in_a):
    a = Stage(data=rows("a", n_rows), exhausted=True, epochs=epochs)
    sched = StageScheduler({"a": a, "b": Stage(data=rows("b", 4))})
    assert run(sched, FakeModule(batch_size=2), steps_in_a + 2) == [0] * steps_in_a + [1, 1]


def test_metric_rule_fires_on_the_step_after_the_value_crosses_strictly():
    above = {"a": Stage(metric={"name": "val/accuracy", "threshold": 0.5}), "b": Stage()}
    values = [{"val/accuracy": v} for v in (0.1, 0.5, 0.7, 0.2)]  # 0.5 is not above 0.5; 0.7 is
    assert run(StageScheduler(above), FakeModule(), 4, metrics=values) == [0, 0, 0, 1]
    below = {"a": Stage(metric={"name": "loss", "threshold": 1.0, "mode": "below"}), "b": Stage()}
    values = [{"loss": v} for v in (3.0, 0.9, 5.0)]
    assert run(StageScheduler(below), FakeModule(), 3, metrics=values) == [0, 0, 1]


def test_metric_rule_ignores_missing_and_nan_values():
    rule = MetricRule("x", 0.5)
    assert not rule.fired(None) and not rule.fired(float("nan")) and rule.fired(0.6)


def test_a_stage_sets_g_temperature_reward_and_data_and_the_next_restores_the_run_values():
    b_data = rows("b", 4)
    b = Stage(
        data=b_data,
        group_size=2,
        temperature=0.7,
        top_p=0.9,
        batch_size=1,
        reward={"format": None, "length": Term(0.25)},
        after_steps=1,
    )
    sched = StageScheduler({"a": Stage(after_steps=1), "b": b, "c": Stage()})
    module = FakeModule()
    run_reward = module.reward
    run(sched, module, 1)
    engine = module.rollout_engine
    assert (engine.group_size, engine.temperature, engine.top_p, module.batch_size) == (4, 1.0, 1.0, 2)
    assert module.reward is run_reward and module.prompts.dataset is module.train_data
    run(sched, module, 1, start=1)
    assert (engine.group_size, engine.temperature, engine.top_p, module.batch_size) == (2, 0.7, 0.9, 1)
    assert module.objective.temperature == 0.7  # the loss scores at the sampling temperature
    assert module.prompts.dataset is b_data and module.prompts.batch_size == 1
    assert list(module.reward.terms) == ["accuracy", "length"]  # format removed, length added, accuracy kept
    assert module.reward.defaults == {"accuracy": -1.0, "length": -1.0}  # the run's sandbox settings
    total, _ = module.reward(["x"], [{}])
    assert float(total[0]) == 1.0 + 0.25
    run(sched, module, 1, start=2)
    assert (engine.group_size, engine.temperature, engine.top_p, module.batch_size) == (4, 1.0, 1.0, 2)
    assert module.reward is run_reward
    assert ("curriculum/stage", 2.0) in module.logged


def test_each_stage_keeps_its_own_stream_and_state_round_trips_exactly():
    def make():
        return StageScheduler({"a": Stage(after_steps=3), "b": Stage(data=rows("b", 5), after_steps=4), "c": Stage()})

    def drawn(sched, module, start, steps):
        out = []
        for step in range(start, start + steps):
            sched.on_step_start(step, module)
            out.append([r["uid"] for r in module.prompts.next_batch()])
        return out

    straight = drawn(make(), FakeModule(), 0, 9)
    first = make()
    head = drawn(first, FakeModule(), 0, 5)  # stops inside stage b, after 2 of its 4 steps
    state = first.state_dict()
    assert (state["index"], state["steps_in_stage"]) == (1, 2)
    resumed = make()
    resumed.load_state_dict(state)
    assert head + drawn(resumed, FakeModule(), 5, 4) == straight
    assert straight[0][0].startswith("run") and straight[3][0].startswith("b") and straight[7][0].startswith("run")


def test_metric_value_travels_with_the_state_so_a_resume_switches_on_the_same_step():
    def make():
        return StageScheduler({"a": Stage(metric={"name": "m", "threshold": 0.5}), "b": Stage()})

    first, module = make(), FakeModule()
    run(first, module, 2, metrics=[{"m": 0.1}, {"m": 0.9}])  # the checkpoint is written after step 1
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    assert run(resumed, FakeModule(), 1, start=2) == [1]  # callback_metrics are empty after a resume


def test_the_last_rule_ends_the_run():
    module = FakeModule()
    sched = StageScheduler({"a": Stage(after_steps=1), "b": Stage(after_steps=2)})
    assert run(sched, module, 5) == [0, 1, 1]
    assert module.trainer.should_stop and sched.replace_step(module) == {"curriculum/done": 1.0}


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ({"a": Stage(), "b": Stage()}, "no switch rule"),
        ([Stage(name="x", after_steps=1), Stage(name="x")], "unique"),
    ],
)
def test_invalid_curricula_are_rejected(stages, match):
    with pytest.raises(ValueError, match=match):
        StageScheduler(stages)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"after_steps": 2, "epochs": 1}, "one switch rule"),
        ({"after_steps": 0}, ">= 1"),
        ({"lr": 1e-5}, "kind=sft"),
        ({"kind": "sft", "lr": 1e-5, "lr_scale": 0.2}, "not both"),
        ({"kind": "ppo"}, "kind must be"),
        ({"metric": {"name": "m", "threshold": 1.0, "mode": "over"}}, "mode"),
    ],
)
def test_invalid_stages_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Stage(name="s", **kwargs)


def test_with_terms_keeps_the_run_sandbox_settings_for_the_terms_it_still_has():
    run = RewardSet(
        {"accuracy": Term(1.0), "format": Term(0.5)},
        isolate="thread",
        timeout_s=5.0,
        isolate_terms=["format"],
        term_defaults={"format": -2.0},
        default=-1.0,
    )
    stage = run.with_terms({"accuracy": Term(0.0), "length": Term(0.3)})
    assert (stage.isolate, stage.timeout_s, stage.isolated) == ("thread", 5.0, [])  # format, the isolated one, left
    assert stage.defaults == {"accuracy": -1.0, "length": -1.0}
    same = run.with_terms({"format": Term(0.1)})
    assert same.isolated == ["format"] and same.defaults == {"format": -2.0}


def test_rewardmap_curriculum_walks_the_question_type_blocks_in_order(compose):
    blocks = {"tf": 4, "count_lines": 4, "count_stops": 2, "planning": 2}
    sizes = [f"hooks.curriculum.stages.{name}.data.num_samples={n}" for name, n in blocks.items()]
    cfg = compose(["+method=rewardmap", "data.train.mode=stream", *sizes])
    sched = instantiate(cfg.hooks.curriculum)
    module = FakeModule(batch_size=2)
    types = []
    for step in range(10):
        sched.on_step_start(step, module)
        if sched.done:
            break
        types.append({row["type"] for row in module.prompts.next_batch()})
    # blocks of 4, 4, 2 and 2 rows at B = 2 prompts per step: 2 + 2 + 1 + 1 steps, then the run ends
    allowed = [{"TorF1", "TorF2"}] * 2 + [{"Counting2", "Counting3"}] * 2 + [{"Counting1"}, {"planning"}]
    assert len(types) == 6 and all(t <= a for t, a in zip(types, allowed))
    assert module.trainer.should_stop


class CannedEngine(HFRollout):
    """HFRollout's settings, but ``generate`` returns "<uid>-<k>" as the k-th candidate of each row."""

    def generate(self, vlm, rows, group_size=None, greedy=False):
        g = group_size or self.group_size
        return SimpleNamespace(
            responses=[f"{row['uid']}-{k}" for row in rows for k in range(g)],
            samples=[row for row in rows for _ in range(g)],
            group_ids=torch.arange(len(rows)).repeat_interleave(g),
        )


def _sft_curriculum(threshold: float) -> StageScheduler:
    sft = Stage(
        kind="sft",
        data=rows("s", 2),
        lr_scale=0.5,
        after_steps=2,
        temperature=0.5,
        rejection={"candidates": 2, "threshold": threshold, "batch_size": 8},
    )
    return StageScheduler({"a": Stage(after_steps=1), "sft": sft, "c": Stage()})


def test_an_sft_stage_keeps_judged_candidates_trains_at_its_lr_and_hands_the_run_lr_back(monkeypatch):
    batches = []  # what each SFT step would train on: (row uid, response) pairs
    monkeypatch.setattr(stages, "build_sft_rollout", lambda vlm, rows, responses, *args: (rows, responses))
    monkeypatch.setattr(stages, "sft_step", lambda module, pairs: batches.append(list(zip(*pairs))) or {})
    module = FakeModule()
    module.rollout_engine, module.vlm = CannedEngine(group_size=4), None
    sched = _sft_curriculum(threshold=1.5)  # the run's reward gives every candidate 1.0 + 0.5
    indices, lrs = [], []
    for step in range(4):
        sched.on_step_start(step, module)
        indices.append(sched.index)
        lrs.append(module.optimizers().param_groups[0]["lr"])
        assert (sched.replace_step(module) is None) == (sched.stage.kind == "rl")
    assert indices == [0, 1, 1, 2] and lrs == [0.1, 0.05, 0.05, 0.1] and sched.saved_lrs is None
    assert sched.kept[1] == [(0, "s0-0"), (0, "s0-1"), (1, "s1-0"), (1, "s1-1")]
    assert sched.state_dict()["kept"][1][0] == [0, "s0-0"]  # plain lists and strings in the checkpoint
    assert ("sft/candidates", 4.0) in module.logged
    assert len(batches) == 2 and all(len(b) == 4 for b in batches)  # capped at the 4 kept: none twice
    for batch in batches:
        assert sorted((row["uid"], response) for row, response in batch) == [
            ("s0", "s0-0"),
            ("s0", "s0-1"),
            ("s1", "s1-0"),
            ("s1", "s1-1"),
        ]  # each response trained with the prompt it was sampled for


def test_an_sft_stage_whose_judge_keeps_nothing_is_skipped():
    module = FakeModule()
    module.rollout_engine, module.vlm = CannedEngine(group_size=4), None
    sched = _sft_curriculum(threshold=2.0)  # 1.5 < 2: nothing passes
    assert run(sched, module, 3) == [0, 2, 2]
    assert sched.kept[1] == [] and module.optimizers().param_groups[0]["lr"] == 0.1


def test_a_null_stage_is_switched_off():
    from vrl.lit.stages import Stage, StageScheduler

    sched = StageScheduler({"a": Stage(after_steps=1), "b": None, "c": Stage()})
    assert [s.name for s in sched.stages] == ["a", "c"]
