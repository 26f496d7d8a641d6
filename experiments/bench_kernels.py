"""Benchmark vrl_kernels (K1, K1-dual, K2, K3) against eager PyTorch, torch.compile and Liger-Kernel.

GPU run (H100; writes results.md + results.json and prints them):
    python experiments/bench_kernels.py --out outputs/bench_kernels/$(date +%F)
CPU smoke run through the Triton interpreter (tiny shapes, checks every provider still runs):
    python experiments/bench_kernels.py --device cpu --tiny
Print the plan and check the imports only:
    python experiments/bench_kernels.py --dry-run

Method (PERF.md section 6): median of triton.testing.do_bench (L2 flushed, grads set to None between
reps), the device's copy bandwidth measured in the same run, achieved bytes/s against the op's
minimum traffic, and the peak extra memory (max_memory_allocated minus what was allocated before).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOALS = {
    "k1_single": "K1 single >= 90% of copy bandwidth (PERF 4.2: 85-90%), faster than torch.compile",
    "k1_dual": "K1-dual >= 95% of copy bandwidth (floor ~3.3 ms at N=16k, 3.0 TB/s), faster than torch.compile",
    "k2": "K2 < 30 us at N=16k (GPU time; eager wall time incl. launches reported too), faster than torch.compile",
    "k3": "K3 fwd+bwd >= 80% of copy bandwidth (3 N V s bytes), faster than torch.compile",
}
GOAL_FRACTION = {"k1_single": 0.90, "k1_dual": 0.95, "k3": 0.80}
OPS = ("k1_single", "k1_dual", "k2", "k3")
PROVIDERS = ("ours", "eager", "compile", "liger")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output dir (default outputs/bench_kernels/<time>)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (N in {8, 16}, V=257): a smoke test")
    p.add_argument("--dry-run", action="store_true", help="print the plan, import everything, run nothing")
    p.add_argument("--ns", default="2048,4096,8192,16384,32768", help="token counts N")
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence for K2/K3 layouts")
    p.add_argument("--rho", type=float, default=0.4)
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (default in --tiny)")
    p.add_argument("--compile", action="store_true", help="keep torch.compile in --tiny runs")
    args = p.parse_args(argv)
    if args.tiny:
        args.vocab, args.seq_len = 257, 8
        args.ns = "8,16" if args.ns == p.get_default("ns") else args.ns
        args.no_compile = not args.compile
    args.ns = [int(n) for n in args.ns.split(",")]
    args.ops = [o for o in args.ops.split(",") if o]
    args.providers = [q for q in args.providers.split(",") if q and not (q == "compile" and args.no_compile)]
    return args


def env_info(device: str) -> dict:
    import torch

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    names = {"cuda": torch.cuda.get_device_name, "cpu": lambda: platform.processor() or "cpu"}
    name = names.get(device, lambda: "no CUDA device")()
    return {
        "command": " ".join([sys.executable, *sys.argv]),
        "git_commit": git("rev-parse", "HEAD") or "no commit",
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "device": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def time_ms(fn, device: str, grad_to_none=None) -> tuple[float, float, float]:
    """(median, p20, p80) in ms: do_bench on CUDA, a host timer on CPU (smoke runs only)."""
    if device == "cuda":
        from triton.testing import do_bench

        return tuple(do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8]))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), max(times)


def wall_us(fn, device: str, reps: int = 200) -> float:
    """Host wall time per call including Python and launch overhead (what the training loop pays)."""
    import torch

    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6


def peak_extra_mb(fn, device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth(device: str, tiny: bool) -> float | None:
    """Device-to-device copy bandwidth in bytes/s (a copy moves 2x its size: read + write)."""
    import torch

    if device != "cuda":
        return None
    n = 2**20 if tiny else 2**30  # 2 GiB of bf16
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)[0]
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def build_inputs(op: str, n: int, args, device: str) -> dict:
    """Inputs for one op at N tokens (only what that op needs, to keep 32k-token cases in memory).

    K1 logits are the first N rows of a [1, N + 1, V] tensor, the layout Liger's log-prob kernel wants
    (it drops the last position); K3 gets its own [N/seq, seq, V] leaf and Liger a [N/seq, seq + 1, V] copy.
    """
    import torch

    v, seq = args.vocab, min(args.seq_len, n)
    n_seq = n // seq

    def logits(*shape):  # generated in bf16: an fp32 temporary would be 20 GB at N=32k
        return torch.randn(*shape, device=device, dtype=torch.bfloat16).mul_(2)

    d = {"seq": seq, "n_seq": n_seq, "ids": torch.randint(0, v, (n_seq, seq), device=device)}
    d["resp"] = torch.rand(n_seq, seq, device=device) > 0.05
    if op in ("k1_single", "k1_dual"):
        d["base"] = logits(1, n + 1, v)
        d["x"] = d["base"][0, :n]
        d["ids"] = d["ids"].reshape(-1)
        if op == "k1_dual":
            d["xp"] = torch.randn(n, v, device=device, dtype=torch.bfloat16).mul_(0.3).add_(d["x"])
    elif op == "k2":
        d["scores"] = torch.rand(n_seq, seq, device=device) * 10
    elif op == "k3":
        d["leaf"] = logits(n_seq, seq, v).requires_grad_(True)
        d["old"] = torch.randn(n_seq, seq, device=device) * 0.3 - 12
        d["adv"] = torch.randn(n_seq, device=device)
        if "liger" in args.providers:
            d["liger_logits"] = logits(n_seq, seq + 1, v).requires_grad_(True)
    return d


def providers_for(op: str, d: dict, args) -> dict:
    """{provider: (callable or None, tensors whose .grad to reset, note)}; only requested ones are built."""
    import vrl_kernels as vk

    want = set(args.providers)
    out: dict = {}

    def add(name, build, grads=None, note=""):
        if name in want:
            out[name] = (build(), grads, note)

    if op == "k1_single":
        ref = vk.vocab_stats_reference
        add("ours", lambda: lambda: vk.vocab_stats(d["x"], d["ids"], impl="triton"))
        add("eager", lambda: lambda: ref(d["x"], d["ids"]))
        add("compile", lambda: _bind(_compiled(ref, d["x"], d["ids"]), d["x"], d["ids"]))
        add("liger", lambda: _liger_logp(d), note="log-prob only (no entropy/lse)")
    elif op == "k1_dual":
        ref = vk.dual_vocab_stats_reference
        add("ours", lambda: lambda: vk.dual_vocab_stats(d["x"], d["xp"], d["ids"], impl="triton"))
        add("eager", lambda: lambda: ref(d["x"], d["xp"], d["ids"]))
        add("compile", lambda: _bind(_compiled(ref, d["x"], d["xp"], d["ids"]), d["x"], d["xp"], d["ids"]))
        add("liger", lambda: None, note="no two-logits KL from raw logits in Liger")
    elif op == "k2":
        ref = vk.segmented_topk_mask_and_shape_reference
        kw = {"rho": args.rho}
        add("ours", lambda: lambda: vk.segmented_topk_mask_and_shape(d["scores"], d["resp"], impl="triton", **kw))
        add("eager", lambda: lambda: ref(d["scores"], d["resp"], **kw))
        k2_ref = lambda s, m: ref(s, m, **kw)  # noqa: E731
        add("compile", lambda: _bind(_compiled(k2_ref, d["scores"], d["resp"]), d["scores"], d["resp"]))
        add("liger", lambda: None, note="no equivalent")
    elif op == "k3":
        resp = d["resp"]
        args3 = (d["ids"], d["old"], d["adv"], resp, resp.float(), resp.sum().float())
        kw = {"eps_high": 0.28, "dual_clip": 3.0, "nll_coef": 0.06}

        def step(fn):
            return None if fn is None else (lambda: fn(d["leaf"], *args3, **kw)[0].backward())

        ours = lambda *a, **k: vk.masked_grpo_loss(*a, impl="triton", **k)  # noqa: E731
        add("ours", lambda: step(ours), [d["leaf"]])
        add("eager", lambda: step(vk.masked_grpo_loss_reference), [d["leaf"]])
        compiled = lambda: _compiled(vk.masked_grpo_loss_reference, d["leaf"], *args3, backward=True, **kw)  # noqa: E731
        add("compile", lambda: step(compiled()), [d["leaf"]])
        add("liger", lambda: _liger_grpo(d), [d.get("liger_logits")], "GrpoLossFunction; its mask also normalises")
    return out


def _bind(fn, *args):
    """A zero-argument callable running fn(*args): what the timers take."""
    return lambda: fn(*args)


def _compiled(fn, *example, backward: bool = False, **kw):
    """torch.compile(fn), warmed up on the example (forward and, if asked, backward) so that compile time
    stays out of do_bench's runtime estimate; compile time is printed. A failed compile becomes a callable
    that raises, so the row records the error."""
    import torch

    torch._dynamo.config.cache_size_limit = 64
    compiled = torch.compile(fn, dynamic=False)
    t0 = time.perf_counter()
    try:
        out = compiled(*example, **kw)
        if backward:
            out[0].backward()
            example[0].grad = None
    except Exception as err:  # noqa: BLE001 - report it in the table, the other providers still run
        message = f"torch.compile failed: {type(err).__name__}: {err}"[:200]

        def failed(*_args, **_kwargs):
            raise RuntimeError(message)

        return failed
    print(f"  torch.compile({getattr(fn, '__name__', 'fn')}) warm-up {time.perf_counter() - t0:.1f} s")
    return compiled


def _liger_logp(d: dict):
    try:
        from liger_kernel.ops.grpo_loss import fused_selective_log_softmax
    except ImportError:
        return None
    ids = d["ids"].view(1, -1)
    return lambda: fused_selective_log_softmax(d["base"], ids, 1.0)


def _liger_grpo(d: dict):
    try:
        from liger_kernel.ops.grpo_loss import GrpoLossFunction
    except ImportError:
        return None
    logits, mask = d["liger_logits"], d["resp"].float()

    def run():
        out = GrpoLossFunction.apply(
            logits, d["old"], None, d["ids"], d["adv"], mask, 1.0, 0.0, 0.2, 0.28, False, "dapo"
        )
        out[0].backward()

    return run


def traffic_bytes(op: str, n: int, v: int) -> int | None:
    """Minimum HBM traffic of the op for bf16 logits (PERF 4.2); None for the O(N) K2."""
    return {"k1_single": n * v * 2, "k1_dual": 2 * n * v * 2, "k3": 3 * n * v * 2}.get(op)


def run_case(op: str, n: int, args, bandwidth: float | None) -> list[dict]:
    import torch

    d = build_inputs(op, n, args, args.device)
    rows = []
    for name, (fn, grads, note) in providers_for(op, d, args).items():
        row = {"op": op, "N": n, "V": args.vocab, "provider": name, "note": note, "status": "ok"}
        if fn is None:
            row["status"] = "n/a"
            rows.append(row)
            continue
        try:
            row["ms"], row["ms_p20"], row["ms_p80"] = time_ms(fn, args.device, grads)
            for t in grads or []:
                t.grad = None
            row["peak_extra_mib"] = peak_extra_mb(fn, args.device)
            if op == "k2":
                row["wall_us"] = wall_us(fn, args.device, reps=20 if args.device == "cpu" else 200)
        except torch.OutOfMemoryError:
            row["status"] = "OOM"
        except Exception as err:  # noqa: BLE001 - one failing provider must not end the run
            row["status"] = f"error: {type(err).__name__}: {err}"[:200]
        nbytes = traffic_bytes(op, n, args.vocab)
        if row["status"] == "ok" and nbytes:
            row["tb_per_s"] = nbytes / (row["ms"] * 1e-3) / 1e12
            row["frac_copy_bw"] = None if bandwidth is None else nbytes / (row["ms"] * 1e-3) / bandwidth
        rows.append(row)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if args.tiny:
        _check_tiny(op, d)
    return rows


def _check_tiny(op: str, d: dict) -> None:
    """Smoke runs also compare our kernel with the reference, so a broken kernel cannot pass silently."""
    import torch

    import vrl_kernels as vk

    if op == "k1_single":
        pairs = zip(vk.vocab_stats(d["x"], d["ids"], impl="triton"), vk.vocab_stats_reference(d["x"], d["ids"]))
    elif op == "k1_dual":
        got = vk.dual_vocab_stats(d["x"], d["xp"], d["ids"], impl="triton")
        pairs = zip(got, vk.dual_vocab_stats_reference(d["x"], d["xp"], d["ids"]))
    elif op == "k2":
        got = vk.segmented_topk_mask_and_shape(d["scores"], d["resp"], rho=0.4, impl="triton")
        want = vk.segmented_topk_mask_and_shape_reference(d["scores"], d["resp"], rho=0.4)
        pairs = [(got.token_mask.float(), want.token_mask.float()), (got.alpha, want.alpha)]
    else:
        resp = d["resp"]
        args = (d["ids"], d["old"], d["adv"], resp, resp.float(), resp.sum().float())
        pairs = [(vk.masked_grpo_loss(d["leaf"], *args, impl=impl)[0].detach() for impl in ("triton", "torch"))]
    # relative to max(1, |reference|): K3's loss reaches ~6e3 at these shapes (ratios e^6.5), where fp32 rounding
    # alone is 5e-4 in absolute terms (the Triton value is the closer one to fp64 there)
    err = max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1)).item() for a, b in pairs)
    assert err < 1e-4 and not torch.isnan(torch.tensor(err)), f"{op}: Triton disagrees with the reference ({err})"
    print(f"  check {op}: max |triton - reference| / max(1, |reference|) = {err:.2e}")


def to_markdown(rows: list[dict], info: dict, bandwidth: float | None) -> str:
    bw = "n/a (CPU)" if bandwidth is None else f"{bandwidth / 1e12:.3f} TB/s"
    lines = [
        f"# vrl_kernels benchmark ({info['date']})",
        "",
        f"device: {info['device']} | torch {info['torch']} | triton {info['triton']} | commit {info['git_commit']}"
        f"{' (dirty)' if info['git_dirty'] else ''} | copy bandwidth {bw}",
        f"command: `{info['command']}`",
        "",
        "| op | N | provider | ms (p20-p80) | TB/s | % copy BW | peak extra MiB | wall us | status / note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = f"{r['ms']:.3f} ({r['ms_p20']:.3f}-{r['ms_p80']:.3f})" if "ms" in r else "-"
        tb = f"{r['tb_per_s']:.2f}" if r.get("tb_per_s") else "-"
        frac = f"{100 * r['frac_copy_bw']:.0f}%" if r.get("frac_copy_bw") else "-"
        mem = f"{r['peak_extra_mib']:.0f}" if r.get("peak_extra_mib") is not None else "-"
        wall = f"{r['wall_us']:.1f}" if "wall_us" in r else "-"
        note = r["status"] + (f"; {r['note']}" if r["note"] else "")
        lines.append(f"| {r['op']} | {r['N']} | {r['provider']} | {ms} | {tb} | {frac} | {mem} | {wall} | {note} |")
    ops = [op for op in OPS if any(r["op"] == op for r in rows)]
    lines += ["", "Goals:"] + [f"- {GOALS[op]}" for op in ops] + ["", *goal_verdicts(rows)]
    return "\n".join(lines) + "\n"


def goal_verdicts(rows: list[dict], n_goal: int = 16384) -> list[str]:
    """One line per op at N=16k: met / missed, next to the numbers that decide it."""
    by = {(r["op"], r["N"], r["provider"]): r for r in rows if r["status"] == "ok"}
    out = []
    for op in OPS:
        ours, comp = by.get((op, n_goal, "ours")), by.get((op, n_goal, "compile"))
        if ours is None:
            continue
        beats = "n/a" if comp is None else ("yes" if ours["ms"] < comp["ms"] else "NO")
        if op == "k2":
            met = ours["ms"] * 1e3 < 30
            out.append(
                f"- k2 @N={n_goal}: {ours['ms'] * 1e3:.1f} us -> {'met' if met else 'MISSED'}; beats compile: {beats}"
            )
        elif ours.get("frac_copy_bw") is not None:
            met = ours["frac_copy_bw"] >= GOAL_FRACTION[op]
            out.append(
                f"- {op} @N={n_goal}: {100 * ours['frac_copy_bw']:.0f}% of copy BW (goal "
                f"{100 * GOAL_FRACTION[op]:.0f}%) -> {'met' if met else 'MISSED'}; beats compile: {beats}"
            )
    return out


def write_results(out: Path, rows: list[dict], info: dict, bandwidth: float | None) -> str:
    md = to_markdown(rows, info, bandwidth)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"env": info, "copy_bw": bandwidth, "rows": rows}, indent=2))
    return md


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before vrl_kernels / liger define their kernels
    import torch

    import vrl_kernels  # noqa: F401 - fail early if the package is missing

    has_device = args.device == "cpu" or torch.cuda.is_available()
    info = env_info(args.device if has_device else "none")
    print(json.dumps(info, indent=2))
    print(f"ops {args.ops}, N {args.ns}, V {args.vocab}, providers {args.providers}")
    for op in args.ops:
        print(f"goal: {GOALS[op]}")
    if args.dry_run:
        return 0
    if not has_device:
        print("no CUDA device: use --device cpu --tiny for a smoke run, or --dry-run")
        return 2
    torch.manual_seed(0)
    bandwidth = copy_bandwidth(args.device, args.tiny)
    out = args.out or Path("outputs/bench_kernels") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for op in args.ops:
        for n in args.ns:
            print(f"{op} N={n}")
            rows += run_case(op, n, args, bandwidth)
            md = write_results(out, rows, info, bandwidth)  # after every case: a run cut short keeps its rows
    print(md)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
