"""Typed containers passed between loop stages, and the one vocabulary of names they use.

Shapes: B prompts, G samples per prompt, N = B*G sequences, P padded prompt tokens, L padded response tokens.

A data row (what a dataset yields and what reward functions receive as ``sample``) is a plain ``dict``
with these keys; extra columns are kept and reach the rewards untouched:

    prompt       str        question text with one ``<image>`` placeholder per image
    images       list[PIL]  the images, in placeholder order
    answer       str        ground truth, in the form its ``answer_type`` expects
    answer_type  str        one of ANSWER_TYPES: how accuracy is checked
    task         str        task family (``color``, ``count``, ``grounding``, ...)
    format       str        ``yesno`` | ``mc`` | ``open``
    meta         str        JSON: scene graph and anything a method derives annotations from
    uid          str        stable id of the row
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

#: Where a sampler's own log-probs of the emitted tokens travel in ``Rollout.extras`` ([N, L], 0 on padding): the
#: importance-sampling correction (``vrl.methods.rollout_correction``) weighs them against the learner's.
SAMPLER_LOGPROBS = "sampler_logprobs"

#: How an answer is verified (see ``vrl.rewards.accuracy``).
ANSWER_TYPES = ("text", "number", "choice", "yesno", "bbox", "math", "detection")

#: Per-sequence vision tensors the Qwen-VL family takes; sliced per sequence by ``Rollout.select``.
VISION_KEYS = ("pixel_values", "image_grid_thw")


@dataclass
class Rollout:
    """N = B*G sampled sequences and everything later stages attach to them.

    Token tensors are aligned so that ``input_ids[:, P:]`` are the response tokens and
    ``logprobs[:, t]`` is the log-probability of ``input_ids[:, P + t]``.

    Attributes:
        input_ids: [N, P+L] prompt (left-padded) followed by response (right-padded).
        attention_mask: [N, P+L] 1 on real tokens.
        response_mask: [N, L] 1.0 on valid response tokens (up to and including EOS). This is the
            *normalisation* mask: loss aggregation divides by it. In a multi-turn rollout
            (``vrl.sampler.multi_turn``) it marks the policy's tokens only: tool observations inside the response
            region are attended (``attention_mask``) but carry no loss, KL or entropy term and no normaliser weight.
        pixel_values: [sum of patches over the N sequences' images, D] processor output.
        image_grid_thw: [total images, 3] patch grid per image.
        images_per_seq: [N] number of images each sequence carries (to slice the vision tensors).
        group_ids: [N] index of the prompt (0..B-1) each sequence was sampled from.
        samples: N data rows (dicts), one per sequence (a row repeated G times).
        responses: N decoded response strings.
        mm_token_type_ids: [N, P+L] 0 text / 1 image / 2 video per token, when the processor emits it.
            Qwen-VL needs it to build M-RoPE positions; without it positions silently fall back to 1-D.
        rewards: [N] weighted total reward.
        reward_components: name -> [N] unweighted values of each reward term.
        advantages: [N] sequence-level advantage (broadcast over tokens by the loss), or [N, L] per token from an
            estimator that reads the rollout (``uses_rollout``: Vision-SR1 v2 puts one advantage on the description).
        old_logprobs: [N, L] log-probs of the sampling policy (detached).
        ref_logprobs: [N, L] log-probs of the frozen reference, or None when no KL term is used.
        loss_mask: [N, L] token-level weights in [0, 1] on the policy-gradient term (hook H9);
            defaults to ``response_mask``. Kept apart from the normalisation mask on purpose.
        norm_mask: [N, L] the tokens loss aggregation averages over, or None for ``response_mask`` (VPPO's
            published loss keeps top-k-masked tokens in the denominator; its option to normalise by kept
            tokens sets this to the kept mask).
        extras: side signals attached by hooks, each [N] or [N, L] (e.g. VPPO token dependency).
        branch: [N] 0 for the main (reasoning) sequences, k > 0 for auxiliary sequences a hook attached to
            the same prompt group (PEARL's perception probes: hook H5), or None when every sequence is main.
            Each branch gets its own group-normalised advantage and its own loss normaliser; metrics and
            sequence-level method statistics are taken over the main branch.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    images_per_seq: torch.Tensor
    group_ids: torch.Tensor
    samples: list[dict]
    responses: list[str]
    mm_token_type_ids: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    reward_components: dict[str, torch.Tensor] = field(default_factory=dict)
    advantages: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None
    norm_mask: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    branch: torch.Tensor | None = None

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_width(self) -> int:
        """P: the padded prompt width (response tokens start here)."""
        return self.input_ids.shape[1] - self.response_mask.shape[1]

    def branch_ids(self) -> torch.Tensor:
        """[N] branch of every sequence (zeros when no auxiliary branch is attached)."""
        if self.branch is not None:
            return self.branch
        return torch.zeros(self.num_sequences, dtype=torch.long, device=self.group_ids.device)

    def advantage_groups(self) -> torch.Tensor:
        """[N] ids of the sets advantages are normalised over: (prompt group, branch) pairs."""
        if self.branch is None:
            return self.group_ids
        return self.group_ids * (int(self.branch.max()) + 1 if self.num_sequences else 1) + self.branch.to(
            self.group_ids.device
        )

    def main(self) -> Rollout:
        """The main-branch sequences (all of them when no auxiliary branch is attached)."""
        if self.branch is None:
            return self
        return self.select(torch.nonzero(self.branch == 0).squeeze(-1))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a teacher-forced forward pass of the VLM."""
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.mm_token_type_ids is not None:
            out["mm_token_type_ids"] = self.mm_token_type_ids
        if self.pixel_values is not None:
            out["pixel_values"] = self.pixel_values
            out["image_grid_thw"] = self.image_grid_thw
        return out

    def select(self, idx: torch.Tensor) -> Rollout:
        """Rows ``idx`` (a 1-D LongTensor into N) of every per-sequence field, vision tensors included."""
        idx = idx.to(torch.long).cpu()
        n = self.num_sequences
        changes: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in VISION_KEYS or f.name == "images_per_seq":
                continue
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
                changes[f.name] = value[idx.to(value.device)]
            elif isinstance(value, dict):
                changes[f.name] = {k: v[idx.to(v.device)] for k, v in value.items()}
            elif isinstance(value, list):
                changes[f.name] = [value[i] for i in idx.tolist()]
        if self.pixel_values is not None:
            changes["pixel_values"], changes["image_grid_thw"] = slice_vision(
                self.pixel_values, self.image_grid_thw, self.images_per_seq, idx
            )
        changes["images_per_seq"] = self.images_per_seq[idx.to(self.images_per_seq.device)]
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> Rollout:
        """A copy with every tensor on ``device``."""
        changes: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = value.to(device)
            elif isinstance(value, dict):
                changes[f.name] = {k: v.to(device) for k, v in value.items()}
        return replace(self, **changes)


def slice_vision(
    pixel_values: torch.Tensor,
    image_grid_thw: torch.Tensor,
    images_per_seq: torch.Tensor,
    idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the patch rows and grid rows that belong to sequences ``idx``.

    Qwen-VL processors flatten all images' patches into one [sum_i T_i*H_i*W_i, D] tensor, so a
    sequence's rows are found from cumulative patch counts rather than by plain indexing.
    """
    patches_per_image = image_grid_thw.prod(dim=-1)
    image_start = torch.cumsum(images_per_seq, 0) - images_per_seq
    patch_start = torch.cumsum(patches_per_image, 0) - patches_per_image
    image_rows, patch_rows = [], []
    for i in idx.tolist():
        first, count = int(image_start[i]), int(images_per_seq[i])
        for j in range(first, first + count):
            image_rows.append(j)
            start = int(patch_start[j])
            patch_rows.append(torch.arange(start, start + int(patches_per_image[j])))
    if not image_rows:
        return pixel_values[:0], image_grid_thw[:0]
    rows = torch.cat(patch_rows).to(pixel_values.device)
    return pixel_values[rows], image_grid_thw[torch.tensor(image_rows, device=image_grid_thw.device)]


def _pad_to(t: torch.Tensor, width: int, left: bool, value: float = 0) -> torch.Tensor:
    pad = width - t.shape[1]
    if pad == 0:
        return t
    filler = torch.full((t.shape[0], pad, *t.shape[2:]), value, dtype=t.dtype, device=t.device)
    return torch.cat([filler, t] if left else [t, filler], dim=1)


def cat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Concatenate rollouts drawn in separate generate calls (dynamic-sampling refills).

    Prompt widths P and response widths L differ between calls, so token tensors are re-padded: prompts on
    the left (as generated), responses on the right. ``group_ids`` are offset to stay unique per prompt.
    """
    if len(parts) == 1:
        return parts[0]
    p_width = max(r.prompt_width for r in parts)
    l_width = max(r.response_mask.shape[1] for r in parts)

    def seq(r: Rollout, t: torch.Tensor | None, value: float = 0) -> torch.Tensor | None:
        if t is None:
            return None
        p = r.prompt_width
        return torch.cat([_pad_to(t[:, :p], p_width, True, value), _pad_to(t[:, p:], l_width, False, value)], 1)

    def resp(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else _pad_to(t, l_width, False) if t.dim() >= 2 else t

    def cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if any(t is None for t in tensors) else torch.cat(tensors)

    offsets, total = [], 0
    for r in parts:
        offsets.append(total)
        total += int(r.group_ids.max()) + 1 if r.num_sequences else 0
    first = parts[0]
    return Rollout(
        input_ids=cat([seq(r, r.input_ids, pad_id) for r in parts]),
        attention_mask=cat([seq(r, r.attention_mask) for r in parts]),
        response_mask=cat([resp(r.response_mask) for r in parts]),
        pixel_values=cat([r.pixel_values for r in parts]),
        image_grid_thw=cat([r.image_grid_thw for r in parts]),
        images_per_seq=cat([r.images_per_seq for r in parts]),
        group_ids=cat([r.group_ids + off for r, off in zip(parts, offsets)]),
        samples=[s for r in parts for s in r.samples],
        responses=[s for r in parts for s in r.responses],
        mm_token_type_ids=cat([seq(r, r.mm_token_type_ids) for r in parts]),
        rewards=cat([r.rewards for r in parts]),
        reward_components={k: cat([r.reward_components[k] for r in parts]) for k in first.reward_components},
        advantages=cat([r.advantages for r in parts]),
        old_logprobs=cat([resp(r.old_logprobs) for r in parts]),
        ref_logprobs=cat([resp(r.ref_logprobs) for r in parts]),
        loss_mask=cat([resp(r.loss_mask) for r in parts]),
        norm_mask=cat([resp(r.norm_mask) for r in parts]),
        extras={k: cat([resp(r.extras[k]) for r in parts]) for k in first.extras},
        branch=None if all(r.branch is None for r in parts) else torch.cat([r.branch_ids() for r in parts]),
    )


def attach_branch(main: Rollout, aux: Rollout, pad_id: int, branch: int = 1) -> Rollout:
    """Append auxiliary sequences ``aux`` to ``main`` as branch ``branch``, keeping their group ids.

    ``aux.group_ids`` must name ``main``'s groups (the same prompt, e.g. PEARL's probe of that prompt), so
    group filters and batch truncation keep or drop a prompt's main and auxiliary sequences together.
    Reward components missing on one side are filled with NaN ("not measured on this branch"): group
    filters average the measured values only.
    """
    if aux.num_sequences and not torch.isin(aux.group_ids.cpu(), main.group_ids.cpu()).all():
        raise ValueError("attach_branch: auxiliary sequences name groups the main rollout does not have")
    keys = list(dict.fromkeys([*main.reward_components, *aux.reward_components]))

    def filled(r: Rollout) -> dict[str, torch.Tensor]:
        nan = torch.full((r.num_sequences,), float("nan"), device=r.rewards.device if r.rewards is not None else None)
        return {k: r.reward_components.get(k, nan).float() for k in keys}

    aux = replace(aux, reward_components=filled(aux), branch=torch.full_like(aux.group_ids, branch).cpu())
    main = replace(main, reward_components=filled(main), branch=main.branch_ids().cpu())
    out = cat_rollouts([main, aux], pad_id)
    out.group_ids = torch.cat([main.group_ids, aux.group_ids.to(main.group_ids.device)])
    return out
