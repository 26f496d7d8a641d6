"""GPU numbers for issue 18: one RL step of the Qwen2.5-VL-3B recipe on random weights, VPPO's overhead on it,
and the sampler-vs-teacher-forced log-prob mismatch. Part of ``experiments/gpu_session.sh`` (one device call).

    python experiments/bench_gpu_step.py --part step --out /tmp/step.json          # H100: stages, tokens/s, memory
    python experiments/bench_gpu_step.py --part mismatch --out /tmp/mismatch.json  # H100: bf16 and fp32
    python experiments/bench_gpu_step.py --device cpu --tiny --part all            # CPU smoke run (~1 min)
    python experiments/bench_gpu_step.py --collect WORK_DIR OUT_DIR                # aggregate a session (no torch)

**Model.** ``Qwen2_5_VLForConditionalGeneration`` with Qwen2.5-VL-3B-Instruct's sizes (text 2048 x 36 layers,
11008 MLP, 16/2 heads, tied embeddings; vision 1280 x 32 blocks, full attention in blocks 7/15/23/31), built from a
config directly on the device in bf16 (``with torch.device("cuda"): from_config(...)``; nothing is downloaded),
random weights. **Vocabulary: the real 151,936** (so the LM head, the logits and every log-prob pass have the
real size) **with vrl's offline tiny tokenizer** (~800 tokens, ``vrl.models.tiny``) for prompts and decoding: its
special and vision token ids are written into the config, ids >= len(tokenizer) are never produced by the
processor, and when the random policy samples one it decodes to nothing (the tokenizer skips unknown ids). The
reward is therefore computed on mostly empty strings (0 for everyone, so advantages are 0: the work per step does
not depend on their values). ``--tiny`` swaps in vrl's tiny config (its own ~800-token vocabulary) for CPU runs.

**Step (part ``step``).** The 3B recipe (``conf/experiment/grpo_synthetic_qwen2_5_vl_3b.yaml``): LoRA r64 / alpha
128 on the language model, vision tower and merger frozen, bf16 weights, activation checkpointing, 224-px images
(64 image tokens), B=8 prompts x G=8, 256 new tokens forced with ``min_new_tokens`` (a random policy would stop
at random lengths), micro-batches of 8, AdamW lr 1e-5, think/answer + accuracy reward. Each repetition generates
once (vrl's ``HFSampler``), scores rewards (``RewardSet``) and advantages (``Advantage``) once, then runs every arm's
post-generation stages on a fresh copy of that rollout, in rotated order, with vrl's own ``score_logprobs``,
``Objective``, ``VPPO`` hook and ``vrl_kernels``; each arm then takes its optimizer step. Step time of an arm =
generate + reward + advantage + the arm's stages. ``RLModule``/Lightning is not built (it needs Hydra-built
data, MLflow and ``datasets``, which the GPU image lacks); the stages are driven here in ``RLModule``'s order.

Arms: ``grpo`` (the recipe: strictly on-policy, so no old-log-prob pass; no KL), ``grpo_triton`` (same, fused K3
loss), ``grpo_kl_old`` (+method=grpo style: old-log-prob and reference passes, k3 KL 0.04, seq-mean-token-mean;
the reference is the LoRA-disabled policy as in ``RLModule``), ``vppo_base`` (VPPO's loss settings without its
hook: clip 0.2/0.28, dual clip 3, nll 0.06), ``vppo`` (+ the hook: paired no-grad pass over [rollout; patch-
blackened rollout], K2 top-k mask and TAS), ``vppo_triton`` (same with ``kernels=triton``: K1, K2, K3).

**Mismatch (part ``mismatch``).** ``generate(..., output_logits=True, output_scores=True,
return_dict_in_generate=True)`` through ``HFSampler``; the sampler's log-prob of each emitted token is
log_softmax of the raw step logits after the scorer's transform (/temperature, suppressed ids at -1e9:
``vrl.models.scoring.response_logits``) and, separately, of the processed scores (what was actually sampled
from); both are compared with ``score_logprobs`` (teacher-forced, micro-batches of 8) on the valid response tokens.
Same model in bf16, then cast to fp32 (exact: every bf16 value is an fp32 value).

Timing: ``torch.cuda.synchronize()`` around every stage, one warm-up repetition dropped, medians over the rest.
The JSON is rewritten after every repetition, so a part stopped by its timeout keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

#: Qwen2.5-VL-3B-Instruct's config.json sizes, as ``vrl.models.tiny.TINY_SIZES`` keys.
QWEN25_VL_3B = {
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128000,
    "vision_depth": 32,
    "vision_hidden_size": 1280,
    "vision_intermediate_size": 3420,
    "vision_num_heads": 16,
}
QWEN25_VL_3B_VOCAB = 151_936
QWEN25_VL_3B_FULLATT = [7, 15, 23, 31]
#: ``--shrink``: the 3B config's vocabulary and layout at toy width/depth (CPU check of the big-vocabulary path).
SHRUNK = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vision_depth": 4,
    "vision_hidden_size": 32,
    "vision_intermediate_size": 64,
    "vision_num_heads": 2,
}

PROMPT = "<image>What colour is the shape?"
SUFFIX = " Think inside <think> </think>, then give only the final answer inside <answer> </answer>."
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
ARMS = ("grpo", "grpo_triton", "grpo_kl_old", "vppo_base", "vppo", "vppo_triton")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--part",
        choices=("env", "step", "mismatch", "all"),
        default="all",
        help="env: versions, GPU, commit and source fingerprint only; all = step + mismatch",
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="vrl's tiny Qwen2.5-VL config and small sizes (CPU smoke)")
    p.add_argument("--shrink", action="store_true", help="3B vocabulary and layout at toy width (CPU check)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default outputs/bench_gpu_step/<time>.json)")
    p.add_argument("--batch", type=int, default=8, help="B prompts per step (recipe: 8)")
    p.add_argument("--group", type=int, default=8, help="G samples per prompt (recipe: 8)")
    p.add_argument("--new-tokens", type=int, default=256, help="forced response length (recipe cap: 256)")
    p.add_argument("--image-size", type=int, default=224, help="square image side (recipe: 224 = 64 tokens)")
    p.add_argument("--micro", type=int, default=8, help="sequences per forward/backward (recipe: 8)")
    p.add_argument("--lora-r", type=int, default=64, help="LoRA rank (recipe: 64); 0 = full fine-tuning")
    p.add_argument("--no-freeze-vision", action="store_true")
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--reps", type=int, default=2, help="measured repetitions (after one warm-up)")
    p.add_argument("--budget-s", type=float, default=0.0, help="start no repetition that would end past this")
    p.add_argument("--mm-batch", type=int, default=2, help="mismatch: prompts")
    p.add_argument("--mm-group", type=int, default=4, help="mismatch: samples per prompt")
    p.add_argument("--mm-new-tokens", type=int, default=128, help="mismatch: max new tokens (not forced)")
    p.add_argument("--mm-dtypes", default="bfloat16,float32")
    p.add_argument("--temperature", type=float, default=1.0, help="rollout temperature (conf/sampler: 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--collect", nargs=2, metavar=("WORK", "OUT"), help="aggregate a gpu_session.sh run; no torch")
    p.add_argument("--print-summary", action="store_true", help="with --collect: print the short result table")
    args = p.parse_args(argv)
    if args.tiny:  # small enough for two CPU cores; every stage still runs
        args.batch, args.group, args.new_tokens, args.image_size, args.micro = 2, 4, 8, 56, 4
        args.mm_batch, args.mm_group, args.mm_new_tokens = 4, 4, 32
        args.lora_r = 8
    args.arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {ARMS}")
    return args


# --------------------------------------------------------------------------------------------- helpers


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class Stages:
    """Seconds per named stage, synchronised at both ends."""

    def __init__(self, device: str) -> None:
        self.device, self.seconds = device, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def gib(nbytes: float) -> float:
    return round(nbytes / 2**30, 3)


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    import torch

    return gib(torch.cuda.max_memory_allocated()) if device == "cuda" else None


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def env_info(device: str) -> dict:
    import torch
    import transformers

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": device,
    }
    for name in ("triton", "peft", "tokenizers"):
        try:
            info[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001 - recorded, not fatal
            info[name] = f"unavailable: {type(err).__name__}"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name,
            "gpu_mem_gib": gib(props.total_memory),
            "sms": props.multi_processor_count,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
    return info


# --------------------------------------------------------------------------------------------- model and data


def make_rows(n: int, image_size: int, seed: int) -> list[dict]:
    """Colour questions about one filled ellipse on a noisy background (PIL only: the GPU image has no
    ``datasets``, which ``vrl.data.synthetic`` needs); the row schema of ``vrl.types``."""
    import random

    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        colour = COLOURS[rng.randrange(len(COLOURS))]
        noise = np.random.default_rng(seed * 100_003 + i).normal(128, 40, (image_size, image_size, 3))
        image = Image.fromarray(noise.clip(0, 255).astype(np.uint8))  # seeded (PIL's effect_noise is not)
        r = image_size * rng.uniform(0.15, 0.35)
        cx, cy = (rng.uniform(r, image_size - r) for _ in range(2))
        ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        rows.append(
            {
                "prompt": PROMPT,
                "images": [image],
                "answer": colour,
                "answer_type": "text",
                "task": "color",
                "format": "open",
                "meta": "{}",
                "uid": f"bench-{i}",
            }
        )
    return rows


def build_vlm(args, dtype, lora_r: int):
    """(VLM, info): the model built from a config directly on the device, then load_vlm's training choices."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vrl.models import tiny
    from vrl.models.loading import (
        VLM,
        _enable_checkpointing,
        _lora_settings,
        apply_lora,
        count_parameters,
        freeze_vision_tower,
    )

    tokenizer = tiny.build_tiny_tokenizer(extra_texts=[PROMPT + SUFFIX], must_be_single_tokens=list(COLOURS))
    if args.tiny:
        config = tiny.tiny_config("qwen2_5_vl", tokenizer)
        kind = "tiny (vrl.models.tiny)"
    else:
        config = tiny.tiny_config("qwen2_5_vl", tokenizer, **(SHRUNK if args.shrink else QWEN25_VL_3B))
        config.text_config.vocab_size = QWEN25_VL_3B_VOCAB  # the real LM head and logits size (module docstring)
        if not args.shrink:
            config.vision_config.fullatt_block_indexes = QWEN25_VL_3B_FULLATT
        kind = "Qwen2.5-VL-3B config" + (" shrunk to toy width (--shrink)" if args.shrink else "")
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    if next(model.parameters()).device.type != args.device:  # from_config ignored the device context
        model = model.to(args.device)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    sync(args.device)
    build_s = time.perf_counter() - t0
    unit = (14 * 2) ** 2  # pixels per image token (patch 14, merge 2)
    processor = tiny.build_processor("qwen2_5_vl", tokenizer, min_pixels=4 * unit, max_pixels=512 * unit)
    total = count_parameters(model)[1]
    if not args.no_freeze_vision:
        freeze_vision_tower(model)
    if not args.no_checkpointing:
        _enable_checkpointing(model)
    lora_error = None
    if lora_r:
        try:
            model = apply_lora(
                model, _lora_settings({"r": lora_r}), seed=args.seed, input_grads=not args.no_checkpointing
            )
        except Exception as err:  # noqa: BLE001 - an unusable peft on the image: measure full fine-tuning instead
            lora_error, lora_r = f"{type(err).__name__}: {err}"[:300], 0
            print(f"[bench] LoRA failed ({lora_error}); going on with full fine-tuning (reported in the JSON)")
    trainable = count_parameters(model)[0]
    vlm = VLM(model, processor, "qwen2_5_vl", 14, 2, is_lora=bool(lora_r))
    info = {
        "model": kind,
        "vocab_size": config.text_config.vocab_size,
        "tokenizer_size": len(tokenizer),
        "params_total": total,
        "params_trainable": trainable,
        "build_s": round(build_s, 2),
        "dtype": str(dtype),
        "lora_r": lora_r,
        "lora_error": lora_error,
        "freeze_vision": not args.no_freeze_vision,
        "checkpointing": not args.no_checkpointing,
    }
    print(f"[bench] built {kind}: {total / 1e9:.3f} B params ({trainable / 1e6:.1f} M trainable) in {build_s:.1f} s")
    return vlm, info


