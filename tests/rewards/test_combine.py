"""RewardSet in-process: weighting, containment per sample, non-finite values, the degenerate monitor, stats."""

import logging
import math

import pytest
import torch

from vrl.rewards.combine import RewardSet


class Const:
    def __init__(self, value: float, weight: float = 1.0) -> None:
        self.value, self.weight = value, weight

    def __call__(self, responses, samples):
        return [self.value] * len(responses)


class Parse:
    """float(response): "x" raises ValueError, "nan" gives NaN. Counts its calls and batch sizes."""

    weight = 1.0

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, responses, samples):
        self.batch_sizes.append(len(responses))
        return [float(r) for r in responses]


class Wrong:
    weight = 1.0

    def __init__(self, values) -> None:
        self.values = values

    def __call__(self, responses, samples):
        return self.values


def rows(n: int) -> list[dict]:
    return [{"uid": f"u{i}"} for i in range(n)]


def test_weighted_sum_and_components_in_config_order():
    rs = RewardSet({"a": Const(1.0, weight=0.5), "off": None, "b": Const(2.0, weight=2.0)})
    total, comps = rs(["x", "y"], rows(2))
    assert list(comps) == ["a", "b"]
    torch.testing.assert_close(total, torch.tensor([4.5, 4.5]))
    torch.testing.assert_close(comps["b"], torch.tensor([2.0, 2.0]))


def test_every_term_null_raises():
    with pytest.raises(ValueError, match="no reward terms"):
        RewardSet({"a": None})


@pytest.mark.parametrize("values", [[1.0], [1.0, 2.0, 3.0]])
def test_wrong_number_of_values_raises_naming_the_term(values):
    rs = RewardSet({"ok": Const(1.0), "buggy": Wrong(values)})
    with pytest.raises(ValueError, match="reward term 'buggy' returned"):
        rs(["a", "b"], rows(2))


def test_wrong_count_on_the_per_sample_retry_raises_too():
    class RaisesOnBatchWrongAlone:
        weight = 1.0

        def __call__(self, responses, samples):
            if len(responses) > 1:
                raise RuntimeError("batch")
            return [1.0, 2.0]

    with pytest.raises(ValueError, match="'t' returned 2 values for 1 responses"):
        RewardSet({"t": RaisesOnBatchWrongAlone()})(["a", "b"], rows(2))


def test_exception_on_one_sample_costs_only_that_sample(caplog):
    term = Parse()
    rs = RewardSet({"p": term, "c": Const(1.0)}, default=-0.5)
    with caplog.at_level(logging.WARNING, logger="vrl"):
        total, comps = rs(["0.25", "x", "0.75"], rows(3))
    # the batch call raised, then one call per sample; only "x" fails alone
    assert term.batch_sizes == [3, 1, 1, 1]
    torch.testing.assert_close(comps["p"], torch.tensor([0.25, -0.5, 0.75]))
    torch.testing.assert_close(total, torch.tensor([1.25, 0.5, 1.75]))
    stats = rs.pop_stats()
    assert stats["reward/errors/p"] == 1.0
    assert stats["reward/fallbacks/p"] == 1.0
    assert stats["reward/errors/c"] == stats["reward/timeouts/p"] == stats["reward/nonfinite/p"] == 0.0
    messages = [r.getMessage() for r in caplog.records]
    assert any("'p': sample uid='u1' failed (ValueError" in m for m in messages)


def test_failures_warn_once_per_kind_then_debug(caplog):
    rs = RewardSet({"p": Parse()})
    with caplog.at_level(logging.DEBUG, logger="vrl"):
        for _ in range(3):
            rs(["x", "1"], rows(2))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one for the failed batch, one for the failed sample
    assert "Traceback" in warnings[1].getMessage()
    assert rs.pop_stats()["reward/errors/p"] == 3.0


def test_single_sample_batch_is_not_retried():
    term = Parse()
    rs = RewardSet({"p": term})
    _, comps = rs(["x"], rows(1))
    assert term.batch_sizes == [1]
    assert comps["p"].tolist() == [0.0]
    stats = rs.pop_stats()
    assert stats["reward/errors/p"] == 1.0
    assert stats["reward/fallbacks/p"] == 0.0


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_value_gets_the_default_and_is_counted(bad):
    rs = RewardSet({"p": Parse(), "c": Const(1.0)}, term_defaults={"p": -1.0})
    total, comps = rs(["0.5", bad], rows(2))
    assert comps["p"].tolist() == [0.5, -1.0]
    assert torch.isfinite(total).all()
    stats = rs.pop_stats()
    assert stats["reward/nonfinite/p"] == 1.0
    assert stats["reward/errors/p"] == stats["reward/fallbacks/p"] == 0.0


