"""Rollouts with Hugging Face ``generate``: B rows -> N = B*G sampled responses packed as a ``Rollout``."""

from __future__ import annotations

import torch

from vrl.models.sharding import synced_gpus
from vrl.sampler.prompts import encode_prompts, model_image_sizes
from vrl.types import Rollout, slice_vision


class HFSampler:
    """Samples G responses per prompt with ``model.generate`` (``conf/sampler/``).

    Args:
        group_size: G, responses per prompt; GRPO needs G >= 2 to have a baseline.
        max_new_tokens: response length cap L.
        temperature: sampling temperature; also used when scoring log-probs so that old and new
            log-probs refer to the same distribution the tokens were drawn from.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: top-k sampling (0 = off).
        system_prompt: optional system message.
        prompt_suffix: text appended to every question (e.g. answer-format instructions).
        val_temperature: 0 means greedy decoding for validation.
        logprobs: also return the sampling log-probs of the emitted tokens as ``Rollout.old_logprobs``, from
            the logits ``generate`` sampled with, transformed as the scorer transforms them (temperature,
            suppressed tokens; top-p/top-k truncation is not applied, as in the scorer). The loop then skips its
            own old-policy pass, and VPPO scores the perturbed images only. Measured against the teacher-forced
            pass (experiments/LOG.md, 2026-12-05): fp32 max |diff| 9.5e-7, bf16 2.0e-3 (mean 1.4e-4), so under
            bf16 the first PPO ratio is not exactly 1. Costs N x L x V x 4 bytes of logits held until the end of
            generation (64 x 256 x 151,936 -> 10 GB for Qwen's vocabulary): for large runs use a server that
            returns log-probs, or keep the teacher-forced pass (the default).
    """

    def __init__(
        self,
        group_size: int = 8,
        max_new_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        system_prompt: str | None = None,
        prompt_suffix: str = "",
        val_temperature: float = 0.0,
        logprobs: bool = False,
    ) -> None:
        if group_size < 2:
            raise ValueError(f"sampler.group_size (G) must be >= 2 for a group baseline, got {group_size}")
        if max_new_tokens < 1:
            raise ValueError(f"sampler.max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature <= 0:
            raise ValueError(f"sampler.temperature must be > 0 (use val_temperature=0 for greedy), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"sampler.top_p must be in (0, 1], got {top_p}")
        self.group_size = group_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.system_prompt = system_prompt
        self.prompt_suffix = prompt_suffix
        self.val_temperature = val_temperature
        self.logprobs = logprobs

    @torch.no_grad()
    def generate(self, vlm, samples: list[dict], group_size: int | None = None, greedy: bool = False) -> Rollout:
        """Sample ``group_size`` responses for each of the B rows (sequences of one row are adjacent)."""
        g = 1 if greedy else (group_size or self.group_size)
        model, processor = vlm.model, vlm.processor
        device = next(model.parameters()).device
        enc, images_per_prompt = encode_prompts(processor, samples, self.system_prompt, self.prompt_suffix)
        b = len(samples)
        idx = torch.arange(b).repeat_interleave(g)
        inputs = {k: enc[k][idx] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in enc}
        pixel_values = grid = None
        if "pixel_values" in enc:
            pixel_values, grid = slice_vision(enc["pixel_values"], enc["image_grid_thw"], images_per_prompt, idx)
            inputs.update(pixel_values=pixel_values, image_grid_thw=grid)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        tok = processor.tokenizer
        gen_kwargs = dict(
            max_new_tokens=self.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            suppress_tokens=suppressed_token_ids(tok),
            synced_gpus=synced_gpus(model),  # sharded (FSDP): decode until every rank's sequences have ended
        )
        if greedy and self.val_temperature == 0:
            gen_kwargs.update(do_sample=False)
        else:
            temp = self.val_temperature if greedy else self.temperature
            gen_kwargs.update(do_sample=True, temperature=temp, top_p=self.top_p, top_k=self.top_k or None)
        with_logprobs = self.logprobs and not greedy
        if with_logprobs:
            gen_kwargs.update(output_logits=True, return_dict_in_generate=True)
        was_training = model.training
        model.eval()
        out = model.generate(**inputs, **gen_kwargs)
        model.train(was_training)
        sequences = out.sequences if with_logprobs else out
        prompt_width = inputs["input_ids"].shape[1]
        response = sequences[:, prompt_width:]
        response, response_mask = _truncate_after_eos(response, tok.eos_token_id, tok.pad_token_id)
        old = None
        if with_logprobs:
            logits = torch.stack(out.logits, dim=1)  # [N, L, V], before any logits processor
            old = sampling_logprobs(logits, response, self.temperature, gen_kwargs["suppress_tokens"])
            old = old * response_mask
        mm_types = None
        if "mm_token_type_ids" in inputs:  # response tokens are text (type 0)
            mm_types = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(response)], dim=1)
        rows = _expand_rows(samples, idx, enc.get("image_grid_thw"), images_per_prompt, vlm.patch_size)
        for row, length in zip(rows, response_mask.sum(-1).tolist()):
            row["response_tokens"] = int(length)
        return Rollout(
            input_ids=torch.cat([inputs["input_ids"], response], dim=1),
            attention_mask=torch.cat([inputs["attention_mask"], response_mask.to(inputs["attention_mask"].dtype)], 1),
            response_mask=response_mask.float(),
            pixel_values=pixel_values.to(device) if pixel_values is not None else None,
            image_grid_thw=grid.to(device) if grid is not None else None,
            images_per_seq=images_per_prompt[idx],
            group_ids=idx.to(device),
            samples=rows,
            responses=tok.batch_decode(response, skip_special_tokens=True),  # after-EOS slots hold pad (special)
            mm_token_type_ids=mm_types,
            old_logprobs=old,
        )


def sampling_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, suppress_ids: list[int]
) -> torch.Tensor:
    """log p(token) [N, L] under ``logits`` [N, L, V] / temperature with ``suppress_ids`` masked: the
    distribution ``vrl.models.scoring.response_logits`` scores, so the two passes agree up to numerics."""
    logits = logits.float() / temperature
    if suppress_ids:
        logits = logits.index_fill(-1, torch.tensor(suppress_ids, device=logits.device), -1e9)
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def suppressed_token_ids(tokenizer) -> list[int]:
    """Vision placeholder tokens a policy must never emit: a sampled ``<|image_pad|>`` in a response would
    desynchronise image features and image tokens in every later forward pass. The same ids are masked
    when log-probs are scored, so the scored distribution is the sampled one."""
    names = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"]
    vocab = tokenizer.get_vocab()
    return sorted(vocab[n] for n in names if n in vocab)


def _truncate_after_eos(response: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask tokens after the first EOS (EOS itself stays valid: the policy chose to stop there)."""
    is_eos = response == eos_id
    after_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    mask = ~after_eos
    return torch.where(mask, response, torch.full_like(response, pad_id)), mask.long()


def _expand_rows(samples: list[dict], idx: torch.Tensor, prompt_grid, images_per_prompt, patch_size: int):
    """Per-sequence copies of the rows, with ``model_image_sizes`` (processor frame) for box rewards."""
    frames = model_image_sizes(prompt_grid, patch_size) if prompt_grid is not None else []
    starts = (torch.cumsum(images_per_prompt, 0) - images_per_prompt).tolist()
    per_prompt = [frames[s : s + int(c)] for s, c in zip(starts, images_per_prompt.tolist())]
    return [{**samples[p], "model_image_sizes": per_prompt[p]} for p in idx.tolist()]
