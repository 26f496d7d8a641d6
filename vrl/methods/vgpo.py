"""CogFlow's visual-gated policy optimisation (VGPO) as a rollout-time gate (others.md §7, cross-cutting note 4).

Published inference (``src/infer.py``): sample the perception segment alone (up to ``</WATCHING>``, <= 128 tokens,
T = 0.7, top_p 0.95), score it with VSR, accept it at >= tau = 0.75, else resample, at most 3 trials; keep the
accepted perception or the best one seen; then generate the reasoning conditioned on it. :func:`gate` is that
accept/resample logic (any draw, any scorer); :class:`VGPOSampler` runs it inside the rollout of every training
step: G perceptions per prompt drawn and gated independently (each draw a ``generate`` that stops at the closing
tag, so no forward step is spent past it), then one continuation each from prompt + accepted perception.

Training semantics are [NF] (the trainer's handling of gated perceptions was not verified). vrl's choice (the
spec's [ours]): the trajectory (accepted perception + reasoning) is trained as one response, the policy gradient on
every token (``train_perception=true``, the ``PerceptionMask`` hook a no-op). Because the accepted perception was
*selected* (a best-of-K draw, not a sample of the policy), ``train_perception=false`` masks its tokens out of the
policy-gradient term and trains the reasoning only. The sampler records per sequence ``vgpo_tries``,
``vgpo_score`` [N] and the perception token mask ``vgpo_perception`` [N, L] in ``rollout.extras``. Greedy
(validation) rollouts are not gated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vrl.hooks import Hook, StepContext, TokenWeights
from vrl.methods.cogflow import VSRReward
from vrl.sampler.hf import HFSampler, _expand_rows, _truncate_after_eos, sampling_logprobs, suppressed_token_ids
from vrl.sampler.prompts import encode_prompts
from vrl.types import Rollout, slice_vision


@dataclass
class GateResult:
    """Per item: the kept candidate, its score, and how many were drawn (1..max_tries)."""

    kept: list[Any]
    scores: list[float]
    tries: list[int]


def gate(
    draw: Callable[[list[int]], list[Any]],
    score: Callable[[list[int], list[Any]], list[float]],
    n: int,
    max_tries: int = 3,
    tau: float = 0.75,
) -> GateResult:
    """Draw a candidate for each of n items; redraw those scoring below ``tau``, at most ``max_tries`` draws in all;
    keep the first accepted candidate, else the best seen (the earliest among equal scores).

    Args:
        draw: item indices -> one new candidate each (called once per round, on the items still open).
        score: (item indices, their candidates) -> one score each.
    """
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    kept: list[Any] = [None] * n
    best, tries = [-math.inf] * n, [0] * n
    todo = list(range(n))
    for _ in range(max_tries):
        if not todo:
            break
        candidates = draw(todo)
        for i, c, s in zip(todo, candidates, score(todo, candidates)):
            tries[i] += 1
            if s > best[i]:
                kept[i], best[i] = c, float(s)
        todo = [i for i in todo if best[i] < tau]
    return GateResult(kept, best, tries)


def cut_after(tokenizer: Any, ids: list[int], marker: str) -> list[int]:
    """The shortest prefix of ``ids`` whose text contains ``marker`` (all of ``ids`` when it never appears)."""
    text = lambda k: tokenizer.decode(ids[:k], skip_special_tokens=True)  # noqa: E731
    if marker not in text(len(ids)):
        return ids
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if marker in text(mid) else (mid + 1, hi)
    return ids[:lo]


@dataclass
class Draw:
    """One perception draw: its tokens (up to and including the closing tag or EOS) and, with the sampler's
    ``logprobs``, their log-probs under the scorer's distribution (the training temperature, not the draw's)."""

    ids: list[int]
    logps: list[float] | None = None


@dataclass
class _Prompts:
    """The prompt side of the N = B*G sequences, encoded once per rollout (left-padded, [N, P])."""

    tensors: dict[str, torch.Tensor]  # input_ids, attention_mask (, mm_token_type_ids)
    pixel_values: torch.Tensor | None
    grid: torch.Tensor | None
    images_per_seq: torch.Tensor  # [N]
    idx: torch.Tensor  # [N] the prompt of each sequence
    enc: dict[str, torch.Tensor]
    images_per_prompt: torch.Tensor  # [B]


class VGPOSampler(HFSampler):
    """HFSampler whose rollouts gate the perception segment (:func:`gate`) before the reasoning is sampled.

    A draw is a ``generate`` call that stops at ``close_tag`` (transformers ``stop_strings``): a sequence that
    wrote the tag stops there and costs no more forward steps (the batch ends when every draw has stopped or hit
    ``perception_tokens``). The reasoning is then one ``generate`` call on prompt + accepted perception, and the
    rollout's response is perception + continuation. With ``logprobs`` both parts carry their sampling log-probs
    (``Rollout.old_logprobs``, at ``temperature``, the distribution the loss scores).

    Args (besides :class:`~vrl.sampler.hf.HFSampler`'s; ``max_new_tokens`` caps the continuation):
        perception_tokens: cap of one perception draw (128 published).
        perception_temperature, perception_top_p: sampling of the draws (0.7 / 0.95 published).
        max_tries: K, draws per sequence at most (3 published).
        tau: acceptance threshold on the scorer (0.75 published).
        scorer: ``scorer(texts, rows) -> scores``; default VSR of the bare perception (no format needed).
        close_tag: where a perception ends (the draw's stop string).
    """

    def __init__(
        self,
        *args: Any,
        perception_tokens: int = 128,
        perception_temperature: float = 0.7,
        perception_top_p: float = 0.95,
        max_tries: int = 3,
        tau: float = 0.75,
        scorer: Any = None,
        close_tag: str = "</WATCHING>",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if max_tries < 1 or perception_tokens < 1:
            raise ValueError("sampler: max_tries and perception_tokens must be >= 1")
        if not close_tag:
            raise ValueError("sampler.close_tag must be a non-empty string (the perception's stop string)")
        self.perception_tokens, self.max_tries, self.tau, self.close_tag = perception_tokens, max_tries, tau, close_tag
        self.perception_temperature, self.perception_top_p = perception_temperature, perception_top_p
        self.scorer = scorer if scorer is not None else VSRReward(require_format=False)

    @torch.no_grad()
    def generate(self, vlm, samples: list[dict], group_size: int | None = None, greedy: bool = False) -> Rollout:
        if greedy:
            return super().generate(vlm, samples, group_size, greedy)
        g = group_size or self.group_size
        tok = vlm.processor.tokenizer
        prompts = self._encode(vlm, samples, g)
        rows = [samples[i // g] for i in range(len(samples) * g)]

        def draw(todo: list[int]) -> list[Draw]:
            new, logps = self._sample(vlm, prompts, todo, [[] for _ in todo], perception=True)
            return [self._perception(tok, new[k], None if logps is None else logps[k]) for k in range(len(todo))]

        def score(todo: list[int], cands: list[Draw]) -> list[float]:
            texts = [tok.decode(c.ids, skip_special_tokens=True) for c in cands]
            return self.scorer(texts, [rows[i] for i in todo])

        result = gate(draw, score, len(rows), self.max_tries, self.tau)
        every = list(range(len(rows)))
        new, logps = self._sample(vlm, prompts, every, [d.ids for d in result.kept], perception=False)
        rollout = self._rollout(vlm, samples, prompts, result.kept, new, logps)
        rollout.extras["vgpo_tries"] = torch.tensor(result.tries, dtype=torch.float32)
        rollout.extras["vgpo_score"] = torch.tensor(result.scores, dtype=torch.float32)
        return rollout

    def _encode(self, vlm, samples: list[dict], g: int) -> _Prompts:
        enc, images_per_prompt = encode_prompts(vlm.processor, samples, self.system_prompt, self.prompt_suffix)
        idx = torch.arange(len(samples)).repeat_interleave(g)
        tensors = {k: enc[k][idx] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in enc}
        pixel_values = grid = None
        if "pixel_values" in enc:
            pixel_values, grid = slice_vision(enc["pixel_values"], enc["image_grid_thw"], images_per_prompt, idx)
        return _Prompts(tensors, pixel_values, grid, images_per_prompt[idx], idx, enc, images_per_prompt)

    def _sample(
        self, vlm, prompts: _Prompts, seqs: list[int], prefixes: Sequence[list[int]], perception: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """New tokens [n, T] for sequences ``seqs`` after their prompt + ``prefixes`` (a perception draw: at the
        draw's settings, stopping at ``close_tag``; else the reasoning), and their log-probs [n, T] at
        ``temperature`` when the sampler returns log-probs (else None). Rows that stopped early hold padding."""
        model, tok = vlm.model, vlm.processor.tokenizer
        device = next(model.parameters()).device
        sel = torch.tensor(seqs)
        inputs = _with_prefix({k: v[sel] for k, v in prompts.tensors.items()}, prefixes, tok.pad_token_id)
        if prompts.pixel_values is not None:
            pv, grid = slice_vision(prompts.pixel_values, prompts.grid, prompts.images_per_seq, sel)
            inputs.update(pixel_values=pv, image_grid_thw=grid)
        kw = dict(
            max_new_tokens=self.perception_tokens if perception else self.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            suppress_tokens=suppressed_token_ids(tok),
            do_sample=True,
            temperature=self.perception_temperature if perception else self.temperature,
            top_p=self.perception_top_p if perception else self.top_p,
            top_k=self.top_k or None,
            output_logits=self.logprobs,
            return_dict_in_generate=True,
        )
        if perception:
            kw.update(stop_strings=[self.close_tag], tokenizer=tok)
        was_training = model.training
        model.eval()
        out = model.generate(**{k: v.to(device) for k, v in inputs.items()}, **kw)
        model.train(was_training)
        new = out.sequences[:, inputs["input_ids"].shape[1] :]
        if not self.logprobs:
            return new.cpu(), None
        logits = torch.stack(out.logits, dim=1)  # [n, T, V], raw: rescaled to the scorer's temperature
        return new.cpu(), sampling_logprobs(logits, new, self.temperature, kw["suppress_tokens"]).cpu()

    def _perception(self, tok: Any, new: torch.Tensor, logps: torch.Tensor | None) -> Draw:
        """A draw's own tokens: through its first EOS, then cut after ``close_tag`` (the stop's padding dropped)."""
        ids = new.tolist()
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id) + 1]
        ids = cut_after(tok, ids, self.close_tag)
        return Draw(ids, None if logps is None else logps[: len(ids)].tolist())

    def _rollout(
        self, vlm, samples: list[dict], prompts: _Prompts, kept: Sequence[Draw], new: torch.Tensor, logps
    ) -> Rollout:
        """The rollout of response = accepted perception + continuation (``vgpo_perception`` marks the former)."""
        tok, device = vlm.processor.tokenizer, next(vlm.model.parameters()).device
        response, mask, perception_mask, old = _joined(kept, new, logps, tok)
        prompt = prompts.tensors
        mm = None
        if "mm_token_type_ids" in prompt:
            mm = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(response)], 1).to(device)
        rows = _expand_rows(
            samples, prompts.idx, prompts.enc.get("image_grid_thw"), prompts.images_per_prompt, vlm.patch_size
        )
        for row, n in zip(rows, mask.sum(-1).tolist()):
            row["response_tokens"] = int(n)
        pixel_values, grid = prompts.pixel_values, prompts.grid
        return Rollout(
            input_ids=torch.cat([prompt["input_ids"], response], 1).to(device),
            attention_mask=torch.cat([prompt["attention_mask"], mask.to(prompt["attention_mask"].dtype)], 1).to(device),
            response_mask=mask.float().to(device),
            pixel_values=pixel_values.to(device) if pixel_values is not None else None,
            image_grid_thw=grid.to(device) if grid is not None else None,
            images_per_seq=prompts.images_per_seq,
            group_ids=prompts.idx.to(device),
            samples=rows,
            responses=tok.batch_decode(response, skip_special_tokens=True),
            mm_token_type_ids=mm,
            old_logprobs=None if old is None else (old * mask).to(device),
            extras={"vgpo_perception": (perception_mask * mask).to(device)},
        )


def _with_prefix(prompt: dict[str, torch.Tensor], perceptions: Sequence[list[int]], pad_id: int) -> dict:
    """Prompt [N, P] + perception ids, left-padded together so every sequence ends flush (generate's layout)."""
    width = max(len(p) for p in perceptions)
    prefix = torch.full((len(perceptions), width), pad_id, dtype=prompt["input_ids"].dtype)
    for n, p in enumerate(perceptions):
        if p:
            prefix[n, width - len(p) :] = torch.tensor(p, dtype=prefix.dtype)
    real = (torch.arange(width)[None] >= width - torch.tensor([len(p) for p in perceptions])[:, None]).long()
    inputs = {
        "input_ids": torch.cat([prompt["input_ids"], prefix], 1),
        "attention_mask": torch.cat([prompt["attention_mask"], real.to(prompt["attention_mask"].dtype)], 1),
    }
    if "mm_token_type_ids" in prompt:
        inputs["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(prefix)], 1)
    return inputs


def _joined(
    kept: Sequence[Draw], cont: torch.Tensor, cont_logps: torch.Tensor | None, tok: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(response [N, L] = perception + continuation right-padded and cut after EOS, valid mask [N, L], perception
    mask [N, L], log-probs [N, L] or None); a perception that already ended with EOS gets no continuation."""
    ended = [bool(d.ids) and d.ids[-1] == tok.eos_token_id for d in kept]
    seqs = [list(d.ids) + ([] if e else cont[n].tolist()) for n, (d, e) in enumerate(zip(kept, ended))]
    length = max(len(s) for s in seqs)
    response = torch.tensor([s + [tok.pad_token_id] * (length - len(s)) for s in seqs])
    response, mask = _truncate_after_eos(response, tok.eos_token_id, tok.pad_token_id)
    mask = mask * (torch.arange(length)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    perception = (torch.arange(length)[None] < torch.tensor([len(d.ids) for d in kept])[:, None]).float()
    if cont_logps is None:
        return response, mask, perception, None
    lps = [list(d.logps) + ([] if e else cont_logps[n].tolist()) for n, (d, e) in enumerate(zip(kept, ended))]
    old = torch.tensor([lp + [0.0] * (length - len(lp)) for lp in lps])
    return response, mask, perception, old


class PerceptionMask(Hook):
    """H9: with ``train_perception=false`` the gated perception's tokens leave the policy-gradient term (the
    reasoning after it is trained); with ``true`` (default) nothing changes. Reads ``rollout.extras
    ["vgpo_perception"]`` written by :class:`VGPOSampler` (absent: no gate ran, nothing masked). H5: logs the gate's
    ``vgpo/tries_mean`` (draws per sequence), ``vgpo/accepted_frac`` (kept perception >= ``tau``) and
    ``vgpo/score_mean`` (the kept perceptions' scores) of each draw.

    Args:
        train_perception: keep the perception tokens in the policy-gradient term ([NF] semantics, see above).
        tau: the sampler's acceptance threshold (for ``accepted_frac``; the preset interpolates it).
    """

    order = 50

    def __init__(self, train_perception: bool = True, tau: float = 0.75) -> None:
        self.train_perception, self.tau = train_perception, tau

    def on_rollout(self, rollout: Rollout, ctx: StepContext) -> Rollout:
        if "vgpo_tries" in rollout.extras:
            tries, score = rollout.extras["vgpo_tries"].float(), rollout.extras["vgpo_score"].float()
            accepted = (score >= self.tau).float().mean()
            ctx.log({"vgpo/tries_mean": float(tries.mean()), "vgpo/accepted_frac": float(accepted)})
            ctx.log({"vgpo/score_mean": float(score.mean())})
        return rollout

    def token_weights(self, rollout: Rollout, ctx: StepContext) -> TokenWeights | None:
        if self.train_perception or "vgpo_perception" not in rollout.extras:
            return None
        return TokenWeights(loss=1.0 - rollout.extras["vgpo_perception"].to(rollout.response_mask))
