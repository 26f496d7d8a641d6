"""Vision-SR1 (arXiv 2508.19652; github.com/zli12321/Vision-SR1): the policy judges its own visual description.

Pass 1 (the rollout): image + question -> ``<description>...</description> <think>...</think> \\boxed{ans}``.
Pass 2 (inside the reward): the *same weights*, text only, get the description and the question and answer;
the visual self-reward ``r_vis`` is whether that answer is right, i.e. whether the description carried what the
question needs. Pass-2 tokens are never trained: they live only inside the reward call.

- :class:`SeeThinkFormat`: ``r_fmt`` = 1 iff the whole output matches the pattern, after the published
  whitespace normalisation around ``<``, ``>`` and ``/``.
- :class:`VisualSelfReward`: ``r_vis`` through any :class:`~vrl.judges.base.ModelJudge` (default the policy,
  :class:`~vrl.judges.PolicyJudge`; a frozen local model or an HTTP server for ablations).
- v1 reward (released code): ``r = (1 - w) acc + w fmt + r_vis`` with w = 0.1, the reward set's weighted sum
  (``conf/reward/vision_sr1.yaml``) under plain GRPO.
- :class:`DecoupledSpans` (v2, "multi-reward policy optimisation"): the visual reward and the answer/format
  reward are group-normalised separately. How the two advantages combine is [NF]; vrl's default
  (``combine=span``, the spec's [ours]) puts ``A_vis`` on the description tokens and ``A_ans`` on every other
  response token (a token-level advantage [N, L]); ``combine=sum`` adds them on every token.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vrl.data.row_template import check_template, fill
from vrl.methods.multi_reward import Aggregation
from vrl.rewards.accuracy import Accuracy
from vrl.rewards.extract import AnswerExtractor, last_tag_content

#: Pass 2's user message (the released prompt asks for reasoning in think tags and a boxed answer).
PASS2_TEMPLATE = (
    "Text description of an image: {description}\nQuestion: {question}\n"
    "You cannot see the image; use only the description. Reason inside <think> </think>, then give the final "
    "answer in \\boxed{{}}."
)
#: The whole pass-1 output: description, reasoning, then a boxed answer (text may follow the box).
SEE_THINK_PATTERN = r"<description>.+?</description>\s*<think>.+?</think>.*?\\boxed\{.+\}.*"
COMBINE = ("span", "sum")
_SPACE_AROUND = re.compile(r"\s*([<>/])\s*")


def normalize_tags(text: str) -> str:
    """The released format check's normalisation: whitespace around ``<``, ``>`` and ``/`` removed."""
    return _SPACE_AROUND.sub(r"\1", text.strip())


def question_of(sample: Mapping[str, Any]) -> str:
    """The row's question text without its image placeholders (pass 2 sees no image)."""
    return str(sample["prompt"]).replace("<image>", " ").strip()


def grade_replies(
    judge: Any,
    chats: Mapping[int, Sequence[Mapping[str, str]]],
    samples: Sequence[dict],
    grade: Any,
    failure_value: float,
    counts: Counter,
) -> list[float]:
    """One value per sample: the model judge's reply to ``chats[i]`` graded by ``grade([reply], [samples[i]])``;
    ``failure_value`` for a sample not asked (not in ``chats``) or whose call failed (counted as ``failed``).
    The second pass of Vision-SR1 and RACRO's reasoner are both this: ask a text model, grade its answer."""
    asked = list(chats)
    replies = judge.complete([chats[i] for i in asked]) if asked else []
    values = [failure_value] * len(samples)
    for i, reply in zip(asked, replies):
        if not reply.ok:
            counts["failed"] += 1
            continue
        values[i] = float(grade([reply.text], [samples[i]])[0])
    return values


class SeeThinkFormat:
    """1.0 when the whole response is ``<description>..</description> <think>..</think> .. \\boxed{..}``, else 0.

    Args:
        weight: the reward set's weight (0.1 = w in the released ``(1 - w) acc + w fmt + r_vis``).
        pattern: the regular expression the normalised response must match entirely (DOTALL).
        name: key under which the reward set logs this term.
    """

    def __init__(self, weight: float = 0.1, pattern: str = SEE_THINK_PATTERN, name: str = "format") -> None:
        self.weight, self.name = float(weight), name
        self.pattern = re.compile(pattern, re.DOTALL)

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        return [1.0 if self.pattern.fullmatch(normalize_tags(r)) else 0.0 for r in responses]


