"""``vrl eval``: pass@k and per-source tables by hand; a saved tiny policy reproduces its run's final validation."""

from __future__ import annotations

import math

import pytest

from vrl.evaluate import ItemScore, main, pass_at_k, summarise, table


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # 1 - C(3,1)/C(4,1) = 1 - 3/4
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0  # n - c = 1 < k = 2: always a hit
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(2, 1, 3)


def test_summary_per_source_by_hand():
    items = [
        ItemScore("a", 1.0, [1.0, 0.0, 0.0, 0.0], 2.0),
        ItemScore("a", 0.0, [0.0, 0.0, 0.0, 0.0], 0.5),
        ItemScore("b", 1.0, [1.0, 1.0, 0.5, 0.0], 1.5),
    ]
    m = summarise(items, ks=[1, 2, 8])
    # greedy: (1 + 0 + 1) / 3; a: 1/2; b: 1; greedy reward (2 + 0.5 + 1.5) / 3 = 4/3
    assert m["eval/greedy_accuracy"] == pytest.approx(2 / 3) and m["eval/greedy_reward"] == pytest.approx(4 / 3)
    assert m["eval/by_source/a/greedy_accuracy"] == 0.5 and m["eval/by_source/b/count"] == 2 - 1
    # avg@4: item means 0.25, 0, 0.625 -> 0.875 / 3; b alone 0.625
    assert m["eval/avg_at_4"] == pytest.approx(0.875 / 3) and m["eval/by_source/b/avg_at_4"] == pytest.approx(0.625)
    # pass@2 (correct = accuracy >= 1): c = 1, 0, 2 -> 1 - 3/6 = 0.5, 0, 1 - 1/6 = 5/6 -> (0.5 + 5/6) / 3
    assert m["eval/pass_at_2"] == pytest.approx((0.5 + 5 / 6) / 3)
    assert m["eval/pass_at_1"] == pytest.approx((0.25 + 0 + 0.5) / 3)
    assert "eval/pass_at_8" not in m  # k > n samples: not estimable
    lines = table(m).splitlines()
    assert lines[0].startswith("| source | count | greedy_accuracy") and lines[2].startswith("| all | 3 | 0.6667")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| all", "| a", "| b"]


def test_eval_of_a_saved_tiny_policy_reproduces_its_final_validation(compose, tiny_overrides, tmp_path, capsys):
    import mlflow

    from vrl.train import run

    store = f"sqlite:///{tmp_path}/mlflow.db"
    shared = [
        "+reward.length={_target_:vrl.rewards.LengthPenalty,target:3}",  # a graded term: val/reward is not 0
        f"logger.tracking_uri={store}",
        f"logger.artifact_location={tmp_path}/mlartifacts",
    ]
    train = [o for o in tiny_overrides if o not in ("logger=none", "save_policy=false")] + ["save_policy=true"]
    metrics = run(compose(train + shared))
    same = [o for o in train if not o.startswith(("output_dir", "save_policy"))] + shared  # the run's settings
    assert main([str(tmp_path / "policy"), *same, "--samples", "4", "--k", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "| all | 8 |" in out
    client = mlflow.MlflowClient(store)
    runs = client.search_runs(client.get_experiment_by_name("vrl").experiment_id)
    evals = [r for r in runs if r.data.tags.get("vrl.kind") == "eval"]
    assert len(runs) == 2 and len(evals) == 1  # next to the training run
    got = evals[0].data.metrics
    assert math.isclose(got["eval/greedy_accuracy"], metrics["val/accuracy"], abs_tol=1e-6)
    assert math.isclose(got["eval/greedy_reward"], metrics["val/reward"], rel_tol=1e-6) and metrics["val/reward"] != 0
    assert 0.0 <= got["eval/pass_at_1"] <= got["eval/pass_at_2"] <= 1.0 and "eval/avg_at_4" in got


def test_eval_selects_with_a_prm_and_runs_the_judge_bench(tmp_path, capsys):
    small = [f"output_dir={tmp_path}", "logger=none", "data.val.num_samples=3", "sampler.max_new_tokens=4"]
    assert main([*small, "--select", "bon", "--n", "2", "--prm", "tiny:qwen2_5_vl"]) == 0
    out = capsys.readouterr().out
    # the table's "all" row: 3 items, bon2 accuracy and reward, then the cost per item: 2 samples, 2 PRM prompts
    header, _, row = out.splitlines()[:3]
    cells = dict(zip(header.strip("| ").split(" | "), row.strip("| ").split(" | ")))
    assert cells["count"] == "3" and "bon2_accuracy" in cells
    assert float(cells["cost/policy_sequences_per_item"]) == 2.0 and float(cells["cost/prm_prompts_per_item"]) == 2.0
    assert main([*small, "--judge-bench", "synthetic", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "| general/count |" in out and "overall_accuracy" in out and "| all | 4.0000 |" in out  # 12 items: 4 general
