import math

import pytest
import torch

from vrl.methods.vppo import VPPO, scoped_alpha, token_dependency_k3


def test_dependency_hand_computed_with_clamps():
    lp = torch.tensor([[-1.0, -2.0, -1.0, -1.0]])
    lp_pert = torch.tensor([[-1.0, -1.0, -3.0, -40.0]])
    s = token_dependency_k3(lp, lp_pert)
    # d = 0 -> 0; d = 1 -> e - 2 = 0.718282; d = -2 -> e^-2 + 1 = 1.135335;
    # d = -39 clamps to -20 -> e^-20 + 19 = 19.000000002 -> clamped to 10
    torch.testing.assert_close(s, torch.tensor([[0.0, math.e - 2, math.exp(-2) + 1, 10.0]]))


def test_dependency_is_zero_when_the_image_does_not_matter():
    lp = torch.randn(3, 5)
    assert torch.count_nonzero(token_dependency_k3(lp, lp.clone())) == 0


def test_alpha_hand_computed_mean_one_and_bounds():
    # S = [0, 1, 2, 3] -> S_hat = [0, 1/3, 2/3, 1], mu = 0.5
    # alpha = 0.9 + S_hat * 0.1 / 0.5 = [0.9, 0.9667, 1.0333, 1.1]; mean exactly 1, within [0.9, 0.9 + 0.1/0.5]
    s = torch.tensor([0.0, 1.0, 2.0, 3.0])
    alpha = scoped_alpha(s, torch.ones(4, dtype=torch.bool), 0.9, "step", chunk=4)
    torch.testing.assert_close(alpha, torch.tensor([0.9, 0.9 + 0.2 / 3, 0.9 + 0.4 / 3, 1.1]))
    torch.testing.assert_close(alpha.mean(), torch.tensor(1.0))