class VisualSelfReward:
    """r_vis: is the answer given from the response's own description alone (no image) right?

    Responses without a description score ``failure_value`` without a call. All other responses of a batch go
    to the judge in one ``complete`` call (deduplicated; the policy judge is greedy, so G identical descriptions
    cost one pass). The reply is graded by ``grade`` (an :class:`~vrl.rewards.Accuracy`, boxed answer) against the
    row's ``answer``.

    Args:
        judge: a model judge with ``complete(chats)`` (``conf/judge/policy.yaml`` by default).
        weight: the reward set's weight (1.0: the released ``+ r_vis``).
        template: pass 2's user message; ``{description}`` and ``{question}`` are filled in.
        tag: the description tag.
        grade: the accuracy term pass 2's reply is graded with (a mapping: ``Accuracy`` keyword arguments).
        failure_value: r_vis without a description or when pass 2 failed (0: no credit).
        name: key under which the reward set logs this term.
    """

    def __init__(
        self,
        judge: Any,
        weight: float = 1.0,
        template: str = PASS2_TEMPLATE,
        tag: str = "description",
        grade: Accuracy | Mapping[str, Any] | None = None,
        failure_value: float = 0.0,
        name: str = "visual",
    ) -> None:
        if "{description}" not in template or "{question}" not in template:
            raise ValueError("reward.visual.template must contain {description} and {question}")
        self.judge, self.weight, self.template, self.tag = judge, float(weight), template, tag
        if grade is None:
            grade = Accuracy(extract=AnswerExtractor(answer_tag=None, boxed=True, fallback="none"))
        self.grade = grade if isinstance(grade, Accuracy) else Accuracy(**grade)
        self.failure_value, self.name = float(failure_value), name
        self._counts: Counter[str] = Counter()

    def chat(self, description: str, sample: Mapping[str, Any]) -> list[dict[str, str]]:
        """Pass 2's messages for one response: its description and the question, nothing else."""
        content = self.template.format(description=description.strip(), question=question_of(sample))
        return [{"role": "user", "content": content}]

    def __call__(self, responses: list[str], samples: list[dict]) -> list[float]:
        if len(responses) != len(samples):
            raise ValueError(f"{len(responses)} responses but {len(samples)} samples")
        descriptions = [last_tag_content(r, self.tag) for r in responses]
        asked = [i for i, d in enumerate(descriptions) if d and d.strip()]
        self._counts["samples"] += len(responses)
        self._counts["no_description"] += len(responses) - len(asked)
        chats = {i: self.chat(descriptions[i], samples[i]) for i in asked}
        return grade_replies(self.judge, chats, samples, self.grade, self.failure_value, self._counts)

    def pop_stats(self) -> dict[str, float]:
        """``reward/<name>/{samples,no_description,failed}`` and the judge's ``judge/<name>/...`` counters."""
        out = {f"reward/{self.name}/{k}": float(self._counts[k]) for k in ("samples", "no_description", "failed")}
        self._counts.clear()
        if (stats := getattr(self.judge, "stats", None)) is not None:
            out |= stats.pop(prefix=f"judge/{self.name}/")
        return out


class DescribedRows:
    """Pass 2's inputs as a text-only dataset, for a warm start that teaches the policy to answer from a description.

    A tiny random policy cannot read: given pass 2's text it writes the same thing whatever the description says, so
    r_vis is constant and the self-reward gives GRPO nothing. An ``sft`` stage on these rows (targets from
    :class:`vrl.lit.sft.TemplateTargets`, e.g. ``<think>{answer}</think>\\boxed{{{answer}}}``) teaches it. Row i is
    row i of ``data`` without images, its prompt pass 2's user message (``template``, as
    :meth:`VisualSelfReward.chat` writes it) filled with ``description`` (a template over the row's fields, e.g. the
    true ``a {meta[target][0][color]} {meta[target][0][shape]}``) and the row's question. An SFT stage also appends
    the run's ``sampler.prompt_suffix``; pass 2 itself does not (a small mismatch the warm start lives with).

    Args:
        data: map-style rows (``prompt``, ``answer``, ...).
        description: the description written for each row (:func:`vrl.data.row_template.fill`).
        template: pass 2's user message (``reward.visual.template``), with ``{description}`` and ``{question}``.
        json_fields: row fields parsed from JSON text before ``description`` is filled.
    """

    def __init__(
        self, data: Any, description: str, template: str = PASS2_TEMPLATE, json_fields: Sequence[str] = ("meta",)
    ) -> None:
        check_template(description, "description")
        if "{description}" not in template or "{question}" not in template:
            raise ValueError("DescribedRows: template must contain {description} and {question}")
        self.data, self.description, self.template, self.json_fields = data, description, template, tuple(json_fields)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        row = dict(self.data[index])
        described = fill(self.description, row, self.json_fields, "description")
        prompt = self.template.format(description=described.strip(), question=question_of(row))
        return {**row, "prompt": prompt, "images": []}


