#!/usr/bin/env python
"""Speed yardstick (issue 3, item 6): vrl's GRPO step against TRL's ``GRPOTrainer``, same model, data, settings.

What is compared, per setting (B prompts, G generations, L max completion tokens):

* **the same weights**: the tiny Qwen2.5-VL is built once by ``vrl.models.loading.load_vlm("tiny:qwen2_5_vl",
  ...)``, written with ``save_vlm`` to a temporary folder, and both sides load that folder: vrl through its
  config (``model.name_or_path=<dir>``), TRL through ``GRPOTrainer(model=<dir>)``, which loads model and
  processor from it (importing ``vrl.models.processor`` registers vrl's image-only processor class, which
  ``AutoProcessor`` needs here because torchvision is absent).
* **the same data**: the rows of ``conf/data/synthetic_color.yaml`` (``build_synthetic(tasks=[single_color],
  formats=[open], image_size=56, ...)``), given to vrl as they are and to TRL as a conversational ``prompt``
  column plus an ``image`` column. Both tokenise to the same prompt ids and pixel values (checked).
* **the same reward code**: the ``Accuracy`` term of ``conf/reward/default.yaml``, wrapped as a TRL reward
  function.
* **the same settings**: B prompts x G completions per step (TRL 1.16's ``per_device_train_batch_size``
  counts *completions*, so it is B*G, with ``gradient_accumulation_steps=1``: one generation batch and one
  optimizer step per step); ``max_completion_length`` = ``sampler.max_new_tokens`` = L; temperature 1.0,
  top_p 1, no top-k; no KL (beta 0, no reference model); token-mean loss (TRL ``loss_type="dapo"``, vrl
  ``loss_agg=token_mean``); clip 0.2; torch AdamW (lr 1e-3, no weight decay), constant LR, grad-norm clip 1;
  one forward/backward chunk; fp32 on CPU; one process; no logging backend, checkpoints or evaluation.

vrl runs its real training path: ``conf/train.yaml`` composed with overrides, ``vrl.build.build_module`` and
``build_trainer`` (Lightning), ``trainer.fit``. TRL runs ``GRPOTrainer.train``. Both are timed by callbacks
(Lightning ``on_train_batch_start/end``; transformers ``on_step_begin/end``). The headline number is the
**period** between consecutive step ends: everything a framework does per step in steady state (data
fetching, rollout, reward, update, logging, callbacks); the in-step time (begin -> end) is reported too.
Whole fits run back to back, ``--rounds`` per side with the order alternating (vrl, TRL, then TRL, vrl, ...);
the first ``--warmup`` steps of every fit are dropped (TRL's first two steps take 1-4 s), the per-step times
of all rounds are pooled, and the ratio of medians gets a bootstrap IQR over steps.

Shared machines: on a 2-core box, a second busy process makes torch's OpenMP threads wait for each other and
slowed steps 10-50x in our runs. The script waits (up to ``--max-wait`` s) for the machine to be quiet before
each fit, measures the CPU time other processes used during every step (/proc), drops steps where they used
more than ``--max-other-cores`` (all steps are kept, and the setting is flagged ``contended``, when too few
would remain). ``--cross-check-rounds N`` adds a run in a fresh 1-thread process where vrl and TRL take turns
step by step (two Python threads, one runs at a time), which other processes' load affects alike. It is off by
default: with 2 torch threads, two OpenMP teams in one process made libgomp stop spin-waiting and slowed both
sides 1.3-1.6x; with 1 thread it matched back-to-back fits (B=4 G=4 L=16: ratio 0.74 vs 0.75), but in short
runs TRL's side was sometimes 1.3x slower for reasons not pinned down.

After the timing, one vrl fit per setting is **profiled** by timing its stages (wrappers installed on the
module's objects from a callback; no vrl code is changed), a TRL fit likewise, and vrl's ``training_step`` is
run under cProfile (after warm-up). Candidate speed-ups are **prototyped by monkeypatching** (``prototype``)
and timed in vrl fits that alternate with baseline fits.

Usage (repository root; ~5 min on 2 quiet cores, ``--quick`` ~1 min)::

    python experiments/bench_vs_trl.py           # -> experiments/results/bench_vs_trl.{json,md}
    python experiments/bench_vs_trl.py --quick   # -> experiments/results/bench_vs_trl_quick.{json,md}
    python experiments/bench_vs_trl.py --settings 4x4x16 --steps 50 --rounds 4 --prototypes ""

Settings are ``BxGxL``; prototypes are names joined by ``+`` (see ``prototype``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import cProfile
import json
import logging
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_CACHE = Path(tempfile.mkdtemp(prefix="vrl-bench-trl-"))  # model, caches, run folders: removed at exit
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(_CACHE / "hf"),
        "HF_DATASETS_CACHE": str(_CACHE / "datasets"),
        "MPLCONFIGDIR": str(_CACHE / "mpl"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "false",
    }
)

import numpy as np  # noqa: E402
import torch  # noqa: E402

LR = 1e-3
SEED = 0
FIT_BUDGET_S = [90.0]  # a fit stops after this many seconds (--fit-budget); only a contended machine reaches it
DEFAULT_SETTINGS = "4x4x16,16x8x4,16x8x1,1x4x16"
DEFAULT_PROTOTYPES = "no_logging,dedupe_images,dedupe_rope,fused_adamw,no_logging+dedupe_images+dedupe_rope+fused_adamw"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "transformers", "trl", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.utils.logging.disable_progress_bar()


# ----------------------------------------------------------------------------- contention on a shared machine
class CpuSampler:
    """CPU time of *other* processes, in cores, between consecutive ``sample()`` calls (from /proc).

    0 when nothing else ran; ~1 when another process held a whole core. Our own process (all threads) is
    subtracted, so this is independent of how many threads torch uses.
    """

    tick = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int, float]:
        try:
            f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]  # user nice system irq softirq steal
            stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            mine = int(stat[11]) + int(stat[12])  # utime + stime of the whole process
        except (OSError, ValueError, IndexError):
            busy = mine = 0
        return busy, mine, time.perf_counter()

    def sample(self) -> float:
        now = self._read()
        busy, mine, t = (a - b for a, b in zip(now, self._last))
        self._last = now
        return max(busy - mine, 0) / self.tick / t if t > 0 else float("nan")


def wait_quiet(max_other: float, max_wait_s: float) -> float:
    """Wait (up to ``max_wait_s``) until other processes use less than ``max_other`` cores over 1 s."""
    sampler, t0 = CpuSampler(), time.perf_counter()
    while True:
        time.sleep(1.0)
        other = sampler.sample()
        if other < max_other or time.perf_counter() - t0 > max_wait_s:
            if time.perf_counter() - t0 > 1.5:
                log(
                    f"  waited {time.perf_counter() - t0:.0f} s for a quiet machine "
                    f"(other processes: {other:.2f} cores)"
                )
            return other


# ----------------------------------------------------------------------------- shared inputs
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="vrl_conf", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def vrl_overrides(model_dir: str, out_dir: str, b: int, g: int, length: int, max_steps: int) -> list[str]:
    return [
        f"output_dir={out_dir}",
        "logger=none",
        f"model.name_or_path={model_dir}",
        f"data.train.num_samples={rows_needed(b, max_steps)}",
        "data.val=null",
        "trainer.limit_val_batches=0",
        f"trainer.max_steps={max_steps}",
        "trainer.enable_progress_bar=false",
        f"data_loader.batch_size={b}",
        f"sampler.group_size={g}",
        f"sampler.max_new_tokens={length}",
        "sampler.temperature=1.0",
        f"optimizer.lr={LR}",
        "optimizer.weight_decay=0.0",
        f"update.micro_batch_size={b * g}",  # one forward/backward, like TRL's single chunk
        "update.log_rollouts_every=0",
        "kl=none",
        "kernels=torch",
        f"seed={SEED}",
        "++ckpt_every=100000000",  # no checkpoint inside the timed steps
        "callbacks.image_use=null",  # vrl's image-use diagnostics: TRL has none, so neither side pays for them
    ]


def rows_needed(b: int, steps: int) -> int:
    return max(256, b * (steps + 2))  # no epoch boundary inside a fit, on either side


def build_model_dir(root: Path) -> tuple[str, int, int]:
    """The tiny VLM, built once by vrl and saved; both frameworks load this folder."""
    from vrl.data import tasks
    from vrl.models.loading import load_vlm, save_vlm

    model_cfg = compose(["logger=none", "output_dir=unused"]).model  # the default run's pixel bounds
    vlm = load_vlm(
        "tiny:qwen2_5_vl",
        tiny_extra_texts=tasks.corpus(),
        tiny_single_tokens=tasks.single_token_words(),
        min_pixels=model_cfg.min_pixels,
        max_pixels=model_cfg.max_pixels,
        seed=SEED,
    )
    out = root / "tiny_qwen2_5_vl"
    save_vlm(vlm, out)
    return str(out), sum(p.numel() for p in vlm.model.parameters()), len(vlm.processor.tokenizer)


def trl_dataset(vrl_rows):
    """vrl rows (``prompt`` with one ``<image>``, ``images``) -> TRL's conversational ``prompt`` + ``image``."""

    def convert(row):
        text = row["prompt"].replace("<image>", "", 1).strip("\n")
        return {"prompt": [{"role": "user", "content": text}], "image": row["images"][0]}

    return vrl_rows.map(convert, remove_columns=["prompt", "images"])