def force_length(model, new_tokens: int) -> None:
    """Every response gets exactly ``new_tokens`` tokens (EOS masked until then), so timings are comparable."""
    model.generate = functools.partial(model.generate, min_new_tokens=new_tokens)


# --------------------------------------------------------------------------------------------- part: step


CONF = Path(__file__).resolve().parents[1] / "conf"


def conf_object(group: str, option: str, **overrides):
    """Instantiate ``conf/<group>/<option>.yaml`` the way Hydra would (its ``_target_`` with its keys), so the
    arms follow the configs whatever the classes are called; None for an empty node (``kl: none``)."""
    import importlib

    import yaml

    node = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    node = {k: v for k, v in node.items() if k != "defaults"} | overrides
    if not node:
        return None
    module, name = node.pop("_target_").rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**node)


def method_settings(method: str | None) -> dict:
    """Group choices, policy-loss overrides, nll coefficient and the VPPO hook node of ``conf/train.yaml`` with
    ``+method=<method>`` on top (only what the arms use; no interpolation)."""
    import yaml

    def choices(defaults) -> dict:
        out = {}
        for item in defaults or []:
            if isinstance(item, dict):
                for key, value in item.items():
                    out[key.removeprefix("override ").removeprefix("/")] = value
        return out

    base = yaml.safe_load((CONF / "train.yaml").read_text())
    settings = {"choices": choices(base["defaults"]), "policy_loss": {}, "nll_coef": 0.0, "vppo": None}
    if method:
        m = yaml.safe_load((CONF / "method" / f"{method}.yaml").read_text())
        settings["choices"] |= choices(m.get("defaults"))
        settings["policy_loss"] = dict(m.get("policy_loss") or {})
        for node in ("objective", "update"):  # where the nll coefficient lives (moved between layouts)
            if "nll_coef" in (m.get(node) or {}):
                settings["nll_coef"] = m[node]["nll_coef"]
        settings["vppo"] = (m.get("hooks") or {}).get("vppo")
    return settings


