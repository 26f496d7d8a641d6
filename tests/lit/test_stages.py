"""StageScheduler driven as the loop drives it (a hand-made StepContext, the loop's RunSettings applying what
it returns): switch rules, what a stage changes, state round trips."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from vrl.data.source import PromptSource
from vrl.hooks import StepContext
from vrl.lit.context import RunSettings, sampling_of
from vrl.lit.stages import MetricRule, Stage, StageScheduler
from vrl.rewards.combine import RewardSet
from vrl.sampler.hf import HFSampler


class Term:
    """A reward term that scores every response ``value``."""

    def __init__(self, value: float, weight: float = 1.0) -> None:
        self.value, self.weight = value, weight

    def __call__(self, responses, samples):
        return [self.value] * len(responses)


class FakeModule:
    """The state RLModule keeps for stages (sampler, objective temperature, batch size, reward, prompts, lr),
    and what it does at a step's start: reset to the run's settings, ask the hook, apply what it returns."""

    def __init__(self, train_data=None, batch_size=2, sampler=None):
        self.sampler = sampler or HFSampler(group_size=4, max_new_tokens=8, temperature=1.0, top_p=1.0)
        self.objective = SimpleNamespace(temperature=1.0)
        self.batch_size = batch_size
        self.reward = RewardSet({"accuracy": Term(1.0), "format": Term(0.5)}, default=-1.0)
        self.train_data = train_data if train_data is not None else rows("run", 8)
        self.prompts = PromptSource(self.train_data, batch_size)
        self.settings = RunSettings(self.sampler, batch_size, self.reward, self.prompts)
        self.metrics: dict[str, float] = {}  # what the loop's ctx.metrics holds (restored after a resume)
        self.logged: list[tuple[str, float]] = []
        self.stopped = False
        self._opt = SimpleNamespace(param_groups=[{"lr": 0.1}])
        self.reference_resets: list[int] = []  # the steps at which the loop reset the KL reference
        self.step = 0

    def reset_reference(self):
        self.reference_resets.append(self.step)

    def optimizers(self):
        return self._opt

    def context(self, step: int) -> StepContext:
        def generate(rows, group_size=None, greedy=False, **sampling):
            return self.sampler.generate(None, rows, group_size=group_size)

        return StepContext(
            step=step,
            sampling=sampling_of(self.sampler),
            batch_size=self.batch_size,
            train_data=self.train_data,
            reward=self.settings.base["reward"],
            metrics=dict(self.metrics),
            generate=generate,
            pairs=lambda rows, responses: list(zip(rows, responses)),
            log=lambda metrics: self.logged.extend(metrics.items()),
            print=lambda line: None,
        )

    def start_step(self, scheduler: StageScheduler, step: int) -> bool:
        """The loop's step start; False when the curriculum ended the run."""
        self.step = step
        self.settings.apply([], self)
        self.stopped = self.settings.apply([scheduler.on_step_start(self.context(step))], self)
        return not self.stopped


def rows(tag: str, n: int) -> list[dict]:
    return [{"prompt": f"{tag}{i}", "uid": f"{tag}{i}"} for i in range(n)]


def run(scheduler: StageScheduler, module: FakeModule, steps: int, start: int = 0, metrics=None) -> list[int]:
    """Step the scheduler like RLModule does (one prompt batch per RL step); the stage index of each step.

    ``metrics[step]`` is what the step logs (visible to the *next* step's switch check).
    """
    stages = []
    for step in range(start, start + steps):
        if not module.start_step(scheduler, step):
            break
        stages.append(scheduler.index)
        module.prompts.next_batch()
        if metrics:
            module.metrics = metrics[step]
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
    engine = module.sampler
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
            module.start_step(sched, step)
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