def span_token_mask(tokenizer: Any, ids: Sequence[int], tag: str = "description") -> torch.Tensor:
    """[len(ids)] 1.0 on the tokens whose text overlaps the last ``<tag>...</tag>`` (tags included), else 0.

    Token t covers the characters ``[len(decode(ids[:t])), len(decode(ids[:t + 1])))`` of the decoded response;
    the span's first and last tokens are found by bisection on those prefix lengths (2 log2 L decodes, not L).
    """
    ids = list(ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    start = text.rfind(f"<{tag}>")
    close = f"</{tag}>"
    end = text.find(close, start + 1) + len(close) if start >= 0 and close in text[start:] else -1
    mask = torch.zeros(len(ids))
    if start < 0 or end < 0:
        return mask

    def prefix_len(k: int) -> int:
        return len(tokenizer.decode(ids[:k], skip_special_tokens=True))

    def first_k(pred) -> int:  # smallest k in [0, len] with pred(prefix_len(k)); prefix lengths never decrease
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if pred(prefix_len(mid)) else (mid + 1, hi)
        return lo

    first = first_k(lambda n: n > start) - 1  # the token holding the span's first character
    last = first_k(lambda n: n >= end)  # one past the token holding its last character
    mask[max(first, 0) : last] = 1.0
    return mask


class DecoupledSpans:
    """Vision-SR1 v2's decoupled advantages: ``A_vis`` from the visual components, ``A_ans`` from the rest.

    ``A_vis = base(sum_{k in visual} w_k r_k)`` and ``A_ans = base(sum_{k not in visual} w_k r_k)``, each
    group-normalised on its own (weights: ``weights``, else the reward set's). ``combine`` ([NF] in the paper):

    - ``span`` (default; the spec's [ours]): ``A[n, t] = A_vis[n]`` on the description tokens of response n
      (:func:`span_token_mask`, tags included) and ``A_ans[n]`` on its other tokens: a token-level advantage
      [N, L]. A response without a description gets ``A_ans`` everywhere.
    - ``sum``: ``A_vis + A_ans`` on every token ([N]; a two-part :class:`~vrl.methods.multi_reward.ComponentNorm`).

    The loop passes ``components=`` and ``weights=`` (``uses_components``) and the rollout (``uses_rollout``); the
    training module binds the policy's tokenizer (``bind_policy``) to find the spans.

    Args:
        visual: names of the visual reward components.
        combine: ``span`` or ``sum``.
        tag: the description tag.
        weights: component -> weight overrides.
        base: the per-part estimator (default GRPO's group z-score).
    """

    uses_components = True
    uses_rollout = True

    def __init__(
        self,
        visual: Sequence[str] = ("visual",),
        combine: str = "span",
        tag: str = "description",
        weights: Mapping[str, float] | None = None,
        base: Any = None,
    ) -> None:
        if combine not in COMBINE:
            raise ValueError(f"advantage.combine must be one of {COMBINE}, got {combine!r}")
        self.visual, self.combine, self.tag = tuple(visual), combine, tag
        self.agg = Aggregation("DecoupledSpans", weights, base)
        self.tokenizer: Any = None

    @property
    def normalises_scale(self) -> bool:
        return self.agg.normalises_scale

    def bind_policy(self, vlm: Any) -> None:
        self.tokenizer = vlm.processor.tokenizer

    def parts(self, rewards, group_ids, response_mask, components, weights) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_vis [N], A_ans [N])."""
        comps, w = self.agg.resolve(rewards, components, weights)
        missing = sorted(set(self.visual) - set(comps))
        if missing:
            raise ValueError(f"advantage.visual names {missing}, which are not reward terms ({sorted(comps)})")
        zero = torch.zeros_like(rewards, dtype=torch.float64)
        r_vis = sum((w[k] * comps[k] for k in comps if k in self.visual), zero)
        r_ans = sum((w[k] * comps[k] for k in comps if k not in self.visual), zero)
        base = self.agg.base
        return base(r_vis.to(rewards.dtype), group_ids, response_mask), base(r_ans.to(rewards.dtype), group_ids)

    def __call__(
        self, rewards, group_ids, response_mask=None, components=None, weights=None, rollout=None
    ) -> torch.Tensor:
        if not components:
            return self.agg.fallback(rewards, group_ids, response_mask)
        a_vis, a_ans = self.parts(rewards, group_ids, response_mask, components, weights)
        if self.combine == "sum":
            return (a_vis + a_ans).float()
        if rollout is None or self.tokenizer is None:
            raise RuntimeError("DecoupledSpans(combine=span) needs the rollout and the policy's tokenizer")
        span = self.description_mask(rollout).to(a_vis.device)
        return (a_vis[:, None] * span + a_ans[:, None] * (1 - span)).float()

    def description_mask(self, rollout: Any) -> torch.Tensor:
        """[N, L] 1.0 on each response's description tokens (valid tokens only)."""
        resp = rollout.input_ids[:, rollout.prompt_width :].cpu()
        valid = rollout.response_mask.cpu() > 0
        mask = torch.zeros(valid.shape)
        for n in range(resp.shape[0]):
            length = int(valid[n].sum())
            mask[n, :length] = span_token_mask(self.tokenizer, resp[n, :length].tolist(), self.tag)
        return mask