def arm_parts(arm: str, args, suppress_ids) -> tuple:
    """(objective, VPPO hook or None) of an arm, built from the configs (module docstring)."""
    from vrl.lit.loss import Objective

    method = "vppo" if arm.startswith("vppo") else ("grpo" if arm == "grpo_kl_old" else None)
    s = method_settings(method)
    c = s["choices"]
    objective = Objective(
        policy_loss=conf_object("policy_loss", c["policy_loss"], **s["policy_loss"]),
        loss_agg=conf_object("loss_agg", c["loss_agg"]),
        kl=conf_object("kl", c["kl"]),
        nll_coef=s["nll_coef"],
        temperature=args.temperature,
        kernel_impl="triton" if arm.endswith("_triton") else "torch",
        suppress_ids=suppress_ids,
    )
    hook = None
    if arm in ("vppo", "vppo_triton"):
        node = dict(s["vppo"])
        module, name = node.pop("_target_").rsplit(".", 1)
        node["perturbation"] = conf_object("perturb", "patch_blackening")
        node["seed"] = args.seed
        import importlib

        hook = getattr(importlib.import_module(module), name)(**node)
    return objective, hook


def apply_hook(hook, rollout, objective, vlm, args, step: int, stages, logged: dict) -> None:
    """VPPO's H7 pass, H8 factor and H9 token weights, as the loop applies them (both hook APIs: the
    ``vrl.hooks.StepContext`` one and the earlier ``module``-argument one)."""
    import torch

    try:
        from vrl.hooks import HookSet, StepContext
        from vrl.lit.context import Scorer, vision_layout
    except ImportError:
        StepContext = None  # noqa: N806
    if StepContext is not None and hasattr(hook, "advantage_factor"):
        hooks = HookSet({"vppo": hook})
        scorer = Scorer(vlm.model, objective, args.micro)
        ctx = StepContext(
            step=step,
            seed=args.seed,
            micro_batch_size=args.micro,
            vision=vision_layout(vlm),
            pad_token_id=vlm.processor.tokenizer.pad_token_id,
            kernel_impl=objective.kernel_impl,
            device=torch.device(args.device),
            score=scorer.score,
            logits=scorer.logits,
            log=logged.update,
        )
        with stages("vppo_extra_pass"):  # paired: old + perturbed log-probs in one pass, then K2 and TAS
            for result in hooks.extra_pass(rollout, ctx):
                rollout.extras.update(result.extras)
                if result.old_logprobs is not None and rollout.old_logprobs is None:
                    rollout.old_logprobs = result.old_logprobs
        with stages("vppo_shaping"):
            if (factor := hooks.advantage_factor(rollout, ctx)) is not None:
                rollout.advantages = rollout.advantages * factor.to(rollout.advantages)
            rollout.loss_mask, rollout.norm_mask = hooks.token_weights(rollout, ctx)
        return
    module = argparse.Namespace(  # what the earlier hook API read from RLModule
        objective=objective,
        micro_batch_size=args.micro,
        mini_batch_size=None,
        vlm=vlm,
        policy=vlm.model,
        global_step=step,
        all_gather=None,
        trainer=argparse.Namespace(world_size=1),
        log_dict=lambda d, **_: logged.update({k: float(v) for k, v in d.items()}),
    )
    with stages("vppo_extra_pass"):
        hook.extra_pass(rollout, module)
    with stages("vppo_shaping"):
        rollout.advantages = hook.transform_advantages(rollout, module)
        rollout.loss_mask = hook.token_mask(rollout, module)