def test_a_value_that_is_not_a_number_is_an_error():
    class Echo:
        weight = 1.0

        def __call__(self, responses, samples):
            return [r if r == "abc" else 1.0 for r in responses]

    rs = RewardSet({"w": Echo()})
    _, comps = rs(["abc", "b"], rows(2))
    assert comps["w"].tolist() == [0.0, 1.0]
    assert rs.pop_stats()["reward/errors/w"] == 1.0


def test_pop_stats_resets_counters_but_not_the_streak():
    rs = RewardSet({"p": Parse()})
    rs(["x", "x"], rows(2))
    first = rs.pop_stats()
    assert first["reward/errors/p"] == 2.0
    assert first["reward/degenerate_streak"] == 1.0  # both samples got 0.0
    second = rs.pop_stats()
    assert second["reward/errors/p"] == 0.0
    assert second["reward/fallbacks/p"] == 0.0
    assert second["reward/degenerate_streak"] == 1.0


def test_degenerate_rewards_warn_once_per_streak(caplog):
    rs = RewardSet({"p": Parse()}, degenerate_warn_after=3)
    with caplog.at_level(logging.WARNING, logger="vrl"):
        for _ in range(5):
            rs(["0", "0", "0"], rows(3))
        assert rs.pop_stats()["reward/degenerate_streak"] == 5.0
        rs(["0", "1", "0"], rows(3))  # signal again: the streak resets
        assert rs.pop_stats()["reward/degenerate_streak"] == 0.0
        for _ in range(3):
            rs(["1", "1", "1"], rows(3))  # all equal but not zero is degenerate too
        rs(["1"], rows(1))  # a single response is not judged: the streak neither grows nor resets
    warnings = [r.getMessage() for r in caplog.records if "total reward" in r.getMessage()]
    assert len(warnings) == 2
    assert "all zero" in warnings[0]
    assert "all equal to 1" in warnings[1]
    assert rs.pop_stats()["reward/degenerate_streak"] == 3.0


def test_degenerate_warning_can_be_switched_off(caplog):
    rs = RewardSet({"c": Const(0.0)}, degenerate_warn_after=None)
    with caplog.at_level(logging.WARNING, logger="vrl"):
        for _ in range(30):
            rs(["a", "b"], rows(2))
    assert not caplog.records
    assert rs.pop_stats()["reward/degenerate_streak"] == 30.0


def test_empty_batch():
    total, comps = RewardSet({"c": Const(1.0)})([], [])
    assert total.shape == (0,)
    assert comps["c"].shape == (0,)


@pytest.mark.parametrize(
    ("knobs", "match"),
    [
        ({"timeout_s": 1.0}, "needs isolate"),
        ({"isolate": "fork"}, "isolate must be"),
        ({"isolate": "thread", "timeout_s": 0}, "timeout_s must be > 0"),
        ({"isolate_terms": ["nope"]}, r"isolate_terms names unknown terms \['nope'\]"),
        ({"term_defaults": {"nope": 1.0}}, "term_defaults names unknown"),
        ({"isolate": "process", "workers": 0}, "workers must be >= 1"),
        ({"start_method": "fork"}, "start_method must be"),
    ],
)
def test_bad_knobs_fail_at_construction(knobs, match):
    with pytest.raises(ValueError, match=match):
        RewardSet({"c": Const(1.0), "off": None}, **knobs)


def test_term_defaults_may_name_a_switched_off_term():
    rs = RewardSet({"c": Const(1.0), "off": None}, term_defaults={"off": 1.0, "c": 0.5})
    assert rs.defaults == {"c": 0.5}
    assert not math.isnan(float(rs(["a"], rows(1))[0][0]))


def test_the_streak_survives_a_checkpoint(caplog):
    # warn_after=3: two degenerate calls, "restart" (a fresh RewardSet loaded from the state), one more call:
    # the third call in a row warns. Restarting the count at 0 would need three more calls after the restart.
    before = RewardSet({"p": Parse()}, degenerate_warn_after=3)
    for _ in range(2):
        before(["0", "0"], rows(2))
    after = RewardSet({"p": Parse()}, degenerate_warn_after=3)
    after.load_state_dict(before.state_dict())
    with caplog.at_level(logging.WARNING, logger="vrl"):
        after(["0", "0"], rows(2))
    assert after.degenerate_streak == 3
    assert sum("total reward has been" in r.getMessage() for r in caplog.records) == 1
