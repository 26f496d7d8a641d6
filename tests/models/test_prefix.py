"""Shared-prefix scoring: a group's prompt runs once, its responses on the copied cache; equal to a full pass."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vrl.models import prefix
from vrl.models.scoring import response_logits, response_targets, score_logprobs, token_stats
from vrl.sampler.hf import HFSampler, suppressed_token_ids


@pytest.fixture(scope="module")
def setup():
    from vrl.data.synthetic import build_synthetic
    from vrl.data.tasks import corpus, single_token_words
    from vrl.models.loading import load_vlm

    torch.manual_seed(0)
    kw = dict(tiny_extra_texts=corpus(), tiny_single_tokens=single_token_words())
    vlm = load_vlm("tiny:qwen2_5_vl", **kw)
    plain = load_vlm("tiny:qwen2_5_vl", share_repeated_work=False, **kw)
    plain.model.load_state_dict(vlm.model.state_dict())
    # three prompts of different lengths and image sizes, 3 copies each, 6 new tokens (responses of unequal length)
    data = build_synthetic(tasks=["color", "count"], formats=["open", "yesno"], num_samples=3, image_size=56,
                           progress=False)  # fmt: skip
    rollout = HFSampler(group_size=3, max_new_tokens=6, temperature=1.0).generate(vlm, [data[0], data[1], data[2]])
    # the random policy never stops early: end rows 1 and 5 after 2 and 4 tokens, as EOS would (pad, masks 0)
    ids, attn, resp = rollout.input_ids.clone(), rollout.attention_mask.clone(), rollout.response_mask.clone()
    width = rollout.prompt_width
    for row, keep in ((1, 2), (5, 4)):
        ids[row, width + keep :] = vlm.processor.tokenizer.pad_token_id
        attn[row, width + keep :] = 0
        resp[row, keep:] = 0
    rollout = replace(rollout, input_ids=ids, attention_mask=attn, response_mask=resp)
    return vlm, plain, rollout, suppressed_token_ids(vlm.processor.tokenizer)


def _full(model, rollout, suppress, temperature=1.0):
    with torch.no_grad():
        logits = response_logits(model, rollout, temperature, suppress)
        return token_stats(logits, response_targets(rollout))[0] * rollout.response_mask


def test_runs_follow_prompts_and_images(setup):
    vlm, _, rollout, _ = setup
    assert prefix.prompt_runs(rollout) == [(0, 3), (3, 6), (6, 9)]
    # the same prompts with one copy's image changed: that copy is a run of its own and splits its group
    pixels = rollout.pixel_values.clone()
    first = int(rollout.image_grid_thw[0].prod())  # patches of sequence 0's image
    second = int(rollout.image_grid_thw[1].prod())
    pixels[first : first + second] += 1.0  # sequence 1's image
    assert prefix.prompt_runs(replace(rollout, pixel_values=pixels)) == [(0, 1), (1, 2), (2, 3), (3, 6), (6, 9)]
    # rows with different image layouts take the per-row comparison: the last group's grid (1, h, w) -> (1, 2h, w/2)
    grid = rollout.image_grid_thw.clone()
    t, h, w = grid[6].tolist()
    assert w % 2 == 0
    grid[6:] = torch.tensor([t, 2 * h, w // 2])
    mixed = replace(rollout, image_grid_thw=grid)
    assert prefix.prompt_runs(mixed) == [(0, 3), (3, 6), (6, 9)]
    pixels = rollout.pixel_values.clone()
    pixels[7 * first : 8 * first] += 1.0  # sequence 7's image (every image has `first` patches)
    assert prefix.prompt_runs(replace(mixed, pixel_values=pixels)) == [(0, 3), (3, 6), (6, 7), (7, 8), (8, 9)]
    # runs are packed whole: 3 + 3 rows fit a micro-batch of 7, the third run starts the next
    assert prefix.micro_batches([(0, 3), (3, 6), (6, 9)], 7) == [[(0, 3), (3, 6)], [(6, 9)]]
    assert prefix.micro_batches([(0, 5), (5, 6)], 2) == [[(0, 5)], [(5, 6)]]  # a run longer than the chunk


@pytest.mark.parametrize("micro_batch_size", [9, 4])
def test_shared_prefix_log_probs_equal_the_full_pass(setup, micro_batch_size):
    vlm, plain, rollout, suppress = setup
    assert prefix.can_share(vlm.model, rollout) and not prefix.can_share(plain.model, rollout)
    # a multi-turn rollout's tool observations put image tokens after the prompt: those take the full pass
    types = rollout.mm_token_type_ids.clone()
    types[0, rollout.prompt_width + 1] = 1
    assert not prefix.can_share(vlm.model, replace(rollout, mm_token_type_ids=types))
    lengths = rollout.response_mask.sum(-1)
    assert rollout.response_mask.shape[1] > 1 and lengths.min() < lengths.max()  # the cache path and right padding
    expected = _full(plain.model, rollout, suppress, temperature=0.7)  # the plain model takes no shortcut
    got = prefix.score_shared(vlm.model, rollout, 0.7, micro_batch_size, suppress_ids=suppress)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert bool((got != 0).any())


def test_shared_prefix_runs_each_prompt_once(setup):
    vlm, _, rollout, suppress = setup
    lengths: list[tuple[int, int]] = []
    decoder = vlm.model.model.language_model
    handle = decoder.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        score_logprobs(vlm.model, rollout, 1.0, 9, suppress_ids=suppress)  # the loop's no-grad passes
    finally:
        handle.remove()
    width, length = rollout.prompt_width, rollout.response_mask.shape[1]
    # one prefill of the 3 distinct prompts (P positions each), then 9 rows x (L - 1) response positions;
    # a full pass would have run 9 rows x (P + L)
    assert lengths == [(3, width), (9, length - 1)]


def test_perturbed_images_shared_per_group_still_share(setup):
    vlm, plain, rollout, suppress = setup
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(rollout.pixel_values.shape, generator=g)
    sizes = rollout.image_grid_thw.prod(-1).tolist()
    chunks = list(torch.split(noise, sizes))
    for start in (0, 3, 6):  # one perturbation per group, as hooks.vppo.mask_scope=group draws it
        chunks[start + 1] = chunks[start + 2] = chunks[start]
    perturbed = replace(rollout, pixel_values=rollout.pixel_values + torch.cat(chunks))
    assert prefix.prompt_runs(perturbed) == [(0, 3), (3, 6), (6, 9)]
    expected = _full(plain.model, perturbed, suppress)
    torch.testing.assert_close(prefix.score_shared(vlm.model, perturbed, 1.0, 9, suppress_ids=suppress), expected,
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_lora_policy_and_its_adapter_off_reference(setup):
    from vrl.data.tasks import corpus, single_token_words
    from vrl.models.loading import load_vlm

    _, _, rollout, suppress = setup
    kw = dict(tiny_extra_texts=corpus(), tiny_single_tokens=single_token_words(), lora={"r": 4})
    shared = load_vlm("tiny:qwen2_5_vl", **kw).model  # the same seed: equal base and adapter weights
    full = load_vlm("tiny:qwen2_5_vl", share_repeated_work=False, **kw).model
    with torch.no_grad():  # move the adapter off zero (lora_B starts at 0) so that on and off differ
        for model in (shared, full):
            for p in (p for n, p in model.named_parameters() if "lora_B" in n):
                p.fill_(0.05)
    assert type(shared).__name__.startswith("Peft") and prefix.can_share(shared, rollout)
    on = prefix.score_shared(shared, rollout, 1.0, 9, suppress_ids=suppress)
    torch.testing.assert_close(on, _full(full, rollout, suppress), rtol=1e-5, atol=1e-5)
    with shared.disable_adapter(), full.disable_adapter():  # the LoRA run's reference
        off = prefix.score_shared(shared, rollout, 1.0, 9, suppress_ids=suppress)
        torch.testing.assert_close(off, _full(full, rollout, suppress), rtol=1e-5, atol=1e-5)
    assert (on - off).abs().max() > 1e-3


def test_training_loss_gradients_equal_the_full_pass(setup):
    vlm, plain, rollout, suppress = setup
    weights = torch.linspace(-1.0, 2.0, rollout.response_mask.numel()).view_as(rollout.response_mask)
    grads = []
    for model, logits_of in ((vlm.model, prefix.response_logits_shared), (plain.model, response_logits)):
        model.train()
        model.zero_grad()
        logits = logits_of(model, rollout, 1.0, suppress)
        logprobs = token_stats(logits, response_targets(rollout))[0]
        (logprobs * weights * rollout.response_mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.eval()
    shared, full = grads
    assert shared.keys() == full.keys() and any("visual" in n for n in shared) and any("embed" in n for n in shared)
    for name, g in shared.items():  # the G copies' prompt gradients summed through the cache rows, in another order
        torch.testing.assert_close(g, full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_paired_pass_layout_shares_the_clean_copies_only(setup):
    """VPPO's paired pass scores [rollout; per-response perturbed rollout]: 3 runs of 3, then 9 singletons."""
    from vrl.types import cat_rollouts

    vlm, plain, rollout, suppress = setup
    noise = torch.randn(rollout.pixel_values.shape, generator=torch.Generator().manual_seed(1))
    both = cat_rollouts([rollout, replace(rollout, pixel_values=rollout.pixel_values + noise)],
                        vlm.processor.tokenizer.pad_token_id)  # fmt: skip
    assert prefix.prompt_runs(both) == [(0, 3), (3, 6), (6, 9), *((i, i + 1) for i in range(9, 18))]
    lengths: list[int] = []
    handle = vlm.model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True
    )
    try:
        got = score_logprobs(vlm.model, both, 1.0, 9, suppress_ids=suppress)
    finally:
        handle.remove()
    # micro-batch 1: the 3 clean runs (prefill 3 rows, then 9 rows of responses); 2: the 9 singletons, one full pass
    assert lengths == [3, 9, 9]
    torch.testing.assert_close(got, _full(plain.model, both, suppress), rtol=1e-5, atol=1e-5)
