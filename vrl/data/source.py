"""PromptSource: the training loop's own sampler of prompt batches.

RL draws prompts at its own pace (dynamic sampling refills a batch, gates drop prompts, curricula switch
datasets), so the loop owns the data order instead of a DataLoader. The order is an epoch-seeded
permutation sharded by rank; its state is two integers, which makes resuming exact.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch.utils.data import IterableDataset


class PromptSource:
    """Deterministic, resumable stream of rows from a map-style dataset.

    Args:
        dataset: anything with ``__len__`` and ``__getitem__(int) -> dict`` (a ``datasets.Dataset`` or
            the synthetic stream).
        batch_size: B, prompts per step (per rank).
        seed: permutation seed (epoch e uses seed + e).
        shuffle: False keeps dataset order (curricula that are ordered on purpose).
        rank: this process's data-parallel rank.
        world_size: number of data-parallel ranks; rank r takes positions r, r+W, ...
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if len(dataset) < world_size:
            raise ValueError(f"dataset has {len(dataset)} rows, fewer than {world_size} ranks")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.cursor = 0  # position within this rank's shard of the current epoch
        self.rows_drawn = 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        usable = n - n % self.world_size  # equal shards keep ranks in lock-step
        return order[self.rank : usable : self.world_size]

    def next_rows(self, n: int) -> list[dict]:
        """The next ``n`` rows, wrapping into a new epoch (and a new permutation) when needed."""
        rows = []
        while len(rows) < n:
            if self.cursor >= len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._epoch_order()
            index = self._order[self.cursor]
            row = dict(self.dataset[index])
            row.setdefault("uid", str(index))
            rows.append(row)
            self.cursor += 1
        self.rows_drawn += n
        return rows

    def next_batch(self) -> list[dict]:
        return self.next_rows(self.batch_size)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "rows_drawn": self.rows_drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.rows_drawn = int(state.get("rows_drawn", 0))
        self._order = self._epoch_order()


class StepTicks(IterableDataset):
    """0, 1, 2, ... : Lightning's train loader only paces steps; rows come from PromptSource.

    Args:
        length: ticks per Lightning epoch (the run's ``max_steps``, so the progress bar has a total);
            None is endless. A new epoch simply continues the ticks, so skipped steps never end a run early.
    """

    def __init__(self, length: int | None = None) -> None:
        self.length = length

    def __iter__(self):
        return iter(range(self.length)) if self.length else iter(itertools.count())

    def __len__(self) -> int:
        if not self.length:
            raise TypeError("endless StepTicks has no length")
        return self.length


def dataset_row(dataset: Any, index: int) -> dict:
    """Row ``index`` as ``PromptSource`` hands it out (a copy, with a uid)."""
    row = dict(dataset[index])
    row.setdefault("uid", str(index))
    return row
