"""token_mean under a real 2-process gloo group: the denominator is the global token count."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vrl.methods.loss_agg import TokenMean


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # rank 0: token losses w * (1, 2, 3), all valid; rank 1: w * (5, 5, 5), all masked (zero tokens)
        x = torch.tensor([[1.0, 2.0, 3.0]]) if rank == 0 else torch.tensor([[5.0, 5.0, 5.0]])
        mask = torch.ones(1, 3) if rank == 0 else torch.zeros(1, 3)
        w = torch.ones(3, requires_grad=True)
        agg = TokenMean()
        norm = agg.normalizer(mask)
        dist.all_reduce(norm)  # the loop's strategy.reduce(normalizer, "mean"): sum / world
        norm = norm / 2
        agg(w * x, mask, norm).backward()
        dist.all_reduce(w.grad)  # DDP averages gradients
        out[rank] = (w.grad / 2).tolist()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_one_without_tokens_give_the_global_token_mean_gradient():
    # global token mean = (1 w0 + 2 w1 + 3 w2) / 3 (3 tokens in all) -> d/dw = (1/3, 2/3, 1);
    # with the per-rank clamp(min=1) the denominator was (3 + 1) / 2 * 2 = 4 -> (0.25, 0.5, 0.75)
    with mp.Manager() as manager:
        out = manager.dict()
        # fork, not spawn: a spawned child must import this test module by name, which fails when pytest runs
        # as the `pytest` script (the repository root is then not on the child's sys.path)
        mp.start_processes(_rank, args=(_free_port(), out), nprocs=2, join=True, start_method="fork")
        grads = dict(out)
    for rank in (0, 1):
        torch.testing.assert_close(torch.tensor(grads[rank]), torch.tensor([1 / 3, 2 / 3, 1.0]))
