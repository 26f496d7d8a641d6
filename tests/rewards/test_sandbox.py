"""The reward sandbox out of process and in threads: hard timeouts, dead workers, replacement, pickling."""

import copy
import importlib
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from vrl.rewards import Accuracy
from vrl.rewards.combine import RewardSet
from vrl.rewards.sandbox import WorkerPool

TIMEOUT = 0.5
SLACK = 1.5  # process scheduling, a kill and a fork-server start on a loaded 2-core CI machine


@pytest.fixture(scope="module")
def terms():
    """``_sandbox_terms``, importable by name here and in the workers (they get the parent's ``sys.path``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(Path(__file__).parent))
        yield importlib.import_module("_sandbox_terms")


@pytest.fixture
def make(terms):
    """Build RewardSets and close their worker processes after the test."""
    made = []

    def _make(term_map, **knobs):
        made.append(RewardSet(term_map, **knobs))
        return made[-1]

    yield _make
    for rs in made:
        rs.close()


def rows(n: int) -> list[dict]:
    return [{"uid": f"u{i}"} for i in range(n)]


def score(rs: RewardSet, responses: list[str], name: str = "s") -> list[float]:
    return rs(responses, rows(len(responses)))[1][name].tolist()


def test_process_mode_scores_in_a_worker_and_keeps_it(terms, make):
    rs = make({"s": terms.Scripted()}, isolate="process")
    first = score(rs, ["pid", "0.5"])
    assert first[1] == 0.5
    assert first[0] != os.getpid()
    assert score(rs, ["pid"]) == first[:1]  # the same persistent worker


def test_timeout_on_code_that_ignores_signals_kills_and_replaces_the_worker(terms, make):
    rs = make({"s": terms.Scripted()}, isolate="process", timeout_s=TIMEOUT)
    [worker_pid] = score(rs, ["pid"])  # start the worker outside the timed part
    t0 = time.monotonic()
    assert score(rs, ["spin"]) == [0.0]
    assert time.monotonic() - t0 < TIMEOUT + SLACK
    assert rs.pop_stats()["reward/timeouts/s"] == 1.0
    t0 = time.monotonic()
    [new_pid] = score(rs, ["pid"])  # the next call works, on a new worker
    assert time.monotonic() - t0 < SLACK
    assert new_pid != worker_pid
    assert not _alive(int(worker_pid))


def test_one_spinning_sample_in_a_batch_costs_only_that_sample(terms, make):
    rs = make({"s": terms.Scripted()}, isolate="process", timeout_s=TIMEOUT)
    score(rs, ["1"])
    t0 = time.monotonic()
    # the batch call times out, then one call per sample; only "spin" times out alone: about 2 x TIMEOUT
    assert score(rs, ["1", "spin", "0.5"]) == [1.0, 0.0, 0.5]
    assert time.monotonic() - t0 < 2 * TIMEOUT + SLACK
    stats = rs.pop_stats()
    assert stats["reward/timeouts/s"] == 1.0
    assert stats["reward/fallbacks/s"] == 1.0
    assert stats["reward/errors/s"] == 0.0


def test_exception_and_nan_in_a_worker(terms, make):
    rs = make({"s": terms.Scripted()}, isolate="process", workers=2, default=-1.0)
    assert score(rs, ["0.25", "raise", "nan", "0.75"]) == [0.25, -1.0, -1.0, 0.75]
    stats = rs.pop_stats()
    assert stats["reward/errors/s"] == 1.0
    assert stats["reward/nonfinite/s"] == 1.0
    assert stats["reward/timeouts/s"] == 0.0


def test_a_worker_that_dies_is_an_error_and_is_replaced(terms, make, caplog):
    rs = make({"s": terms.Scripted()}, isolate="process")
    with caplog.at_level(logging.WARNING, logger="vrl"):
        assert score(rs, ["1", "die"]) == [1.0, 0.0]
    assert rs.pop_stats()["reward/errors/s"] == 1.0
    assert any("worker process died (exit code 3)" in r.getMessage() for r in caplog.records)
    assert score(rs, ["0.5"]) == [0.5]


def test_a_worker_killed_while_idle_is_replaced_before_the_next_call(terms, make):
    rs = make({"s": terms.Scripted()}, isolate="process")
    [pid] = score(rs, ["pid"])
    os.kill(int(pid), signal.SIGKILL)  # as the OOM killer would, some time before the next call
    deadline = time.monotonic() + 5
    while _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    [new_pid] = score(rs, ["pid"])
    assert new_pid != pid
    assert rs.pop_stats()["reward/errors/s"] == 0.0


def test_a_copy_starts_its_own_workers(terms, make):
    rs = make({"s": terms.Scripted()}, isolate="process")
    [pid] = score(rs, ["pid"])
    twin = copy.deepcopy(rs)
    try:
        [twin_pid] = score(twin, ["pid"])
        assert twin_pid not in (pid, os.getpid())
        assert score(rs, ["pid"]) == [pid]
    finally:
        twin.close()


def test_worker_drop_keys_keeps_images_out_of_the_worker(terms, make):
    samples = [{"uid": "a", "images": ["an image"]}]
    kept = make({"h": terms.HasImages()}, isolate="process")
    dropped = make({"h": terms.HasImages()}, isolate="process", worker_drop_keys=["images"])
    assert kept(["x"], samples)[1]["h"].tolist() == [1.0]
    assert dropped(["x"], samples)[1]["h"].tolist() == [0.0]
    assert samples == [{"uid": "a", "images": ["an image"]}]  # the caller's rows are not touched


def test_wrong_number_of_values_from_a_worker_raises(terms, make):
    rs = make({"s": terms.Scripted(), "bad": terms.OneTooMany()}, isolate="process", workers=2)
    with pytest.raises(ValueError, match="reward term 'bad' returned 3 values for 2 responses"):
        rs(["1", "1"], rows(2))


def test_only_the_named_terms_are_isolated(terms, make):
    rs = make({"s": terms.Scripted(), "here": terms.Scripted()}, isolate="process", isolate_terms=["s"])
    _, comps = rs(["pid"], rows(1))
    assert comps["here"].item() == os.getpid()
    assert comps["s"].item() != os.getpid()


def test_unpicklable_term_fails_at_construction_naming_it(terms):
    class Local:  # not importable by module path
        weight = 1.0

        def __call__(self, responses, samples):
            return [0.0] * len(responses)

    with pytest.raises(TypeError, match="reward term 'local' cannot run in a worker process"):
        RewardSet({"s": terms.Scripted(), "local": Local()}, isolate="process")


def test_a_term_that_fails_to_load_in_the_worker_raises(terms):
    pool = WorkerPool({"u": terms.Unloadable()})
    try:
        with pytest.raises(RuntimeError, match="fail to load in a worker process"):
            pool.run([("u", ["a"], rows(1))], timeout_s=None)
    finally:
        pool.close()


def test_accuracy_with_math_verify_runs_in_a_worker(make):
    rs = make({"accuracy": Accuracy()}, isolate="process", timeout_s=30)
    samples = [{"answer": "\\frac{1}{2}", "answer_type": "math", "uid": "m"}] * 2
    _, comps = rs(["$0.5$", "$\\frac{2}{3}$"], samples)
    assert comps["accuracy"].tolist() == [1.0, 0.0]
    assert rs.pop_stats()["reward/errors/accuracy"] == 0.0


MATH_LIMIT = 1  # an int: the old code handed it to signal.alarm
#: 9^(9^(9^9)): math-verify's comparison makes sympy compute 9**387420489, minutes without a limit.
BLOWUP = "\\boxed{9^{9^{9^{9}}}}"


@pytest.mark.parametrize("isolate", ["none", "thread", "process"])
def test_a_math_blowup_is_a_counted_timeout_in_every_isolation_mode(make, isolate):
    accuracy = Accuracy(math_timeout_s=MATH_LIMIT)
    rs = make({"accuracy": accuracy}, isolate=isolate)  # no sandbox timeout: the limit is Accuracy's own
    samples = [{"answer": "1", "answer_type": "math", "uid": "m"}]
    try:
        assert rs(["$1$"], samples)[1]["accuracy"].tolist() == [1.0]  # starts any worker outside the timed part
        t0 = time.monotonic()
        _, comps = rs([BLOWUP], samples)
        elapsed = time.monotonic() - t0
        stats = rs.pop_stats()
        assert comps["accuracy"].tolist() == [0.0]  # the default
        assert (stats["reward/timeouts/accuracy"], stats["reward/errors/accuracy"]) == (1.0, 0.0)
        assert elapsed < MATH_LIMIT + SLACK
        assert rs(["$1$"], samples)[1]["accuracy"].tolist() == [1.0]  # and the next call works
    finally:
        accuracy.close()


def test_thread_mode_times_out_code_that_waits(terms, make):
    rs = make({"s": terms.Scripted()}, isolate="thread", timeout_s=0.2)
    try:
        t0 = time.monotonic()
        assert score(rs, ["1", "block"]) == [1.0, 0.0]
        assert time.monotonic() - t0 < 2 * 0.2 + SLACK
        stats = rs.pop_stats()
        assert stats["reward/timeouts/s"] == 1.0
        assert stats["reward/fallbacks/s"] == 1.0
    finally:
        terms.RELEASE.set()  # let the abandoned threads return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child may linger as a zombie until reaped
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"