def run_arm(arm: str, base, vlm, optimizer, args, step: int) -> dict:
    """One arm's post-generation stages on a fresh copy of the rollout, in RLModule's order."""
    import torch

    from vrl.models.scoring import score_logprobs
    from vrl.sampler.hf import suppressed_token_ids

    policy, device = vlm.model, args.device
    objective, hook = arm_parts(arm, args, suppressed_token_ids(vlm.processor.tokenizer))
    rollout = replace(base, extras={}, old_logprobs=None, ref_logprobs=None, loss_mask=None, norm_mask=None)
    logged: dict = {}
    stages = Stages(device)
    reset_peak(device)
    score = (objective.temperature, args.micro, objective.kernel_impl, objective.suppress_ids)
    if arm == "grpo_kl_old":  # old log-probs as with > 1 optimizer step per rollout; reference for the KL
        with stages("old_logprobs"):
            rollout.old_logprobs = score_logprobs(policy, rollout, *score)
        with stages("ref_logprobs"), policy.disable_adapter() if vlm.is_lora else contextlib.nullcontext():
            rollout.ref_logprobs = score_logprobs(policy, rollout, *score)
    if hook is not None:
        apply_hook(hook, rollout, objective, vlm, args, step, stages, logged)
    with stages("update"):
        normalizer = objective.normalizer(rollout, args.new_tokens)
        loss_total = 0.0
        for idx in torch.arange(rollout.num_sequences).split(args.micro):
            loss, _, _ = objective(policy, rollout.select(idx), normalizer)
            loss.backward()
            loss_total += float(loss.detach())
        params = [p for p in policy.parameters() if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out = {k: round(v, 4) for k, v in stages.seconds.items()}
    out |= {"peak_gib": peak_gib(device), "loss": loss_total, "grad_norm": grad_norm}
    if logged:
        out["hook_metrics"] = {k: float(v) for k, v in logged.items()}
    return out


def part_step(args, out: dict, save) -> None:
    import torch

    from vrl.rewards import Accuracy, ThinkAnswerFormat
    from vrl.rewards.combine import RewardSet
    from vrl.sampler.hf import HFSampler

    t_start = time.perf_counter()
    dtype = torch.float32 if args.device == "cpu" and args.tiny else torch.bfloat16
    vlm, info = build_vlm(args, dtype, args.lora_r)
    policy = vlm.model.train()  # RLModule.on_fit_start: checkpointing is active in train mode only
    force_length(policy, args.new_tokens)
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0
    )
    engine = HFSampler(
        group_size=args.group, max_new_tokens=args.new_tokens, temperature=args.temperature, prompt_suffix=SUFFIX
    )
    reward = RewardSet({"accuracy": Accuracy(), "format": ThinkAnswerFormat(weight=0.1)})
    advantage = conf_object("advantage", method_settings(None)["choices"]["advantage"])
    rows = make_rows(args.batch * (args.reps + 1), args.image_size, args.seed)
    res = out.setdefault("step", {})
    res["config"] = info | {
        k: getattr(args, k)
        for k in ("batch", "group", "new_tokens", "image_size", "micro", "temperature", "arms", "reps")
    }
    res["weights_and_optimizer_gib_before"] = gib(torch.cuda.memory_allocated()) if args.device == "cuda" else None
    res["reps"] = []
    save()
    rep_s = 0.0
    for rep in range(args.reps + 1):
        elapsed = time.perf_counter() - t_start
        if args.budget_s and rep > 0 and elapsed + rep_s > args.budget_s:
            print(f"[bench] step: stopping before rep {rep}: {elapsed:.0f} s + {rep_s:.0f} s > {args.budget_s} s")
            res["stopped_early"] = f"before rep {rep} (budget {args.budget_s} s)"
            break
        t_rep = time.perf_counter()
        samples = rows[rep * args.batch : (rep + 1) * args.batch]
        stages = Stages(args.device)
        reset_peak(args.device)
        with stages("generate"):
            base = engine.generate(vlm, samples)
        gen_peak = peak_gib(args.device)
        with stages("reward"):
            base.rewards, base.reward_components = reward(base.responses, base.samples)
            base.rewards = base.rewards.to(args.device)
        with stages("advantage"):
            try:  # the loop hands the response mask to the estimator (token-level ones use it)
                adv = advantage(base.rewards, base.advantage_groups(), base.response_mask)
            except TypeError:  # estimators that take (rewards, group_ids) only
                adv = advantage(base.rewards, base.advantage_groups())
            base.advantages = adv.to(args.device)
        n, width = base.num_sequences, base.response_mask.shape[1]
        entry = {
            "rep": rep,
            "warmup": rep == 0,
            **{k: round(v, 4) for k, v in stages.seconds.items()},
            "sequences": n,
            "prompt_width": base.prompt_width,
            "response_width": width,
            "response_tokens": int(base.response_mask.sum()),
            "gen_peak_gib": gen_peak,
            "gen_tokens_per_s": round(n * width / stages.seconds["generate"], 1),
            "decode_ms_per_step": round(1e3 * stages.seconds["generate"] / width, 2),
            "reward_mean": float(base.rewards.mean()),
            "arms": {},
        }
        res["reps"].append(entry)
        print(
            f"[bench] rep {rep}: generate {stages.seconds['generate']:.2f} s ({n} x {width} tokens, "
            f"P={base.prompt_width}), reward {stages.seconds['reward']:.3f} s"
        )
        order = args.arms[rep % len(args.arms) :] + args.arms[: rep % len(args.arms)]
        for arm in order:
            try:
                entry["arms"][arm] = run_arm(arm, base, vlm, optimizer, args, rep)
            except Exception as err:  # noqa: BLE001 - one failing arm must not end the part
                import traceback

                traceback.print_exc()
                entry["arms"][arm] = {"error": f"{type(err).__name__}: {err}"[:500]}
                optimizer.zero_grad(set_to_none=True)
            print(f"[bench]   {arm}: {entry['arms'][arm]}")
            save()
        rep_s = time.perf_counter() - t_rep
        entry["rep_wall_s"] = round(rep_s, 2)
        res["summary"] = summarise_step(res["reps"])
        save()
    print_step_summary(res.get("summary", {}))