def check_same_prompt(model_dir: str, vrl_rows, trl_rows) -> dict:
    """Both sides must feed the model the same prompt token ids and pixel values."""
    from trl.data_utils import prepare_multimodal_messages

    from vrl.models.processor import load_processor
    from vrl.sampler.prompts import encode_prompts

    proc = load_processor(model_dir, "qwen2_5_vl")
    enc, _ = encode_prompts(proc, [dict(vrl_rows[0])])
    msgs = prepare_multimodal_messages(trl_rows[0]["prompt"], images=[trl_rows[0]["image"]])
    tok = proc.apply_chat_template(conversation=[msgs], add_generation_prompt=True, tokenize=True, return_dict=True)
    same_ids = enc["input_ids"][0].tolist() == list(tok["input_ids"][0])
    same_pixels = bool(torch.equal(torch.as_tensor(tok["pixel_values"]), enc["pixel_values"]))
    if not (same_ids and same_pixels):
        raise SystemExit(f"vrl and TRL prompts differ: same ids {same_ids}, same pixels {same_pixels}")
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return {"prompt_tokens": len(enc["input_ids"][0]), "image_tokens": int((enc["input_ids"][0] == image_id).sum())}


# ----------------------------------------------------------------------------- stage timing (profile)
class StageTimer:
    """Wall time per named stage within one step; ``flush`` closes the step. Nested calls of a stage count once."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self._active: set[str] = set()

    def wrap(self, name: str, fn):
        def timed(*a, **k):
            if name in self._active:  # e.g. log_dict -> log
                return fn(*a, **k)
            self._active.add(name)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.current[name] += time.perf_counter() - t
                self.current[name + " [calls]"] += 1
                self._active.discard(name)

        return timed

    def flush(self, **extra: float) -> None:
        self.steps.append(dict(self.current) | extra)
        self.current = defaultdict(float)

    def table(self, warmup: int) -> dict[str, float]:
        keep = self.steps[warmup:]
        out = {}
        for k in sorted({k for s in keep for k in s}):
            v = float(np.median([s.get(k, 0.0) for s in keep]))
            out[k] = round(v, 1) if k.endswith("[calls]") else round(v * 1e3, 2)
        return out


class _TimedProxy:
    """Stands in for a callable object (reward set, objective): times calls, delegates attributes."""

    def __init__(self, inner, timer: StageTimer, name: str) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_call", timer.wrap(name, inner))

    def __call__(self, *a, **k):
        return self._call(*a, **k)

    def __getattr__(self, item):
        return getattr(self._inner, item)

    def __setattr__(self, key, value):
        setattr(self._inner, key, value)


def instrument_model(model, timer: StageTimer) -> None:
    """Vision tower and language model (every call: generate's prefill and decode steps, teacher-forced pass)."""
    inner = model.model
    inner.visual.forward = timer.wrap("model: vision tower", inner.visual.forward)
    inner.language_model.forward = timer.wrap("model: language model", inner.language_model.forward)


def instrument_vrl(module, timer: StageTimer) -> None:
    module.prompts.next_batch = timer.wrap("data: next_batch (rows, PNG decode)", module.prompts.next_batch)
    instrument_model(module.vlm.model, timer)
    module.vlm.model.generate = timer.wrap("rollout: model.generate", module.vlm.model.generate)
    module.sampler.generate = timer.wrap("rollout: HFSampler.generate", module.sampler.generate)
    module.reward = _TimedProxy(module.reward, timer, "reward")
    module.advantage = _TimedProxy(module.advantage, timer, "advantage")
    module.score_passes = timer.wrap("score passes (old/ref log-probs)", module.score_passes)
    module.objective = _TimedProxy(module.objective, timer, "update: forward + loss")
    module.manual_backward = timer.wrap("update: backward", module.manual_backward)
    module.guard.step = timer.wrap("update: grad clip + optimizer step", module.guard.step)
    opt = module.optimizers()
    opt.step = timer.wrap("update: optimizer step", opt.step)
    module.make_rollout = timer.wrap("make_rollout: total (data + rollout + reward)", module.make_rollout)
    module.log_dict = timer.wrap("logging: self.log_dict/log", module.log_dict)
    module.log = timer.wrap("logging: self.log_dict/log", module.log)


@contextlib.contextmanager
def module_level_timers(timer: StageTimer | None):
    """Module-level functions the step calls by name (restored afterwards)."""
    if timer is None:
        yield
        return
    import vrl.lit.rl_module as rlm
    import vrl.sampler.hf as hf

    saved = (hf.encode_prompts, rlm.global_metrics, rlm.ppo_update, rlm.log_step)
    hf.encode_prompts = timer.wrap("rollout: encode prompts (chat template + image processor)", saved[0])
    rlm.global_metrics = timer.wrap("metrics: global_metrics", saved[1])
    rlm.ppo_update = timer.wrap("update: total", saved[2])
    rlm.log_step = timer.wrap("logging: log_step (one record per step)", saved[3])
    try:
        yield
    finally:
        hf.encode_prompts, rlm.global_metrics, rlm.ppo_update, rlm.log_step = saved


def instrument_trl(tr, timer: StageTimer) -> None:
    instrument_model(tr.model, timer)
    tr._tokenize_prompts = timer.wrap("rollout: tokenize prompts + images (processor)", tr._tokenize_prompts)
    tr._generate_single_turn = timer.wrap("rollout: pad + model.generate", tr._generate_single_turn)
    tr._generate = timer.wrap("rollout: _generate", tr._generate)
    tr._calculate_rewards = timer.wrap("reward", tr._calculate_rewards)
    tr._generate_and_score_completions = timer.wrap(
        "make_rollout: total (_generate_and_score_completions)", tr._generate_and_score_completions
    )
    tr.compute_loss = timer.wrap("update: forward + loss", tr.compute_loss)
    tr.training_step = timer.wrap("step: training_step (rollout + fwd + bwd)", tr.training_step)
    tr.accelerator.backward = timer.wrap("update: backward", tr.accelerator.backward)


# ----------------------------------------------------------------------------- step recording and interleaving
class Baton:
    """Lets two fits in two threads take turns, one step each: a side runs only while it holds the baton, so
    both see the same machine state step by step (drift and other processes' load hit both alike)."""

    def __init__(self, first: str) -> None:
        self.owner, self.finished = first, set()
        self.cond = threading.Condition()

    @staticmethod
    def other(me: str) -> str:
        return "trl" if me == "vrl" else "vrl"

    def wait_turn(self, me: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.owner == me or self.other(me) in self.finished)

    def hand_over(self, me: str) -> None:
        with self.cond:
            self.owner = self.other(me)
            self.cond.notify_all()
        self.wait_turn(me)

    def finish(self, me: str) -> None:
        with self.cond:
            self.finished.add(me)
            self.owner = self.other(me)
            self.cond.notify_all()


class StepRecorder:
    """Per-step wall times of one fit. ``period``: from the previous step end (or, interleaved, from getting the
    baton back) to this step end, i.e. one whole loop iteration; ``inner``: step begin -> end hooks."""

    def __init__(self, side: str, baton: Baton | None = None) -> None:
        self.side, self.baton = side, baton
        self.deadline = time.perf_counter() + FIT_BUDGET_S[0]
        self.truncated = False
        self.inner, self.period, self.other, self.resp_len = [], [], [], []
        self.threads: set[int] = set()
        self._t0 = self._resume = None
        self._cpu = CpuSampler()

    def begin(self) -> None:
        self._t0 = time.perf_counter()

    def end(self, resp_len: float) -> bool:
        """Record a step; True when the fit ran past its time budget (a contended machine) and should stop."""
        t = time.perf_counter()
        self.other.append(self._cpu.sample())
        self.inner.append(t - self._t0)
        self.period.append(t - self._resume if self._resume is not None else float("nan"))
        self.resp_len.append(resp_len)
        self.threads.add(torch.get_num_threads())
        self.truncated = self.truncated or t > self.deadline
        return self.truncated

    def resume(self) -> None:
        """Called last in the step-end hook: hand the baton over (interleaved) and start the next period."""
        if self.baton is not None:
            self.baton.hand_over(self.side)
            self._cpu.sample()  # the other side's step is not ours
        self._resume = time.perf_counter()

    def result(self) -> dict:
        return {
            "inner": self.inner,
            "period": self.period,
            "other": self.other,
            "resp_len": self.resp_len,
            "threads": sorted(self.threads),
            "truncated": self.truncated,
        }


# ----------------------------------------------------------------------------- vrl side
def run_vrl(
    model_dir: str,
    work: Path,
    b: int,
    g: int,
    length: int,
    steps: int,
    stage_timer=None,
    extra=(),
    baton: Baton | None = None,
):
    """One ``trainer.fit`` through vrl's real path; per-step timings (first steps included)."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from vrl.build import build_module, build_trainer

    rec = StepRecorder("vrl", baton)
    in_module: list[float] = []

    class LitTimer(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            if stage_timer is not None:
                instrument_vrl(pl_module, stage_timer)
            rec.resume()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            rec.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            m = trainer.callback_metrics
            if rec.end(float(m["rollout/response_len_mean"]) if "rollout/response_len_mean" in m else np.nan):
                trainer.should_stop = True
            in_module.append(float(m["perf/step_time_s"]) if "perf/step_time_s" in m else np.nan)
            if stage_timer is not None:
                stage_timer.flush(
                    **{
                        "step: training_step (perf/step_time_s)": in_module[-1],
                        "step: batch start -> end": rec.inner[-1],
                        "step: period end -> end": rec.period[-1],
                    }
                )
            rec.resume()

    out = tempfile.mkdtemp(prefix="vrl-", dir=work)
    cfg = compose(vrl_overrides(model_dir, out, b, g, length, steps) + list(extra))
    try:  # what `python -m vrl` checks first (vrl.validate, where present)
        from vrl.validate import validate_config
    except ImportError:
        validate_config = None
    if validate_config is not None:
        validate_config(cfg)
    L.seed_everything(SEED, workers=True, verbose=False)
    module = build_module(cfg)
    trainer = build_trainer(cfg, None, callbacks=[LitTimer()])
    with module_level_timers(stage_timer):
        trainer.fit(module)
    return rec.result() | {"in_module": in_module}


# ----------------------------------------------------------------------------- TRL side
def make_trl_reward():
    from hydra.utils import instantiate

    acc = instantiate(compose(["logger=none", "output_dir=unused"]).reward.accuracy)  # vrl's own reward term

    def accuracy(prompts, completions, answer, answer_type, uid, **kwargs):
        responses = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        samples = [{"answer": a, "answer_type": t, "uid": u} for a, t, u in zip(answer, answer_type, uid)]
        return [float(x) for x in acc(responses, samples)]

    return accuracy


def trl_config(out_dir: str, b: int, g: int, length: int, steps: int):
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=b * g,  # TRL 1.16 counts completions: B prompts x G generations
        num_generations=g,
        gradient_accumulation_steps=1,  # steps_per_generation 1: one generate + one optimizer step per step
        max_completion_length=length,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        loss_type="dapo",  # token mean over the generation batch = vrl loss_agg=token_mean
        epsilon=0.2,
        num_iterations=1,
        scale_rewards="group",
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        use_vllm=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to=[],
        logging_steps=10**9,
        save_strategy="no",
        eval_strategy="no",
        max_steps=steps,
        disable_tqdm=True,
        seed=SEED,
        dataloader_num_workers=0,
        log_completions=False,
    )


def run_trl(
    model_dir: str,
    dataset,
    reward,
    work: Path,
    b: int,
    g: int,
    length: int,
    steps: int,
    stage_timer=None,
    baton: Baton | None = None,
):
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer

    import vrl.models.processor  # noqa: F401  (registers the image-only processor: no torchvision here)

    rec = StepRecorder("trl", baton)

    class Timer(TrainerCallback):
        trainer = None

        def on_train_begin(self, args, state, control, **kw):
            rec.resume()

        def on_step_begin(self, args, state, control, **kw):
            rec.begin()

        def on_step_end(self, args, state, control, **kw):
            lens = self.trainer._metrics["train"].get("completions/mean_length")
            if rec.end(float(lens[-1]) if lens else np.nan):
                control.should_training_stop = True
            if stage_timer is not None:
                stage_timer.flush(
                    **{"step: step begin -> end": rec.inner[-1], "step: period end -> end": rec.period[-1]}
                )
            rec.resume()

    timer = Timer()
    out = tempfile.mkdtemp(prefix="trl-", dir=work)
    args = trl_config(out, b, g, length, steps)
    from vrl.models.processor import load_processor

    # the folder's processor, loaded as vrl loads it: AutoProcessor in transformers 5.25 also builds the video
    # processor, which needs torchvision (absent here, see shared/OFFLINE.md); same files, same tokens for both sides
    processor = load_processor(model_dir, "qwen2_5_vl")
    trainer = GRPOTrainer(
        model=model_dir,
        reward_funcs=[reward],
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm swaps the progress bar for a printer
    timer.trainer = trainer
    assert trainer.model.dtype == torch.float32, trainer.model.dtype
    assert args.steps_per_generation == 1 and args.generation_batch_size == b * g
    if stage_timer is not None:
        instrument_trl(trainer, stage_timer)
    trainer.train()
    return rec.result() | {"processor": type(trainer.processing_class).__name__}


def run_pair(model_dir, work, dataset, reward, b, g, length, steps, first: str, threads: int) -> dict[str, dict]:
    """vrl (main thread) and TRL (a second thread) taking turns step by step; ``first`` starts."""
    baton = Baton(first)
    box: dict = {}

    def trl_side() -> None:
        torch.set_num_threads(threads)  # intra-op settings are per thread
        baton.wait_turn("trl")
        try:
            box["trl"] = run_trl(model_dir, dataset, reward, work, b, g, length, steps, baton=baton)
        except BaseException as exc:  # re-raised in the main thread
            box["error"] = exc
        finally:
            baton.finish("trl")

    thread = threading.Thread(target=trl_side, name="trl", daemon=True)
    thread.start()
    baton.wait_turn("vrl")
    try:
        box["vrl"] = run_vrl(model_dir, work, b, g, length, steps, baton=baton)
    finally:
        baton.finish("vrl")
        thread.join()
    if "error" in box:
        raise box["error"]
    return box


# ----------------------------------------------------------------------------- prototypes (monkeypatches)
def _dedupe_image_features(original):
    """``get_image_features`` that encodes each distinct image once: vrl repeats a prompt's image for its G
    sequences, so the vision tower otherwise runs G times on the same pixels (in generate's prefill and in
    the teacher-forced pass). Outputs are shared, so gradients of the copies add up, as before."""

    def get_image_features(self, pixel_values, image_grid_thw=None, **kwargs):
        sizes = image_grid_thw.prod(-1).tolist()
        chunks = torch.split(pixel_values, sizes)
        unique, which = [], []
        for i, chunk in enumerate(chunks):
            j = unique[-1] if unique else None
            if (
                j is not None
                and sizes[j] == sizes[i]
                and torch.equal(image_grid_thw[j], image_grid_thw[i])
                and torch.equal(chunks[j], chunk)
            ):
                which.append(len(unique) - 1)
            else:
                unique.append(i)
                which.append(len(unique) - 1)
        if len(unique) == len(chunks):
            return original(self, pixel_values, image_grid_thw, **kwargs)
        out = original(self, torch.cat([chunks[i] for i in unique]), image_grid_thw[unique], **kwargs)
        feats = out.pooler_output
        out.pooler_output = tuple(feats[j] for j in which)
        return out

    return get_image_features


def _dedupe_rope_index(original):
    """``get_rope_index`` over distinct rows only. Qwen-VL's M-RoPE positions depend on a row's token types,
    attention mask and image grid, not on its token ids, and transformers computes them in a Python loop over
    rows; the G rows of a group are identical at generate's prefill (and mostly so in the teacher-forced pass).
    Assumes one image per row (true here); checks itself against the original on its first calls."""
    checks = [2]

    def get_rope_index(
        self,
        input_ids,
        mm_token_type_ids=None,
        image_grid_thw=None,
        video_grid_thw=None,
        second_per_grid_ts=None,
        attention_mask=None,
        **kwargs,
    ):
        args = dict(
            mm_token_type_ids=mm_token_type_ids,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            second_per_grid_ts=second_per_grid_ts,
            attention_mask=attention_mask,
            **kwargs,
        )
        n = input_ids.shape[0]
        simple = (
            video_grid_thw is None
            and image_grid_thw is not None
            and attention_mask is not None
            and mm_token_type_ids is not None
            and image_grid_thw.shape[0] == n
        )
        if not simple:
            return original(self, input_ids, **args)
        key = torch.cat([mm_token_type_ids.long(), attention_mask.long(), image_grid_thw.long()], dim=1)
        unique, inverse = torch.unique(key, dim=0, return_inverse=True)
        if unique.shape[0] == n:
            return original(self, input_ids, **args)
        first = torch.full((unique.shape[0],), n, dtype=torch.long).scatter_reduce(0, inverse, torch.arange(n), "amin")
        sub = dict(
            args,
            mm_token_type_ids=mm_token_type_ids[first],
            image_grid_thw=image_grid_thw[first],
            attention_mask=attention_mask[first],
        )
        pos, delta = original(self, input_ids[first], **sub)
        pos, delta = pos[:, inverse], delta[inverse]
        if checks[0] > 0:
            checks[0] -= 1
            ref_pos, ref_delta = original(self, input_ids, **args)
            valid = attention_mask.bool()
            assert torch.equal(ref_pos[:, valid], pos[:, valid]) and torch.equal(ref_delta, delta), "dedupe_rope"
        return pos, delta

    return get_rope_index


@contextlib.contextmanager
def prototype(spec: str):
    """Apply prototype speed-ups (names joined by ``+``) for one vrl fit; yields extra config overrides.

    ``no_logging``     Lightning ``self.log_dict`` / ``self.log`` become no-ops (the metrics are still computed):
                       the cost of Lightning's per-step metric bookkeeping.
    ``no_suppress``    no suppressed token ids: generate without ``SuppressTokensLogitsProcessor`` and the loss
                       without ``index_fill``. NOT safe, and not in the defaults: a sampled ``<|image_pad|>`` makes
                       the next teacher-forced pass fail ("Image features and image tokens do not match"), which
                       happened within ~40 steps at B=4 G=4 L=16. TRL 1.16 does not mask these ids at all.
    ``dedupe_images``  the vision tower encodes each distinct image once per call (see _dedupe_image_features).
    ``dedupe_rope``    M-RoPE position ids computed once per distinct row (see _dedupe_rope_index).
    ``fused_adamw``    ``++optimizer.fused=true`` (torch's fused CPU AdamW kernel); a config override.
    """
    undo, extra = [], []

    def patch(obj, attr, value):
        undo.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    for name in [n for n in spec.split("+") if n and n != "baseline"]:
        if name == "no_logging":
            import vrl.lit.rl_module as rlm

            patch(rlm.RLModule, "log_dict", lambda self, *a, **k: None)
            patch(rlm.RLModule, "log", lambda self, *a, **k: None)
        elif name == "no_suppress":
            import vrl.lit.rl_module as rlm
            import vrl.sampler.hf as hf

            patch(hf, "suppressed_token_ids", lambda tokenizer: [])
            patch(rlm, "suppressed_token_ids", lambda tokenizer: [])
        elif name == "dedupe_images":
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

            patch(Qwen2_5_VLModel, "get_image_features", _dedupe_image_features(Qwen2_5_VLModel.get_image_features))
        elif name == "dedupe_rope":
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

            patch(Qwen2_5_VLModel, "get_rope_index", _dedupe_rope_index(Qwen2_5_VLModel.get_rope_index))
        elif name == "fused_adamw":
            extra.append("++optimizer.fused=true")
        else:
            raise ValueError(f"unknown prototype {name!r}")
    try:
        yield extra
    finally:
        for obj, attr, value in reversed(undo):
            setattr(obj, attr, value)


# ----------------------------------------------------------------------------- statistics
def summarise(times: list[float]) -> dict:
    a = np.asarray(times, dtype=float) * 1e3
    if a.size == 0:
        return {
            "median_ms": float("nan"),
            "q25_ms": float("nan"),
            "q75_ms": float("nan"),
            "iqr_ms": float("nan"),
            "n": 0,
        }
    q25, q50, q75 = np.percentile(a, [25, 50, 75])
    return {
        "median_ms": round(float(q50), 2),
        "q25_ms": round(float(q25), 2),
        "q75_ms": round(float(q75), 2),
        "iqr_ms": round(float(q75 - q25), 2),
        "n": int(a.size),
    }


def ratio_stats(num: list[float], den: list[float], n_boot: int = 2000) -> dict:
    """Ratio of medians num/den, with a bootstrap over steps: its IQR and 95% interval."""
    a, b = np.asarray(num), np.asarray(den)
    rng = np.random.default_rng(0)
    boots = np.median(rng.choice(a, (n_boot, a.size)), 1) / np.median(rng.choice(b, (n_boot, b.size)), 1)
    p = np.percentile(boots, [2.5, 25, 75, 97.5])
    return {
        "ratio": round(float(np.median(a) / np.median(b)), 3),
        "boot_q25": round(float(p[1]), 3),
        "boot_q75": round(float(p[2]), 3),
        "boot_ci95": [round(float(p[0]), 3), round(float(p[3]), 3)],
    }


def clean_steps(res: dict, warmup: int, max_other: float, key: str = "period") -> tuple[list[float], int]:
    """Steps after warm-up whose period saw other processes use at most ``max_other`` cores."""
    keep, dropped = [], 0
    for i, x in enumerate(res[key]):
        if i < warmup or not np.isfinite(x):
            continue
        if res["other"][i] > max_other:
            dropped += 1
            continue
        keep.append(x)
    return keep, dropped


def timed_fit(fn, label: str, args) -> dict:
    """Run a fit after waiting for a quiet machine; repeat it (up to --retries) when most steps were disturbed."""
    for attempt in range(args.retries + 1):
        other = wait_quiet(args.max_other_cores / 2, args.max_wait)
        t0 = time.perf_counter()
        res = fn()
        res["fit_s"] = round(time.perf_counter() - t0, 1)
        kept, dropped = clean_steps(res, args.warmup, args.max_other_cores)
        res["dropped_steps"], res["attempt"] = dropped, attempt + 1
        if len(kept) >= max(dropped, 3) or attempt == args.retries or other >= args.max_other_cores:
            break  # good enough, out of retries, or the machine stays busy: a repeat would not help
        log(f"  {label}: {dropped} of {dropped + len(kept)} steps disturbed by other processes; repeating the fit")
    return res


# ----------------------------------------------------------------------------- main
def machine_info(threads: int) -> dict:
    import lightning
    import transformers
    import trl

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def git(*a: str) -> str | None:
        with contextlib.suppress(Exception):
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        return None

    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "lightning": lightning.__version__,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_files": [line[3:] for line in (git("status", "--porcelain") or "").splitlines()],
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def parse_settings(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in part.lower().split("x")) for part in text.split(",") if part]


#: (label, path fragment, function name): cumulative times reported per step from the cProfile of vrl's steps.
CPROFILE_FOCUS = [
    ("transformers generate (all of it)", "generation/utils.py", "generate"),
    ("M-RoPE positions (get_rope_index, all calls)", "modeling_qwen2_5_vl.py", "get_rope_index"),
    ("vision features (get_image_features, all calls)", "modeling_qwen2_5_vl.py", "get_image_features"),
    ("encode_prompts (chat template + processor)", "vrl/sampler/prompts.py", "encode_prompts"),
    ("Lightning self.log_dict", "lightning/pytorch/core/module.py", "log_dict"),
    ("Lightning self.log (all calls)", "lightning/pytorch/core/module.py", "log"),
    ("loss forward (Objective.__call__)", "vrl/lit/loss.py", "__call__"),
    ("backward (manual_backward)", "lightning/pytorch/core/module.py", "manual_backward"),
    ("Rollout.select", "vrl/types.py", "select"),
    ("reward (RewardSet.__call__)", "vrl/rewards/combine.py", "__call__"),
    ("rollout_metrics", "vrl/lit/metrics.py", "rollout_metrics"),
]


def cprofile_summary(stats: pstats.Stats, steps: int, n: int = 12) -> dict:
    """Per-step self time split (torch builtins / Python frames / other builtins), top self time, focus list.
    cProfile adds a cost to every Python call, so the Python share is inflated; read it as an upper bound."""
    rows, torch_c, other_c, python, focus = [], 0.0, 0.0, 0.0, {}
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        name = f"{Path(file).parent.name}/{Path(file).name}:{line}({func})" if file != "~" else func
        rows.append(
            {
                "function": name,
                "calls_per_step": round(nc / steps, 1),
                "self_ms_per_step": round(tt / steps * 1e3, 2),
                "cum_ms_per_step": round(ct / steps * 1e3, 2),
            }
        )
        if file == "~":
            if "torch" in func:
                torch_c += tt
            else:
                other_c += tt
        else:
            python += tt
        for label, frag, fname in CPROFILE_FOCUS:
            if func == fname and frag in file.replace("\\", "/"):
                focus[label] = round(max(focus.get(label, 0.0), ct / steps * 1e3), 2)
    rows.sort(key=lambda r: -r["self_ms_per_step"])
    focus = {label: focus[label] for label, _, _ in CPROFILE_FOCUS if label in focus}
    total = torch_c + other_c + python
    per = lambda x: round(x / steps * 1e3, 2)  # noqa: E731
    return {
        "profiled_steps": steps,
        "self_ms_per_step": per(total),
        "torch_builtins_ms_per_step": per(torch_c),
        "python_frames_ms_per_step": per(python),
        "other_builtins_ms_per_step": per(other_c),
        "focus_cum_ms_per_step": focus,
        "top_self_time": rows[:n],
    }


def headline(args, ctx: dict, b: int, g: int, length: int, mode: str, threads: int, rounds: int) -> dict:
    """The timed comparison of one setting: rounds of back-to-back (sequential) or interleaved fits, and statistics.

    Interleaved fits run TRL in a second thread; with more than one torch thread that makes two OpenMP teams
    on the machine, and libgomp then stops spin-waiting (4 managed threads > 2 CPUs), which slowed both sides
    1.3-1.6x in our tests. So interleaving is used with one thread only, where it matched sequential fits.
    """
    tag = f"B={b} G={g} L={length} [{mode}, {threads} thread{'s' if threads > 1 else ''}]"
    total = args.warmup + args.steps + 1  # +1: the first period has no start
    torch.set_num_threads(threads)
    entry: dict = {"mode": mode, "torch_threads": threads, "rounds": rounds}
    runs: dict[str, list[dict]] = {"vrl": [], "trl": []}
    for r in range(rounds):
        first = "vrl" if r % 2 == 0 else "trl"
        if mode == "interleaved":
            other = wait_quiet(args.max_other_cores / 2, args.max_wait)
            t0 = time.perf_counter()
            pair = run_pair(
                ctx["model_dir"], ctx["work"], ctx["trl_rows"], ctx["reward"], b, g, length, total, first, args.threads
            )
            for side in ("vrl", "trl"):
                pair[side]["other_before"] = round(other, 2)
                runs[side].append(pair[side])
            msg = f"{first} first, {time.perf_counter() - t0:.1f} s"
        else:
            for side in (first, Baton.other(first)):
                if side == "vrl":
                    res = timed_fit(lambda: run_vrl(ctx["model_dir"], ctx["work"], b, g, length, total), tag, args)
                else:
                    res = timed_fit(
                        lambda: run_trl(
                            ctx["model_dir"], ctx["trl_rows"], ctx["reward"], ctx["work"], b, g, length, total
                        ),
                        tag,
                        args,
                    )
                runs[side].append(res)
            msg = f"{first} first"
        med = {s: np.nanmedian(runs[s][-1]["period"][args.warmup :]) * 1e3 for s in runs}
        oth = np.nanmedian(runs["vrl"][-1]["other"] + runs["trl"][-1]["other"])
        log(
            f"[{tag}] round {r + 1}/{rounds} ({msg}): vrl {med['vrl']:.1f} ms/step, TRL {med['trl']:.1f} ms/step, "
            f"ratio {med['vrl'] / med['trl']:.2f}; other processes used {oth:.2f} cores (median per step)"
        )

    # Steps kept: after warm-up, and (when enough of them are) undisturbed by other processes.
    kept = {"vrl": [], "trl": []}
    pairs: list[tuple[float, float]] = []
    for rv, rt in zip(runs["vrl"], runs["trl"]):
        for k in range(args.warmup, min(len(rv["period"]), len(rt["period"]))):
            pv, pt = rv["period"][k], rt["period"][k]
            if np.isfinite(pv) and np.isfinite(pt):
                pairs.append((pv, pt, max(rv["other"][k], rt["other"][k])))
    quiet_pairs = [p for p in pairs if p[2] <= args.max_other_cores]
    contended = len(quiet_pairs) < max(5, len(pairs) // 3)
    use = pairs if contended else quiet_pairs
    kept["vrl"], kept["trl"] = [p[0] for p in use], [p[1] for p in use]
    for side in ("vrl", "trl"):
        inner = [x for res in runs[side] for x in res["inner"][args.warmup :] if np.isfinite(x)]
        entry[side] = {
            "period": summarise(kept[side]),
            "in_step": summarise(inner),
            "per_round_median_ms": [
                round(float(np.nanmedian(res["period"][args.warmup :])) * 1e3, 2) for res in runs[side]
            ],
            "response_len_mean": round(float(np.nanmean([x for res in runs[side] for x in res["resp_len"]])), 2),
            "torch_threads_seen": sorted({t for res in runs[side] for t in res["threads"]}),
        }
        if side == "vrl":
            mod = [x for res in runs[side] for x in res["in_module"][args.warmup :] if np.isfinite(x)]
            entry[side]["training_step_perf_metric"] = summarise(mod)
        else:
            entry[side]["processor_class"] = runs[side][0]["processor"]
    ratios = np.asarray(kept["vrl"]) / np.asarray(kept["trl"]) if mode == "interleaved" else None
    entry["ratio_vrl_over_trl"] = ratio_stats(kept["vrl"], kept["trl"])
    if ratios is not None:
        q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
        entry["ratio_vrl_over_trl"] |= {
            "paired_median": round(float(q50), 3),
            "paired_q25": round(float(q25), 3),
            "paired_q75": round(float(q75), 3),
        }
    entry["ratio_per_round"] = [
        round(a / t, 3) for a, t in zip(entry["vrl"]["per_round_median_ms"], entry["trl"]["per_round_median_ms"])
    ]
    entry["steps_used"] = len(use)
    entry["steps_disturbed"] = len(pairs) - len(quiet_pairs)
    entry["contended"] = contended
    entry["truncated_fits"] = sum(bool(res.get("truncated")) for side in runs for res in runs[side])
    entry["other_cpu_cores_median"] = round(float(np.median([p[2] for p in pairs])), 3) if pairs else None
    entry["meets_goal_0.6"] = bool(entry["ratio_vrl_over_trl"]["ratio"] <= 0.6)
    rs = entry["ratio_vrl_over_trl"]
    spread = (
        f"paired IQR {rs['paired_q25']:.2f}-{rs['paired_q75']:.2f}"
        if "paired_q25" in rs
        else f"bootstrap IQR {rs['boot_q25']:.2f}-{rs['boot_q75']:.2f}"
    )
    log(
        f"[{tag}] => vrl {entry['vrl']['period']['median_ms']:.1f} ms/step, "
        f"TRL {entry['trl']['period']['median_ms']:.1f} "
        f"ms/step, ratio {rs['ratio']:.2f} ({spread}; {len(use)} steps, {entry['steps_disturbed']} disturbed"
        f"{', CONTENDED: all steps used' if contended else ' and dropped'}); mean completion length vrl "
        f"{entry['vrl']['response_len_mean']:.1f}, TRL {entry['trl']['response_len_mean']:.1f}"
    )
    return entry


def profile(args, ctx: dict, b: int, g: int, length: int, entry: dict) -> None:
    """Stage timings of a vrl and a TRL fit, and a cProfile of a vrl fit."""
    tag, n = f"B={b} G={g} L={length}", args.warmup + args.profile_steps
    st_vrl, st_trl = StageTimer(), StageTimer()
    timed_fit(lambda: run_vrl(ctx["model_dir"], ctx["work"], b, g, length, n, stage_timer=st_vrl), tag, args)
    timed_fit(
        lambda: run_trl(
            ctx["model_dir"], ctx["trl_rows"], ctx["reward"], ctx["work"], b, g, length, n, stage_timer=st_trl
        ),
        tag,
        args,
    )
    entry["vrl_stages_ms"], entry["trl_stages_ms"] = st_vrl.table(args.warmup), st_trl.table(args.warmup)
    for side, table in (("vrl", entry["vrl_stages_ms"]), ("TRL", entry["trl_stages_ms"])):
        log(
            f"[{tag}] {side} stages (median ms/step): "
            + ", ".join(f"{k}={v}" for k, v in table.items() if not k.endswith("[calls]"))
        )
    # cProfile of vrl's training_step only, after warm-up (Lightning's own between-step work is < 1 ms here).
    import vrl.lit.rl_module as rlm

    prof, seen, original = cProfile.Profile(), [0], rlm.RLModule.training_step

    def profiled_step(self, batch, batch_idx):
        seen[0] += 1
        if seen[0] <= args.warmup:
            return original(self, batch, batch_idx)
        prof.enable()
        try:
            return original(self, batch, batch_idx)
        finally:
            prof.disable()

    wait_quiet(args.max_other_cores / 2, args.max_wait)
    rlm.RLModule.training_step = profiled_step
    try:
        run_vrl(ctx["model_dir"], ctx["work"], b, g, length, n)
    finally:
        rlm.RLModule.training_step = original
    cp = entry["vrl_cprofile"] = cprofile_summary(pstats.Stats(prof), max(seen[0] - args.warmup, 1))
    log(
        f"[{tag}] cProfile of vrl's training_step (ms/step, profiler-inflated): self {cp['self_ms_per_step']}, torch "
        f"builtins {cp['torch_builtins_ms_per_step']}, Python frames {cp['python_frames_ms_per_step']}; "
        + ", ".join(f"{k.strip()}={v}" for k, v in cp["focus_cum_ms_per_step"].items())
    )


def prototypes(args, ctx: dict, b: int, g: int, length: int, entry: dict) -> None:
    """vrl fits with prototype speed-ups, alternating with baseline fits (ABAB...)."""
    tag, total = f"B={b} G={g} L={length}", args.warmup + args.steps + 1
    specs = ["baseline", *[p for p in args.prototypes.split(",") if p]]
    steps: dict[str, list[float]] = {s: [] for s in specs}
    lens: dict[str, list[float]] = {s: [] for s in specs}
    errors: dict[str, str] = {}
    for spec in [x for s in specs[1:] for x in ("baseline", s)] if len(specs) > 1 else specs:

        def fit(spec=spec):
            with prototype(spec) as extra:
                return run_vrl(ctx["model_dir"], ctx["work"], b, g, length, total, extra=extra)

        try:
            res = timed_fit(fit, f"{tag} prototype {spec}", args)
        except Exception as exc:  # a prototype may break training; record it and go on
            log(f"[{tag}] prototype {spec} failed: {type(exc).__name__}: {exc}")
            errors[spec] = f"{type(exc).__name__}: {exc}"
            continue
        kept, _ = clean_steps(res, args.warmup, args.max_other_cores)
        this = kept or [x for x in res["period"][args.warmup :] if np.isfinite(x)]
        steps[spec] += this
        lens[spec] += res["resp_len"]
        log(f"[{tag}] prototype {spec}: {np.median(this) * 1e3:.1f} ms/step")
    trl_median = entry["trl"]["period"]["median_ms"]
    entry["prototypes"] = {}
    for spec in specs:
        if not steps[spec]:
            entry["prototypes"][spec] = {"error": errors.get(spec, "no steps")}
            continue
        s = summarise(steps[spec])
        s["vs_baseline"] = round(s["median_ms"] / summarise(steps["baseline"])["median_ms"], 3)
        s["ratio_vs_trl_median"] = round(s["median_ms"] / trl_median, 3)
        s["response_len_mean"] = round(float(np.nanmean(lens[spec])), 2)
        entry["prototypes"][spec] = s
    log(
        f"[{tag}] prototypes (median ms/step, vs baseline, vs TRL): "
        + "; ".join(
            f"{k} {v['median_ms']:.1f} ({v['vs_baseline']:.2f}, {v['ratio_vs_trl_median']:.2f})"
            for k, v in entry["prototypes"].items()
            if "error" not in v
        )
    )


def run_cross_check_child(args, model_dir: str) -> list[dict]:
    """The interleaved 1-thread cross-check, in a fresh process: a process that has already run torch with two
    threads (and so holds a 2-thread OpenMP pool) slowed TRL's thread by up to 1.4x there."""
    path = _CACHE / "cross_check.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--cross-check-child",
        str(path),
        "--model-dir",
        model_dir,
        "--settings",
        args.settings,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--cross-check-rounds",
        str(args.cross_check_rounds),
        "--max-other-cores",
        str(args.max_other_cores),
        "--max-wait",
        str(args.max_wait),
        "--fit-budget",
        str(args.fit_budget),
    ]
    log("cross-check: a fresh process with 1 torch thread, vrl and TRL taking turns step by step")
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(path.read_text())


def cross_check_child(args) -> None:
    torch.set_num_threads(1)
    import lightning  # noqa: F401
    import trl  # noqa: F401
    from hydra.utils import instantiate

    quiet()
    work = _CACHE / "work"
    work.mkdir()
    ctx = {"model_dir": args.model_dir, "work": work, "reward": make_trl_reward()}
    out = []
    for b, g, length in parse_settings(args.settings):
        rows = instantiate(compose(vrl_overrides(args.model_dir, "unused", b, g, length, args.steps + 10)).data.train)
        ctx["trl_rows"] = trl_dataset(rows)
        out.append(headline(args, ctx, b, g, length, "interleaved", 1, args.cross_check_rounds))
    Path(args.cross_check_child).write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated BxGxL")
    ap.add_argument("--steps", type=int, default=30, help="measured steps per fit")
    ap.add_argument("--warmup", type=int, default=3, help="steps dropped at the start of every fit")
    ap.add_argument("--rounds", type=int, default=2, help="fits per side per setting (who starts alternates)")
    ap.add_argument(
        "--cross-check-rounds",
        type=int,
        default=0,
        help="rounds of the cross-check: vrl and TRL taking turns step by step (two Python threads, one "
        "runs at a time) with ONE torch thread each, which other processes' load affects alike; "
        "0 skips it",
    )
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2), help="torch.set_num_threads (both)")
    ap.add_argument("--profile-steps", type=int, default=10, help="measured steps of each profiled fit")
    ap.add_argument("--no-profile", action="store_true", help="skip the stage timing and cProfile")
    ap.add_argument("--prototypes", default=DEFAULT_PROTOTYPES, help="comma-separated; '' for none")
    ap.add_argument("--prototype-settings", default="4x4x16,16x8x1", help="settings on which prototypes run")
    ap.add_argument("--max-other-cores", type=float, default=0.3, help="drop steps where others used more")
    ap.add_argument("--max-wait", type=float, default=120.0, help="seconds to wait for a quiet machine per fit")
    ap.add_argument("--retries", type=int, default=1, help="repeats of a fit whose steps were mostly disturbed")
    ap.add_argument("--fit-budget", type=float, default=90.0, help="seconds after which a fit stops (contention)")
    ap.add_argument("--quick", action="store_true", help="~1-2 min: 2 settings, 8 steps, 1 round, 1 prototype")
    ap.add_argument("--out", default=str(REPO / "experiments" / "results"), help="folder for the JSON and markdown")
    ap.add_argument("--cross-check-child", default=None, help=argparse.SUPPRESS)  # internal: JSON path to write
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)  # internal: the parent's saved model
    args = ap.parse_args()
    FIT_BUDGET_S[0] = args.fit_budget
    if args.cross_check_child:
        return cross_check_child(args)
    if args.quick:
        if args.settings == DEFAULT_SETTINGS:
            args.settings = "4x4x16,16x8x1"
        args.steps, args.warmup, args.rounds, args.profile_steps, args.max_wait = 8, 2, 1, 5, 20.0
        args.fit_budget = min(args.fit_budget, 30.0)
        if args.prototypes == DEFAULT_PROTOTYPES:
            args.prototypes = "no_logging+dedupe_images+dedupe_rope+fused_adamw"
        args.prototype_settings = args.settings.split(",")[0]
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    log(f"torch threads {torch.get_num_threads()}; importing lightning and trl ...")
    import lightning  # noqa: F401
    import trl  # noqa: F401
    from hydra.utils import instantiate

    quiet()
    info = machine_info(args.threads)
    log(
        f"{info['cpu']}, {info['logical_cpus']} CPUs; torch {info['torch']}, transformers {info['transformers']}, "
        f"trl {info['trl']}, lightning {info['lightning']}; commit {info['git_commit']}"
    )
    work = _CACHE / "work"
    work.mkdir()
    model_dir, n_params, vocab = build_model_dir(work)
    log(f"tiny Qwen2.5-VL ({n_params:,} parameters, vocabulary {vocab}) saved to {model_dir}")
    results = {
        "machine": info,
        "model": {"family": "qwen2_5_vl", "params": n_params, "vocab": vocab, "dtype": "float32"},
        "method": {
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "lr": LR,
            "max_other_cores": args.max_other_cores,
            "metric": "median period between consecutive step ends (ms); first `warmup` steps of each fit "
            "dropped, and steps during which other processes used more than `max_other_cores` "
            "(unless too few would be left: `contended`); rounds pooled. Headline: whole fits back "
            "to back (sequential), order alternating per round, ratio of medians with a bootstrap "
            "IQR. Cross-check: interleaved step by step with 1 torch thread, IQR of per-step "
            "paired ratios",
        },
        "settings": [],
    }
    ctx = {"model_dir": model_dir, "work": work, "reward": make_trl_reward()}
    proto_settings = set(parse_settings(args.prototype_settings))
    for b, g, length in parse_settings(args.settings):
        vrl_rows = instantiate(compose(vrl_overrides(model_dir, "unused", b, g, length, args.steps + 10)).data.train)
        ctx["trl_rows"] = trl_dataset(vrl_rows)
        entry = {
            "B": b,
            "G": g,
            "L": length,
            "sequences_per_step": b * g,
            **check_same_prompt(model_dir, vrl_rows, ctx["trl_rows"]),
        }
        entry |= headline(args, ctx, b, g, length, "sequential", args.threads, args.rounds)
        if not args.no_profile:
            profile(args, ctx, b, g, length, entry)
        if (b, g, length) in proto_settings and args.prototypes:
            prototypes(args, ctx, b, g, length, entry)
        results["settings"].append(entry)
    if args.cross_check_rounds:
        for entry, check in zip(results["settings"], run_cross_check_child(args, model_dir)):
            entry["cross_check"] = check
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_vs_trl_quick" if args.quick else "bench_vs_trl"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(results))
    log(f"done in {results['wall_s']:.0f} s; wrote {out / stem}.json and .md")
    print(markdown(results))