def _two_ranks(fn, parts):
    """Run ``fn(part, gather)`` on two threads that gather like two DDP ranks (a scalar stacked over ranks)."""
    import threading

    slots, barrier, out = [None, None], threading.Barrier(2), [None, None]

    def gather_for(rank):
        def gather(t):
            slots[rank] = t
            barrier.wait()
            stacked = torch.stack(list(slots))
            barrier.wait()  # nobody overwrites a slot before both have read it
            return stacked

        return gather

    def run(rank):
        out[rank] = fn(parts[rank], gather_for(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    [t.start() for t in threads], [t.join() for t in threads]
    return out


def test_step_scope_over_two_ranks_equals_one_process():
    # one process: S = [0, 1, 2, 3] -> alpha = [0.9, 0.9667, 1.0333, 1.1] (test above). Two ranks holding [0, 1]
    # and [2, 3] must give the same: min 0 and max 3 over both, and mu = mean of S_hat over both = 0.5 (rank 0's own
    # mean would be 1/6, which made its factors 0.9 + (1/3) * 0.1 / (1/6) = 1.1 for S = 1)
    s = torch.tensor([0.0, 1.0, 2.0, 3.0])
    valid = torch.ones(2, dtype=torch.bool)
    ranks = _two_ranks(lambda part, g: scoped_alpha(part, valid, 0.9, "step", chunk=2, gather=g), [s[:2], s[2:]])
    torch.testing.assert_close(torch.cat(ranks), scoped_alpha(s, torch.ones(4, dtype=torch.bool), 0.9, "step", 4))
    # scope 'rank' keeps each rank's own min, max and mean (mean factor 1 per rank)
    ranks = _two_ranks(lambda part, g: scoped_alpha(part, valid, 0.9, "rank", chunk=2, gather=g), [s[:2], s[2:]])
    torch.testing.assert_close(torch.cat(ranks), torch.tensor([0.9, 1.1, 0.9, 1.1]))


def test_alpha_degenerate_range_is_one():
    alpha = scoped_alpha(torch.full((4,), 0.7), torch.ones(4, dtype=torch.bool), 0.9, "step", chunk=4)
    assert alpha.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_beta_min_one_switches_shaping_off():
    alpha = scoped_alpha(torch.tensor([0.0, 5.0, 1.0]), torch.ones(3, dtype=torch.bool), 1.0, "step", chunk=3)
    torch.testing.assert_close(alpha, torch.ones(3))


def test_published_scope_takes_min_max_over_batch_but_mean_per_micro_batch():
    # batch S = [0, 1, 2, 3]: S_hat = [0, 1/3, 2/3, 1]; micro-batches of 2: mu = 1/6 and 5/6
    # first chunk: 0.9 + [0, 1/3] * 0.1 / (1/6) = [0.9, 1.1]; second: 0.9 + [2/3, 1] * 0.1 / (5/6) = [0.98, 1.02]
    s = torch.tensor([0.0, 1.0, 2.0, 3.0])
    alpha = scoped_alpha(s, torch.ones(4, dtype=torch.bool), 0.9, "published", chunk=2)
    torch.testing.assert_close(alpha, torch.tensor([0.9, 1.1, 0.98, 1.02]))
    micro = scoped_alpha(s, torch.ones(4, dtype=torch.bool), 0.9, "micro", chunk=2)
    # each chunk normalised on its own range: S_hat [0, 1] and [0, 1], mu 0.5 -> [0.9, 1.1] twice
    torch.testing.assert_close(micro, torch.tensor([0.9, 1.1, 0.9, 1.1]))


def test_released_scope_takes_min_max_per_mini_batch_and_mean_per_micro_batch():
    # Released dp_actor.update_policy: min/max over each per-device mini-batch, mu over each micro-batch.
    # 8 sequences, mini-batches of 4, micro-batches of 2. S = [0, 1, 2, 4 | 10, 12, 14, 18].
    # mini 0: range [0, 4] -> S_hat = [0, .25 | .5, 1]; mu = .125 -> 0.9 + S_hat * 0.1 / .125 = [0.9, 1.1];
    #   mu = .75 -> 0.9 + [.5, 1] * 0.1 / .75 = [0.966667, 1.033333]
    # mini 1: range [10, 18] -> S_hat = [0, .25 | .5, 1] again -> the same four alphas.
    s = torch.tensor([0.0, 1.0, 2.0, 4.0, 10.0, 12.0, 14.0, 18.0])
    valid = torch.ones(8, dtype=torch.bool)
    alpha = scoped_alpha(s, valid, 0.9, "released", chunk=2, mini_chunk=4)
    want = torch.tensor([0.9, 1.1, 0.966667, 1.033333] * 2)
    torch.testing.assert_close(alpha, want)
    torch.testing.assert_close(alpha.view(4, 2).mean(-1), torch.ones(4))  # mean 1 per micro-batch
    # `published` (one range [0, 18] over the batch) differs from mini 1 on: micro [10, 12] has
    # S_hat = [10/18, 12/18], mu = 11/18 -> 0.9 + S_hat * 0.1 * 18 / 11 = [0.990909, 1.009091]
    published = scoped_alpha(s, valid, 0.9, "published", chunk=2)
    torch.testing.assert_close(published[4:6], torch.tensor([0.990909, 1.009091]))
    # with one mini-batch per step, released == published
    one_mini = scoped_alpha(s, valid, 0.9, "released", chunk=2, mini_chunk=None)
    torch.testing.assert_close(one_mini, published)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"rho": 0.0}, "rho"), ({"beta_min": 1.5}, "beta_min"), ({"scale_scope": "global"}, "scale_scope")],
)
def test_invalid_knobs_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f"hooks.vppo.{key}"):
        VPPO(perturbation=None, **kwargs)


def test_the_method_formula_and_the_kernels_reference_agree():
    """TAS lives in the method (tas_alpha); vrl_kernels keeps its own reference to test the fused kernel against.
    The two must stay one formula: random scores, some rows empty, with and without given extrema."""
    from vrl.methods.vppo import tas_alpha
    from vrl_kernels import vppo_alpha_reference

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        score = torch.rand(9, generator=g)
        has = torch.rand(9, generator=g) > 0.2
        torch.testing.assert_close(tas_alpha(score, has, 0.9), vppo_alpha_reference(score, has, 0.9))
        lo, hi = torch.tensor(0.1), torch.tensor(0.8)
        torch.testing.assert_close(tas_alpha(score, has, 0.8, lo, hi), vppo_alpha_reference(score, has, 0.8, lo, hi))