def summarise_step(reps: list[dict]) -> dict:
    """Per arm: median over measured reps of each stage, the step time, shares, peak memory; VPPO ratios."""
    measured = [r for r in reps if not r["warmup"]] or reps  # a part cut short still reports its warm-up
    shared = ("generate", "reward", "advantage")
    summary: dict = {"measured_reps": sum(not r["warmup"] for r in reps)}
    arms = sorted({a for r in measured for a, v in r["arms"].items() if "error" not in v})
    for arm in arms:
        rows = [r for r in measured if arm in r["arms"] and "error" not in r["arms"][arm]]
        keys = list(
            dict.fromkeys(
                k for r in rows for k in r["arms"][arm] if k.endswith(("_logprobs", "_pass", "_shaping", "update"))
            )
        )
        stage = {k: statistics.median(r[k] for r in rows) for k in shared}
        stage |= {k: statistics.median(r["arms"][arm].get(k, 0.0) for r in rows) for k in keys}
        steps = [sum(r[k] for k in shared) + sum(r["arms"][arm].get(k, 0.0) for k in keys) for r in rows]
        step = statistics.median(steps)
        peaks = [max(r["gen_peak_gib"] or 0, r["arms"][arm]["peak_gib"] or 0) for r in rows]
        summary[arm] = {
            "step_s": round(step, 3),
            "step_s_each": [round(s, 3) for s in steps],
            "stages_s": {k: round(v, 3) for k, v in stage.items()},
            "shares": {k: round(v / step, 3) for k, v in stage.items()},
            "post_generation_s": round(step - sum(stage[k] for k in shared), 3),
            "peak_gib": max(peaks) if rows[0]["gen_peak_gib"] is not None else None,
            "gen_tokens_per_s": statistics.median(r["gen_tokens_per_s"] for r in rows),
            "step_tokens_per_s": round(
                statistics.median(r["sequences"] * (r["prompt_width"] + r["response_width"]) for r in rows) / step, 1
            ),
        }
    ratios = {}
    for num, den in (
        ("vppo", "vppo_base"),
        ("vppo", "grpo"),
        ("vppo_triton", "vppo_base"),
        ("grpo_triton", "grpo"),
        ("vppo_triton", "vppo"),
        ("grpo_kl_old", "grpo"),
    ):
        if num in summary and den in summary:
            a, b = summary[num], summary[den]
            ratios[f"{num}/{den}"] = {
                "step": round(a["step_s"] / b["step_s"], 3),
                "post_generation": round(a["post_generation_s"] / b["post_generation_s"], 3),
            }
    summary["ratios"] = ratios
    return summary