def markdown(res: dict) -> str:
    m = res["machine"]
    dirty = f" (uncommitted changes in {len(m['git_dirty_files'])} files)" if m["git_dirty_files"] else ""
    lines = [
        "# vrl vs TRL GRPOTrainer: time per GRPO step (tiny Qwen2.5-VL, CPU)",
        "",
        f"- command: `{m['command']}` ({m['date']}, {res['wall_s']:.0f} s)",
        f"- commit: `{m['git_commit']}`{dirty}",
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']} (both sides); "
        f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, "
        f"lightning {m['lightning']}",
        f"- model: {res['model']['params']:,} parameters, vocabulary {res['model']['vocab']}, fp32; "
        f"lr {res['method']['lr']}",
        f"- method: {res['method']['metric']}; {res['method']['rounds']} round(s) x {res['method']['steps']} steps per "
        "side (sequential); steps per side after warm-up and filtering in the table",
        "",
        "| B | G | L | run | vrl ms/step (IQR) | TRL ms/step (IQR) | vrl/TRL | ratio spread | per-round ratios | "
        "steps (disturbed) | completion len vrl / TRL | goal <= 0.6 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in res["settings"]:
        for x in [e, e.get("cross_check")]:
            if not x:
                continue
            v, t, r = x["vrl"]["period"], x["trl"]["period"], x["ratio_vrl_over_trl"]
            spread = (
                f"paired IQR {r['paired_q25']:.2f}-{r['paired_q75']:.2f}"
                if "paired_q25" in r
                else f"bootstrap IQR {r['boot_q25']:.2f}-{r['boot_q75']:.2f}"
            )
            run = f"{x['mode']}, {x['torch_threads']} thr"
            ratio = f"**{r['ratio']:.2f}**" if x is e else f"{r['ratio']:.2f}"
            lines.append(
                f"| {e['B']} | {e['G']} | {e['L']} | {run} | "
                f"{v['median_ms']:.1f} ({v['q25_ms']:.1f}-{v['q75_ms']:.1f}) | "
                f"{t['median_ms']:.1f} ({t['q25_ms']:.1f}-{t['q75_ms']:.1f}) | {ratio} | {spread} | "
                f"{', '.join(f'{y:.2f}' for y in x['ratio_per_round'])} | {x['steps_used']} ({x['steps_disturbed']}"
                f"{', contended' if x['contended'] else ''}"
                f"{', fits cut short' if x.get('truncated_fits') else ''}) | "
                f"{x['vrl']['response_len_mean']:.1f} / {x['trl']['response_len_mean']:.1f} | "
                f"{'yes' if x['meets_goal_0.6'] else 'no'} |"
            )
    for e in res["settings"]:
        head = f"B={e['B']} G={e['G']} L={e['L']}"
        if "vrl_stages_ms" in e:
            lines += [
                "",
                f"## Stages, {head} (median ms per step of a profiled fit; stages nest)",
                "",
                "| vrl stage | ms | TRL stage | ms |",
                "|---|---|---|---|",
            ]
            a = [(k, v) for k, v in e["vrl_stages_ms"].items() if not k.endswith("[calls]")]
            b = [(k, v) for k, v in e["trl_stages_ms"].items() if not k.endswith("[calls]")]
            for i in range(max(len(a), len(b))):
                ka, va = a[i] if i < len(a) else ("", "")
                kb, vb = b[i] if i < len(b) else ("", "")
                lines.append(f"| {ka} | {va} | {kb} | {vb} |")
            cp = e["vrl_cprofile"]
            lines += [
                "",
                f"cProfile of vrl's `training_step` ({cp['profiled_steps']} steps after warm-up; the profiler "
                f"inflates Python time): {cp['self_ms_per_step']} ms/step self time, of which torch builtins "
                f"{cp['torch_builtins_ms_per_step']}, Python frames {cp['python_frames_ms_per_step']}, other "
                f"builtins {cp['other_builtins_ms_per_step']}.",
                "",
                "| function (cumulative) | ms/step |",
                "|---|---|",
            ]
            for k, v in cp["focus_cum_ms_per_step"].items():
                lines.append(f"| {k} | {v} |")
            lines += ["", "| top self time | calls/step | self ms/step | cum ms/step |", "|---|---|---|---|"]
            for x in cp["top_self_time"][:8]:
                lines.append(
                    f"| `{x['function']}` | {x['calls_per_step']} | {x['self_ms_per_step']} | {x['cum_ms_per_step']} |"
                )
        if "prototypes" in e:
            lines += [
                "",
                f"## Prototypes, {head} (monkeypatched in this script; vrl's code unchanged)",
                "",
                "| prototype | vrl ms/step (IQR) | vs baseline | vs TRL median |",
                "|---|---|---|---|",
            ]
            for name, s in e["prototypes"].items():
                if "error" in s:
                    lines.append(f"| {name} | failed: {s['error'][:80]} | | |")
                    continue
                lines.append(
                    f"| {name} | {s['median_ms']:.1f} ({s['q25_ms']:.1f}-{s['q75_ms']:.1f}) | "
                    f"{s['vs_baseline']:.2f} | {s['ratio_vs_trl_median']:.2f} |"
                )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
