"""The RL step on the real tiny VLM: non-finite guards, micro-batch invariance, scoring consistency."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from vrl.build import build_module, build_trainer
from vrl.hooks import Hook, HookSet

LENGTH_REWARD = "+reward.length={_target_:vrl.rewards.LengthPenalty,target:12}"


class NaNLoss(Hook):
    """An extra loss term that turns non-finite on chosen steps (a stand-in for a numerical blow-up)."""

    def __init__(self, bad_calls: set[int]):
        self.bad_calls, self.calls = bad_calls, -1

    def on_step_start(self, ctx):
        self.calls += 1  # RL steps, counted here because a skipped step does not advance global_step

    def extra_loss(self, micro, out, normalizer, ctx):
        return out["logits"].sum() * (float("nan") if self.calls in self.bad_calls else 0.0), {}


def _module(compose, overrides):
    cfg = compose(overrides)
    L.seed_everything(cfg.seed, verbose=False)
    return cfg, build_module(cfg)


def test_non_finite_step_is_skipped_and_logged(compose, tiny_overrides):
    cfg, module = _module(
        compose, tiny_overrides + [LENGTH_REWARD, "trainer.max_steps=2", "trainer.limit_val_batches=0"]
    )
    module.hooks = HookSet({"nan": NaNLoss({0})})
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    trainer = build_trainer(cfg)
    trainer.fit(module)
    # step 0 was skipped (global_step did not advance), then two good steps ran: 3 RL steps for max_steps=2
    assert module.prompts.rows_drawn == 3 * cfg.data_loader.batch_size
    assert trainer.global_step == 2
    assert any(not torch.equal(p, before[n]) for n, p in module.policy.named_parameters())


def test_repeated_non_finite_steps_stop_the_run_with_last_checkpoint_intact(compose, tiny_overrides, tmp_path):
    cfg, module = _module(
        compose, tiny_overrides + [LENGTH_REWARD, "trainer.max_steps=5", "ckpt_every=1", "update.max_bad_steps=2"]
    )
    module.hooks = HookSet({"nan": NaNLoss({1, 2, 3, 4})})  # step 0 fine, then every step blows up
    trainer = build_trainer(cfg)
    with pytest.raises(RuntimeError, match="consecutive non-finite steps"):
        trainer.fit(module)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"])
def test_micro_batches_do_not_change_the_update(compose, tiny_overrides, mode):
    weights = []
    initial = None
    for micro in (8, 3):  # N = B*G = 2*4 = 8 sequences: one pass vs micro-batches of 3, 3, 2
        cfg, module = _module(
            compose,
            tiny_overrides
            + [LENGTH_REWARD, f"loss_agg={mode}", f"update.micro_batch_size={micro}", "trainer.max_steps=1"]
            + ["optimizer=sgd", "optimizer.lr=1.0"]  # update = -lr * gradient: compares the gradients
            + ["trainer.limit_val_batches=0"],
        )
        initial = initial or {n: p.detach().clone() for n, p in module.policy.named_parameters()}
        build_trainer(cfg).fit(module)
        weights.append({n: p.detach().clone() for n, p in module.policy.named_parameters()})
    assert any(not torch.equal(w, initial[n]) for n, w in weights[0].items())
    for name, w in weights[0].items():
        torch.testing.assert_close(weights[1][name], w, rtol=1e-5, atol=1e-7, msg=name)


def test_teacher_forced_logprobs_equal_the_sampling_distribution(compose, tiny_overrides):
    """Scoring uses the same positions (M-RoPE, left padding), masks and suppressed tokens as generate."""
    from vrl.models.scoring import score_logprobs
    from vrl.sampler.hf import suppressed_token_ids
    from vrl.sampler.prompts import encode_prompts

    cfg, module = _module(compose, tiny_overrides + ["data.train.tasks=[color,count]", "data.train.formats=[open]"])
    vlm, engine = module.vlm, module.sampler
    rows = [module.train_data[i] for i in range(2)]
    torch.manual_seed(3)
    rollout = engine.generate(vlm, rows, greedy=True)  # greedy: the same tokens again below
    enc, _ = encode_prompts(vlm.processor, rows)
    tok = vlm.processor.tokenizer
    out = vlm.model.generate(
        **enc, do_sample=False, max_new_tokens=engine.max_new_tokens, output_logits=True, return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, suppress_tokens=suppressed_token_ids(tok),
    )  # fmt: skip
    suppress = suppressed_token_ids(tok)
    gen_logits = torch.stack(out.logits, 1).index_fill(-1, torch.tensor(suppress), -1e9)
    gen_logp = torch.log_softmax(gen_logits.float(), -1).gather(-1, out.sequences[:, enc["input_ids"].shape[1] :, None])
    scored = score_logprobs(vlm.model, rollout, 1.0, 8, suppress_ids=suppress)
    mask = rollout.response_mask.bool()
    assert mask.sum() > 2
    torch.testing.assert_close(scored[mask], gen_logp.squeeze(-1)[mask], rtol=1e-4, atol=1e-4)