def print_step_summary(summary: dict) -> None:
    if not summary:
        return
    head = "| arm | step s | post-gen s | generate | reward | old lp | ref lp | vppo pass | update | peak GiB"
    print(f"\n[bench] step summary (median of {summary['measured_reps']} measured reps)")
    print(head + " | gen tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arm, s in summary.items():
        if not isinstance(s, dict) or "step_s" not in s:
            continue
        st = s["stages_s"]

        def cell(k, st=st, s=s):
            return f"{st[k]:.2f} ({100 * s['shares'][k]:.0f}%)" if k in st else "-"

        print(
            f"| {arm} | {s['step_s']:.2f} | {s['post_generation_s']:.2f} | {cell('generate')} | {cell('reward')} | "
            f"{cell('old_logprobs')} | {cell('ref_logprobs')} | {cell('vppo_extra_pass')} | {cell('update')} | "
            f"{s['peak_gib']} | {s['gen_tokens_per_s']} |"
        )
    for name, r in summary.get("ratios", {}).items():
        print(f"  {name}: step x{r['step']}, post-generation x{r['post_generation']}")


# --------------------------------------------------------------------------------------------- part: mismatch


def diff_stats(a, b, mask, eps: float = 0.2) -> dict:
    """|a - b| over valid tokens, and what the ratio exp(b - a) would do to a PPO clip at ``eps``."""
    import torch

    valid = mask.bool()
    d = (b - a)[valid].double()
    if d.numel() == 0:
        return {"tokens": 0}
    ad = d.abs()
    ratio = d.exp()
    return {
        "tokens": int(d.numel()),
        "max_abs": float(ad.max()),
        "mean_abs": float(ad.mean()),
        "p99_abs": float(torch.quantile(ad.float(), 0.99)),
        "frac_abs_gt_1e-3": float((ad > 1e-3).double().mean()),
        "frac_abs_gt_1e-2": float((ad > 1e-2).double().mean()),
        "max_abs_ratio_minus_1": float((ratio - 1).abs().max()),
        f"frac_outside_clip_{eps}": float(((ratio < 1 - eps) | (ratio > 1 + eps)).double().mean()),
        "mean_signed": float(d.mean()),
    }


def part_mismatch(args, out: dict, save) -> None:
    import torch

    from vrl.models.scoring import score_logprobs
    from vrl.sampler.hf import HFSampler, suppressed_token_ids

    res = out.setdefault("mismatch", {})
    dtypes = [getattr(torch, d) for d in args.mm_dtypes.split(",") if d]
    vlm, info = build_vlm(argparse.Namespace(**{**vars(args), "no_checkpointing": True}), dtypes[0], lora_r=0)
    model = vlm.model.eval()
    tok = vlm.processor.tokenizer
    suppress = suppressed_token_ids(tok)
    engine = HFSampler(group_size=args.mm_group, max_new_tokens=args.mm_new_tokens, temperature=args.temperature)
    rows = make_rows(args.mm_batch, args.image_size, args.seed + 1)
    res["config"] = info | {
        "batch": args.mm_batch,
        "group": args.mm_group,
        "max_new_tokens": args.mm_new_tokens,
        "temperature": args.temperature,
        "scoring_micro_batch": args.micro,
        "sampler_transform": "raw logits / T, suppressed ids -1e9, log_softmax in fp32 "
        "(vrl.models.scoring.response_logits + token_stats)",
    }
    captured: dict = {}
    generate = model.generate

    def capturing_generate(**kwargs):
        result = generate(**kwargs, output_logits=True, output_scores=True, return_dict_in_generate=True)
        captured["out"] = result
        return result.sequences

    model.generate = capturing_generate
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        try:
            model.to(dtype)
            torch.manual_seed(args.seed)
            stages = Stages(args.device)
            with stages("generate"):
                rollout = engine.generate(vlm, rows)
            result = captured.pop("out")
            targets = rollout.input_ids[:, rollout.prompt_width :]
            width = targets.shape[1]
            raw = torch.stack(result.logits[:width], dim=1).float()  # [N, L, V] pre-processor logits
            if args.temperature != 1.0:
                raw = raw / args.temperature
            raw = raw.index_fill(-1, torch.tensor(suppress, device=raw.device), -1e9)
            lp_raw = torch.log_softmax(raw, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            del raw
            proc = torch.stack(result.scores[:width], dim=1).float()  # what the sampler drew from
            lp_proc = torch.log_softmax(proc, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            del proc, result
            with stages("teacher_forced"):
                lp_tf = score_logprobs(model, rollout, args.temperature, args.micro, "torch", suppress)
            mask = rollout.response_mask
            res[name] = {
                "sequences": rollout.num_sequences,
                "response_width": width,
                "mean_response_len": float(mask.sum(-1).float().mean()),
                **stages.seconds,
                "teacher_forced_vs_sampler_raw": diff_stats(lp_raw, lp_tf, mask),
                "teacher_forced_vs_sampler_processed": diff_stats(lp_proc, lp_tf, mask),
                "sampler_processed_vs_raw": diff_stats(lp_raw, lp_proc, mask),
                "mean_logprob_teacher_forced": float((lp_tf * mask).sum() / mask.sum().clamp(min=1)),
            }
            s = res[name]["teacher_forced_vs_sampler_raw"]
            print(
                f"[bench] mismatch {name}: {s.get('tokens')} tokens, max |d| {s.get('max_abs', float('nan')):.3g}, "
                f"mean |d| {s.get('mean_abs', float('nan')):.3g} (teacher-forced vs sampler, scorer transform)"
            )
        except Exception as err:  # noqa: BLE001 - bf16 results survive an fp32 failure (memory, say)
            import traceback

            traceback.print_exc()
            res[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
        save()


# --------------------------------------------------------------------------------------------- part: env

#: Source files whose content the fingerprint covers (the device copy may carry uncommitted edits).
FINGERPRINT_GLOBS = (
    "vrl/**/*.py",
    "kernels/**/*.py",
    "conf/**/*.yaml",
    "experiments/bench_gpu_step.py",
    "experiments/bench_kernels.py",
    "experiments/gpu_session.sh",
    "tests/kernels/*.py",
)


def source_fingerprint(root: Path | None = None) -> str:
    """sha256 over the paths and contents of ``FINGERPRINT_GLOBS`` (compare a device run with a checkout)."""
    import hashlib

    root = root or Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    files = sorted({p for g in FINGERPRINT_GLOBS for p in root.glob(g) if p.is_file() and "__pycache__" not in p.parts})
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return f"{h.hexdigest()[:16]} ({len(files)} files)"


def part_env(args, out: dict, save) -> None:
    import subprocess

    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            return f"unavailable: {type(err).__name__}"

    info = out["env"]
    head = run("git", "rev-parse", "HEAD")  # the device copy has no .git: VRL_COMMIT=<sha> names it
    info["git_commit"] = head if len(head) == 40 else os.environ.get("VRL_COMMIT", "unknown (no .git here)")
    info["git_dirty_files"] = len(run("git", "status", "--porcelain", "--untracked-files=no").splitlines())
    info["source_fingerprint"] = source_fingerprint()
    info["nvidia_smi"] = run(
        "nvidia-smi",
        "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,"
        "clocks.mem,power.limit,temperature.gpu,utilization.gpu",
        "--format=csv",
    )
    from importlib.metadata import PackageNotFoundError, version

    for name in ("lightning", "accelerate", "numpy", "pillow", "pyyaml", "pytest", "pytest-xdist", "liger-kernel"):
        try:
            info[name] = version(name)  # from the installed metadata: importing lightning alone takes seconds
        except PackageNotFoundError:
            info[name] = "not installed"
    try:
        import torch

        info["cudnn"] = torch.backends.cudnn.version()
        if torch.cuda.is_available():
            info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except Exception as err:  # noqa: BLE001
        info["cudnn"] = f"unavailable: {err}"
    print(json.dumps(info, indent=1))
    save()


# --------------------------------------------------------------------------------------------- collect


def collect(work: Path, out: Path) -> None:
    """Merge a gpu_session.sh run: part statuses, env, pytest JUnit summaries, bench_kernels JSON, step and
    mismatch JSON -> out/results.json (rewritten after every part; reads files only, imports no torch)."""
    import xml.etree.ElementTree as ET

    result: dict = {"parts": []}
    parts = work / "parts.jsonl"
    if parts.exists():
        result["parts"] = [json.loads(line) for line in parts.read_text().splitlines() if line.strip()]
    for name in ("env", "step", "mismatch"):
        f = work / f"{name}.json"
        if f.exists():
            try:
                data = json.loads(f.read_text())
                result[name] = data.get(name, data) if name != "env" else data
                if name != "env" and "env" in data:
                    result.setdefault("python_env", data["env"])
            except json.JSONDecodeError as err:
                result[name] = {"error": f"unreadable: {err}"}
    for junit in sorted(work.glob("pytest_*.xml")):
        try:
            root = ET.parse(junit).getroot()
        except ET.ParseError as err:
            result[junit.stem] = {"error": f"unreadable: {err}"}
            continue
        cases = []
        for case in root.iter("testcase"):
            status = "passed"
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    status = tag if tag != "failure" else "failed"
                    cases.append(
                        {
                            "test": f"{case.get('classname')}::{case.get('name')}",
                            "status": status,
                            "seconds": float(case.get("time", 0)),
                            "message": (node.get("message") or "")[:300],
                        }
                    )
                    break
            else:
                cases.append(
                    {
                        "test": f"{case.get('classname')}::{case.get('name')}",
                        "status": status,
                        "seconds": float(case.get("time", 0)),
                    }
                )
        counts = {s: sum(c["status"] == s for c in cases) for s in ("passed", "failed", "error", "skipped")}
        result[junit.stem] = {"counts": counts, "cases": cases}
    kernels = {}
    for d in sorted(work.glob("bench_kernels_*")):
        f = d / "results.json"
        if f.exists():
            kernels[d.name.removeprefix("bench_kernels_")] = json.loads(f.read_text())
    if kernels:
        result["bench_kernels"] = kernels
        result["bench_kernels_vs_compile"] = _ours_vs_compile(kernels)
    write_json(out / "results.json", result)
    return result


def print_summary(result: dict) -> None:
    """The few lines that matter, last in the log (the device reply keeps its tail)."""
    print("\n==================== gpu_session summary ====================")
    env = result.get("env", {}).get("env", result.get("env", {}))
    print(
        f"device: {env.get('gpu', env.get('device'))} | torch {env.get('torch')} | triton {env.get('triton')} | "
        f"transformers {env.get('transformers')} | peft {env.get('peft')} | cuda {env.get('cuda')} | "
        f"commit {env.get('git_commit')} | source {env.get('source_fingerprint')}"
    )
    for p in result.get("parts", []):
        print(f"part {p['part']}: rc={p['rc']} ({p['seconds']} s of {p['timeout_s']} s)")
    for key in sorted(k for k in result if k.startswith("pytest_")):
        r = result[key]
        bad = [c for c in r.get("cases", []) if c["status"] in ("failed", "error")]
        print(f"{key}: {r.get('counts', r)}")
        for c in bad:
            print(f"  {c['status'].upper()} {c['test']}: {c.get('message', '')[:200]}")
    for name, run in result.get("bench_kernels", {}).items():
        bw = run.get("copy_bw")
        print(f"bench_kernels[{name}]: copy bandwidth {bw / 1e12:.3f} TB/s" if bw else f"bench_kernels[{name}]:")
        for row in run.get("rows", []):
            if row["status"] == "ok":
                frac = f" {100 * row['frac_copy_bw']:.0f}% of copy BW" if row.get("frac_copy_bw") else ""
                wall = f" wall {row['wall_us']:.1f} us" if "wall_us" in row else ""
                print(f"  {row['op']} N={row['N']} {row['provider']}: {row['ms']:.3f} ms{frac}{wall}")
            elif row["status"] != "n/a":
                print(f"  {row['op']} N={row['N']} {row['provider']}: {row['status'][:120]}")
    for entry in result.get("bench_kernels_vs_compile", []):
        print(f"  {entry}")
    step = result.get("step", {})
    if "summary" in step:
        print_step_summary(step["summary"])
    elif step:
        print(f"step: {str(step.get('error', 'no summary'))[:300]}")
    mm = result.get("mismatch", {})
    for dtype in ("bfloat16", "float32"):
        if dtype in mm:
            r = mm[dtype].get("teacher_forced_vs_sampler_raw", mm[dtype])
            print(f"mismatch {dtype}: {r}")


def _ours_vs_compile(kernels: dict) -> list[dict]:
    """ours / compile per (op, N), across the separate bench_kernels runs of a session."""
    best: dict = {}
    for run in kernels.values():
        for row in run.get("rows", []):
            if row.get("status") == "ok" and row["provider"] in ("ours", "compile", "eager"):
                best.setdefault((row["op"], row["N"]), {}).setdefault(row["provider"], row["ms"])
    out = []
    for (op, n), ms in sorted(best.items()):
        entry = {"op": op, "N": n, **{f"{k}_ms": v for k, v in ms.items()}}
        for other in ("compile", "eager"):
            if "ours" in ms and other in ms:
                entry[f"speedup_vs_{other}"] = round(ms[other] / ms["ours"], 3)
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.collect:
        result = collect(Path(args.collect[0]), Path(args.collect[1]))
        if args.print_summary:
            print_summary(result)
        return 0
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before vrl_kernels defines its kernels
    import torch

    if args.device == "cuda" and not torch.cuda.is_available() and args.part != "env":
        print("[bench] no CUDA device: use --device cpu --tiny for a smoke run")
        return 2
    path = args.out or Path("outputs/bench_gpu_step") / (time.strftime("%Y%m%d-%H%M%S") + ".json")
    device = args.device if args.device == "cpu" or torch.cuda.is_available() else "none"
    out = {
        "env": env_info(device),
        "command": " ".join([sys.executable, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    save = functools.partial(write_json, path, out)
    save()
    rc = 0
    parts = ("step", "mismatch") if args.part == "all" else (args.part,)
    for part in parts:
        try:
            {"env": part_env, "step": part_step, "mismatch": part_mismatch}[part](args, out, save)
        except Exception as err:  # noqa: BLE001 - the JSON says what failed; the exit status too
            import traceback

            traceback.print_exc()
            out.setdefault(part, {})["error"] = f"{type(err).__name__}: {err}"[:1000]
            rc = 1
        save()
        if args.device == "cuda":
            import gc

            gc.collect()
            torch.cuda.empty_cache()
    print(f"[bench] wrote {path}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
