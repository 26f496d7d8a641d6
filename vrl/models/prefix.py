"""No-grad scoring that runs a repeated prompt once: prefill per distinct prompt, then the G responses on its cache.

A GRPO rollout holds each prompt G times, and in a VLM the prompt (image tokens included) is most of every
sequence: at B = 16, G = 8 and 4 response tokens, a teacher-forced pass spends nearly all of its work on the same
prompt eight times over. Here each run of equal prompts (same token ids, mask and images, as a group's copies are
laid out) is prefilled once with its key/value cache, the cache is copied to the run's rows, and only the response
tokens go through the model again. The logits that predict the responses are the same as one full pass's up to
float rounding (attention over the same keys, summed in another order); ``tests/models/test_prefix.py`` holds them
to 1e-5.

Used for the no-grad passes (old log-probs, the reference, VPPO's perturbed images when the perturbation is
shared per group, ``hooks.vppo.mask_scope=group``). Off with ``++model.share_repeated_work=false`` (the same switch
as :mod:`vrl.models.dedupe`, whose wrappers mark a model as supported). Any other model, or a rollout with no
repeated prompt, takes the plain full pass.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from vrl.models.dedupe import _SUPPORTED
from vrl.types import Rollout


def shared_inner(model: nn.Module) -> nn.Module | None:
    """The inner Qwen-VL model when :mod:`vrl.models.dedupe`'s wrappers are installed on it, else None."""
    inner = next((m for m in model.modules() if type(m).__name__ in _SUPPORTED), None)
    return inner if inner is not None and "get_rope_index" in vars(inner) else None


def prompt_runs(rollout: Rollout) -> list[tuple[int, int]]:
    """Half-open row ranges [start, end) of consecutive sequences with the same prompt and the same images.

    Rows are compared with the row before them (a group's copies are adjacent); equal prompts far apart are
    separate runs, which is correct, only not shared.
    """
    n, width = rollout.num_sequences, rollout.prompt_width
    ids, mask = rollout.input_ids[:, :width], rollout.attention_mask[:, :width]
    same = ((ids[1:] == ids[:-1]) & (mask[1:] == mask[:-1])).all(-1) & _same_images_as_previous(rollout)
    cuts = [0, *(torch.nonzero(~same).squeeze(-1) + 1).tolist(), n]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def _same_images_as_previous(rollout: Rollout) -> torch.Tensor:
    """[N - 1] bool: row i + 1 carries the same images as row i (grids and pixels)."""
    n = rollout.num_sequences
    if rollout.pixel_values is None:
        return torch.ones(n - 1, dtype=torch.bool, device=rollout.input_ids.device)
    grid, counts = rollout.image_grid_thw, rollout.images_per_seq
    if bool((counts == counts[0]).all()) and bool((grid == grid[0]).all()):  # one layout for every row: one compare
        rows = rollout.pixel_values.reshape(n, -1)
        return (rows[1:] == rows[:-1]).all(-1).to(rollout.input_ids.device)
    images = _row_images(rollout)
    same = [_equal_images(images[i + 1], images[i]) for i in range(n - 1)]
    return torch.tensor(same, dtype=torch.bool, device=rollout.input_ids.device)


