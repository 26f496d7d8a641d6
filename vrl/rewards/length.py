"""Length-based reward terms. They read ``sample["response_tokens"]``, which the rollout sets per sequence."""

from __future__ import annotations


class OverlongPenalty:
    """DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, eq. 13), in tokens.

    r = 0 for L <= max_len - cache_len; (max_len - cache_len - L) / cache_len inside the cache window;
    -1 beyond ``max_len``. DAPO used max_len 20480 with a 4096-token cache.

    Args:
        max_len: the expected maximum response length (usually ``sampler.max_new_tokens``).
        cache_len: width of the soft-penalty window before ``max_len``; None = 20% of ``max_len`` (DAPO's
            4096 / 20480), at least 1 token.
        weight: weight in the reward sum.
        name: metric name.
    """

    def __init__(self, max_len: int, cache_len: int | None = None, weight: float = 1.0, name: str = "overlong") -> None:
        if cache_len is None:
            cache_len = max(1, round(0.2 * max_len))
        if not 0 < cache_len <= max_len:
            raise ValueError(f"reward.overlong: need 0 < cache_len <= max_len, got {cache_len}, {max_len}")
        self.max_len, self.cache_len, self.weight, self.name = max_len, cache_len, weight, name

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        out = []
        for sample in samples:
            length = int(sample["response_tokens"])
            start = self.max_len - self.cache_len
            if length <= start:
                out.append(0.0)
            elif length <= self.max_len:
                out.append((start - length) / self.cache_len)
            else:
                out.append(-1.0)
        return out


class LengthPenalty:
    """r = -|len(response) - target| / target: keeps answers near a target length (shaping, not accuracy).

    Args:
        target: the preferred length.
        unit: ``chars`` (of the decoded text) or ``tokens``.
        weight: weight in the reward sum.
        name: metric name.
    """

    def __init__(self, target: int, unit: str = "chars", weight: float = 1.0, name: str = "length") -> None:
        if target < 1 or unit not in ("chars", "tokens"):
            raise ValueError(f"reward.length: need target >= 1 and unit chars|tokens, got {target}, {unit!r}")
        self.target, self.unit, self.weight, self.name = target, unit, weight, name

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        lengths = [len(r) for r in responses] if self.unit == "chars" else [int(s["response_tokens"]) for s in samples]
        return [-abs(n - self.target) / self.target for n in lengths]
