"""Multi-turn SFT items: a trace of policy turns, replayed through the run's multi-turn sampler and fitted on the
policy's tokens only (hook H11, inside an ``sft`` stage).

A single-turn SFT item is ``(index, response[, prompt])``; a multi-turn one is ``(index, [turn, turn, ...][,
prompt])``: per policy turn a text or its token ids (a tool call, then after the tool's observation the answer,
...). What the policy sees between its turns (the tool's output image and text) is not in the item: the trace is
replayed by the run's sampler (``sampler=multi_turn``, its ``forced_turns``), which runs the tools and appends the
observations exactly as in a rollout, with no model call and no random draw. The NLL is then taken on the replay's
``response_mask``: the policy turns, never the observations.

Text turns are tokenised as a single-turn SFT response is (``ctx.pairs``: no special tokens, EOS appended; the step
context has no tokenizer of its own) and keep the EOS on the **last** turn only, so the model learns to end its
answer, while a call turn ends at its closing tag as a sampled one does. Items stay plain data (texts, ints) for
the checkpoint, so a resumed stage replays the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from vrl.types import Rollout

#: Metrics of a replayed batch (per step): tool calls and invalid calls per trace.
REPLAY_METRICS = ("sft/tool_calls_per_trace", "sft/invalid_calls_per_trace")


def is_multi_turn(response: Any) -> bool:
    """Whether a kept response is a trace of turns (a list) rather than one response text."""
    return not isinstance(response, str)


def plain_trace(trace: Sequence[Any]) -> list[str | list[int]]:
    """A trace as plain data (what a checkpoint holds and gives back): each turn a str or a list of ints."""
    return [str(t) if isinstance(t, str) else [int(i) for i in t] for t in trace]


def trace_ids(ctx: Any, traces: Sequence[Sequence[str | Sequence[int]]]) -> list[list[list[int]]]:
    """Token ids per turn of each trace: ids as given; texts tokenised by ``ctx.pairs`` (the run's SFT
    tokenisation, EOS appended), the EOS kept on the trace's last turn only."""
    texts = [t for trace in traces for t in trace if isinstance(t, str)]
    tokens: list[list[int]] = []
    if texts:  # text-only prompts: only the response region is read
        forced = ctx.pairs([{"prompt": ""} for _ in texts], texts)
        region = forced.input_ids[:, forced.input_ids.shape[1] - forced.response_mask.shape[1] :]
        tokens = [region[i][forced.response_mask[i].bool()].tolist() for i in range(len(texts))]
    out, it = [], iter(tokens)
    for trace in traces:
        ids = [next(it) if isinstance(t, str) else [int(i) for i in t] for t in trace]
        last = len(trace) - 1
        out.append([x[:-1] if isinstance(t, str) and k < last else x for k, (t, x) in enumerate(zip(trace, ids))])
    return out


def replayed_sft(ctx: Any, rows: list[dict], traces: Sequence[Sequence[str | Sequence[int]]]) -> Rollout:
    """The teacher-forced batch of multi-turn SFT items: each row's trace replayed by the run's sampler.

    Args:
        ctx: the step context (its ``generate`` is the run's sampler, its ``pairs`` the SFT tokenisation).
        rows: the items' data rows (prompt, images, ...), one per trace.
        traces: per row, its policy turns (texts or token ids); a single-turn response is a one-turn trace.

    Returns:
        The replay's Rollout (N = len(rows) trajectories) with ``response_mask`` on the policy turns only, no
        ``old_logprobs``; ``sft_backward`` fits it like a single-turn batch.

    Raises:
        ValueError: the sampler is single-turn (it ignores given turns), or a row did not replay its trace as
            given (the trace does not end the trajectory with EOS, a turn has tokens past its end, a budget cut
            it), naming the row.
    """
    given = trace_ids(ctx, traces)
    # A replay samples nothing; a sampler that would (a single-turn one ignores forced_turns, or a trace whose last
    # turn is a call) is refused below, after at most one wasted token per row.
    out = ctx.generate(
        [{**row, "forced_turns": ids} for row, ids in zip(rows, given)], group_size=1, greedy=True, max_new_tokens=1
    )
    for row, sample, ids in zip(rows, out.samples, given):
        where = f"sft: row uid={row.get('uid')!r}"
        if "turns" not in sample:
            raise ValueError(
                f"{where} is a multi-turn item ({len(ids)} turns) but the run's sampler is single-turn: multi-turn "
                "SFT items are replayed by sampler=multi_turn (a tool preset such as +method=zoom sets it)"
            )
        got = [t["ids"] for t in sample["turns"]]
        if got != ids or sample["stop"] != "answer":
            raise ValueError(
                f"{where} did not replay its {len(ids)} given turns (got {len(got)}, stop={sample['stop']!r}): a "
                "trace must end the trajectory (its last turn ends with EOS) and each call turn must end at the "
                "sampler's call_close, within sampler.max_turns and max_total_tokens"
            )
    calls = [s.get("tool_calls", 0) for s in out.samples]
    invalid = [s.get("invalid_calls", 0) for s in out.samples]
    ctx.log({REPLAY_METRICS[0]: sum(calls) / len(calls), REPLAY_METRICS[1]: sum(invalid) / len(invalid)})
    return replace(out, old_logprobs=None)