def _row_images(rollout: Rollout) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per row, its images as (grid [3], patches [p, D]) pairs (empty lists for a text-only rollout)."""
    if rollout.pixel_values is None:
        return [[] for _ in range(rollout.num_sequences)]
    grid = rollout.image_grid_thw
    patches = torch.split(rollout.pixel_values, grid.prod(-1).tolist())
    out, image = [], 0
    for count in rollout.images_per_seq.tolist():
        out.append([(grid[i], patches[i]) for i in range(image, image + count)])
        image += count
    return out


def _equal_images(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(ga, gb) and torch.equal(pa, pb) for (ga, pa), (gb, pb) in zip(a, b))


def micro_batches(runs: list[tuple[int, int]], micro_batch_size: int) -> list[list[tuple[int, int]]]:
    """Whole runs packed in order into chunks of at most ``micro_batch_size`` rows (a longer run is a chunk alone)."""
    chunks: list[list[tuple[int, int]]] = [[]]
    rows = 0
    for start, end in runs:
        if chunks[-1] and rows + end - start > micro_batch_size:
            chunks.append([])
            rows = 0
        chunks[-1].append((start, end))
        rows += end - start
    return chunks


def shared_prefix_logits(
    model: nn.Module, rollout: Rollout, runs: list[tuple[int, int]], temperature: float = 1.0, suppress_ids=None
) -> torch.Tensor:
    """Logits [n, L, V] predicting the L response tokens, as ``vrl.models.scoring.response_logits`` returns them.

    Args:
        model: a Qwen-VL policy whose inner model :func:`shared_inner` finds.
        rollout: n sequences, prompt width P, response width L.
        runs: :func:`prompt_runs` of this rollout (row ranges starting at 0 and covering it).
    """
    width, length = rollout.prompt_width, rollout.response_mask.shape[1]
    inputs = rollout.model_inputs()
    positions = full_positions(shared_inner(model), inputs)  # [3, n, P + L], as the full pass computes them
    heads = torch.tensor([start for start, _ in runs])
    owner = torch.cat([torch.full((end - start,), i) for i, (start, end) in enumerate(runs)])
    head = rollout.select(heads).model_inputs()
    prefill = {k: head[k][:, :width] for k in ("input_ids", "attention_mask")}
    prefill.update({k: head[k] for k in ("pixel_values", "image_grid_thw") if k in head})
    device = rollout.input_ids.device
    out = model(**prefill, position_ids=positions[:, heads.to(device), :width], use_cache=True, logits_to_keep=1)
    logits = out.logits[owner.to(device)]  # [n, 1, V]: the last prompt position predicts response token 0
    if length > 1:
        cache = out.past_key_values
        cache.reorder_cache(owner.to(device))  # row i of the cache <- its run's head
        tail = model(
            input_ids=inputs["input_ids"][:, width : width + length - 1],
            attention_mask=inputs["attention_mask"][:, : width + length - 1],
            position_ids=positions[:, :, width : width + length - 1],
            **{_cache_kwarg(model): cache},
            use_cache=True,
        )
        logits = torch.cat([logits, tail.logits], dim=1)
    if temperature != 1.0:
        logits = logits / temperature
    if suppress_ids:
        logits = logits.index_fill(-1, torch.tensor(suppress_ids, device=logits.device), -1e9)
    return logits


def full_positions(inner: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """M-RoPE positions [3, n, S] of the whole sequences, the ones a full forward without a cache would use."""
    if inputs.get("mm_token_type_ids") is None or inputs.get("image_grid_thw") is None:
        raise ValueError("shared-prefix scoring needs image rows with mm_token_type_ids (a Qwen-VL processor)")
    positions, _ = inner.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    return positions


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5.x renames ``past_key_values`` to ``cache``; use whichever the forward declares."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT's forward takes **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def score_shared(
    model: nn.Module,
    rollout: Rollout,
    temperature: float,
    micro_batch_size: int,
    impl: str = "torch",
    suppress_ids=None,
) -> torch.Tensor | None:
    """``vrl.models.scoring.score_logprobs`` with each run of equal prompts prefilled once, or None when that does
    not apply (:func:`can_share` false, or no prompt repeats); micro-batches then hold whole runs, and one with
    no repeat in it (VPPO's paired pass: the clean copies, then per-response perturbed ones) takes the full pass."""
    from vrl.models.scoring import response_logits, response_targets, token_stats

    if not can_share(model, rollout) or len(runs := prompt_runs(rollout)) == rollout.num_sequences:
        return None
    chunks = []
    for chunk in micro_batches(runs, micro_batch_size):
        whole = chunk[0][0] == 0 and chunk[-1][1] == rollout.num_sequences
        micro = rollout if whole else rollout.select(torch.arange(chunk[0][0], chunk[-1][1]))
        local = [(start - chunk[0][0], end - chunk[0][0]) for start, end in chunk]
        if len(local) == micro.num_sequences:  # nothing repeats here (e.g. per-response perturbed images)
            logits = response_logits(model, micro, temperature, suppress_ids)  # one forward instead of two
        else:
            logits = shared_prefix_logits(model, micro, local, temperature, suppress_ids)
        chunks.append(token_stats(logits, response_targets(micro), impl=impl)[0])
    return torch.cat(chunks) * rollout.response_mask


def response_logits_shared(
    model: nn.Module, rollout: Rollout, temperature: float = 1.0, suppress_ids=None
) -> torch.Tensor:
    """``vrl.models.scoring.response_logits``, with each repeated prompt prefilled once where :func:`can_share`.

    Works under autograd too (the training loss): the copied cache rows are an ``index_select`` of the prefill's,
    so each copy's gradient flows back into the one prompt pass, summed as G full passes would sum it.
    """
    from vrl.models.scoring import response_logits

    if can_share(model, rollout) and len(runs := prompt_runs(rollout)) < rollout.num_sequences:
        return shared_prefix_logits(model, rollout, runs, temperature, suppress_ids)
    return response_logits(model, rollout, temperature, suppress_ids)


def can_share(model: nn.Module, rollout: Rollout) -> bool:
    """Whether :func:`shared_prefix_logits` applies.

    Needs a supported model (:func:`shared_inner`), image rows with M-RoPE inputs and every image in the prompt
    (a multi-turn rollout's observations put images in the response region), and a key/value cache: not
    under activation checkpointing in training mode (transformers turns the cache off there), and not on an
    FSDP-sharded model, whose forwards are collectives that every rank must run equally often (two per
    micro-batch here, one on the plain path).
    """
    if rollout.pixel_values is None or rollout.mm_token_type_ids is None or rollout.num_sequences < 2:
        return False
    if bool(rollout.mm_token_type_ids[:, rollout.prompt_width :].any()):  # images after the prompt (tool observations)
        return False
    if shared_inner(model) is None:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = "is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing") else (
        "is_gradient_checkpointing")  # fmt: skip
    if model.training and getattr(base, name, False):
        return False
    from vrl.models.sharding import is_sharded

    return not is_sharded(model)