def test_a_resume_switches_on_the_same_step_with_the_metrics_the_loop_restores():
    def make():
        return StageScheduler({"a": Stage(metric={"name": "m", "threshold": 0.5}), "b": Stage()})

    first, module = make(), FakeModule()
    run(first, module, 2, metrics=[{"m": 0.1}, {"m": 0.9}])  # the checkpoint is written after step 1
    state = first.state_dict()
    resumed, fresh = make(), FakeModule()
    resumed.load_state_dict(state)
    fresh.metrics = dict(module.metrics)  # RLModule checkpoints the last logged metrics and restores them
    assert run(resumed, fresh, 1, start=2) == [1]
    blind = make()
    blind.load_state_dict(state)
    assert run(blind, FakeModule(), 1, start=2) == [0]  # without them the rule could not fire: the loop must


def test_a_stage_resets_the_reference_once_on_its_first_step_and_a_resume_inside_it_does_not_again():
    def curriculum():
        b = Stage(after_steps=2, reset_reference=True)
        return StageScheduler({"a": Stage(after_steps=1), "b": b, "c": Stage()})

    module, sched = FakeModule(), curriculum()
    assert sched.resets_reference and not StageScheduler([Stage()]).resets_reference
    assert run(sched, module, 5) == [0, 1, 1, 2, 2]
    assert module.reference_resets == [1]  # b's first step only (steps 1 and 2 are b's)
    first, later, resumed = curriculum(), curriculum(), FakeModule()
    run(first, FakeModule(), 2)  # stopped after b's first step: the checkpoint holds the reset reference
    later.load_state_dict(first.state_dict())
    assert run(later, resumed, 3, start=2) == [1, 2, 2] and resumed.reference_resets == []


def test_the_last_rule_ends_the_run():
    module = FakeModule()
    sched = StageScheduler({"a": Stage(after_steps=1), "b": Stage(after_steps=2)})
    assert run(sched, module, 5) == [0, 1, 1]
    assert module.stopped and sched.done


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
        ({"kind": "sft", "reset_reference": True}, "reset_reference is for kind=rl"),
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
        if not module.start_step(sched, step):
            break
        types.append({row["type"] for row in module.prompts.next_batch()})
    # blocks of 4, 4, 2 and 2 rows at B = 2 prompts per step: 2 + 2 + 1 + 1 steps, then the run ends
    allowed = [{"TorF1", "TorF2"}] * 2 + [{"Counting2", "Counting3"}] * 2 + [{"Counting1"}, {"planning"}]
    assert len(types) == 6 and all(t <= a for t, a in zip(types, allowed))
    assert module.stopped


class CannedEngine(HFSampler):
    """HFSampler's settings, but ``generate`` returns "<uid>-<k>" as the k-th candidate of each row."""

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


def test_an_sft_stage_keeps_judged_candidates_trains_at_its_lr_and_hands_the_run_lr_back():
    batches = []  # what each SFT step trains on: (row, response) pairs
    module = FakeModule(sampler=CannedEngine(group_size=4))
    sched = _sft_curriculum(threshold=1.5)  # the run's reward gives every candidate 1.0 + 0.5
    indices, lrs = [], []
    for step in range(4):
        module.start_step(sched, step)
        indices.append(sched.index)
        lrs.append(module.optimizers().param_groups[0]["lr"])
        pairs = sched.replace_step(module.context(step))
        assert (pairs is None) == (sched.stage.kind == "rl")
        if pairs is not None:
            batches.append(pairs)
    assert indices == [0, 1, 1, 2] and lrs == [0.1, 0.05, 0.05, 0.1] and module.settings.saved_lrs is None
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
    module = FakeModule(sampler=CannedEngine(group_size=4))
    sched = _sft_curriculum(threshold=2.0)  # 1.5 < 2: nothing passes
    assert run(sched, module, 3) == [0, 2, 2]
    assert sched.kept[1] == [] and module.optimizers().param_groups[0]["lr"] == 0.1


def test_a_null_stage_is_switched_off():
    from vrl.lit.stages import Stage, StageScheduler

    sched = StageScheduler({"a": Stage(after_steps=1), "b": None, "c": Stage()})
    assert [s.name for s in sched.stages] == ["a", "c"]
