"""Ahead-of-time compile of every kernel for an H100 (sm_90), on CPU: no GPU or driver is needed.

The interpreter runs kernels as Python, so it accepts code that the real compiler rejects (it missed a
non-constexpr global here once). Compiling to PTX and cubin with the ptxas bundled in the triton wheel
checks the GPU code path's typing and lowering; numerics are covered by the interpreter tests.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
if importlib.util.find_spec("triton.backends.nvidia") is None:
    pytest.skip("this triton build has no NVIDIA backend", allow_module_level=True)

SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import vrl_kernels._grpo_loss_kernels as kg
import vrl_kernels._topk_shape_kernels as kt
import vrl_kernels._vocab_stats_kernels as kv

F, I64, I32 = "*fp32", "i64", "i32"
rows = {"n_cols": I32, "l_inner": I32, "stride_outer": I64, "stride_inner": I64, "scale2": "fp32"}
cases = []
for x in ("*bf16", "*fp32"):
    outs = {k: F for k in ("OUT_LOGP", "OUT_ENT", "OUT_LSE")}
    cases.append((kv.vocab_stats_kernel, {"X": x, "IDS": "*i64", "ROW_MASK": "*u8", **outs, **rows},
                  {"HAS_ROW_MASK": True, "BLOCK_V": 4096}, 8))
    outs = {k: F for k in ("OUT_LOGP_A", "OUT_LOGP_B", "OUT_KL", "OUT_ENT", "OUT_LSE_A", "OUT_LSE_B")}
    strides = {"sa_outer": I64, "sa_inner": I64, "sb_outer": I64, "sb_inner": I64}
    cases.append((kv.dual_vocab_stats_kernel, {"XA": x, "XB": x, "IDS": "*i64", "ROW_MASK": "*u8", **outs,
                  "n_cols": I32, "l_inner": I32, **strides, "scale2": "fp32"},
                  {"HAS_ROW_MASK": False, "BLOCK_V": 4096}, 8))
    per_tok = ("OLD", "ADV", "LOSS_MASK", "WEIGHT", "REF", "OUT_LOSS", "OUT_G", "OUT_C", "OUT_LSE", "OUT_ENT",
               "OUT_KL", "OUT_CLIP", "OUT_DUAL")
    scal = ("eps_low", "eps_high", "dual_clip", "log_ratio_clamp", "kl_clamp", "beta", "ent_coef", "nll_coef")
    for flags in ({"HAS_REF": True, "HAS_DUAL": True}, {"HAS_REF": False, "HAS_DUAL": False}):
        cases.append((kg.grpo_fwd_kernel, {"X": x, "IDS": "*i64", **{k: F for k in per_tok}, **rows,
                      **{k: "fp32" for k in scal}}, {**flags, "BLOCK_V": 4096}, 8))
    cases.append((kg.grpo_bwd_kernel, {"X": x, "IDS": "*i64", "G": F, "C": F, "LSE": F, "ENT": F, "SCALE": F,
                  "DX": x, **rows, "dx_stride_row": I64, "inv_t": "fp32"}, {"BLOCK_V": 4096}, 8))
cases.append((kt.topk_mask_kernel, {"S": "*bf16", "M": "*u8", "OUT_MASK": "*i8", "OUT_MEAN": F, "OUT_COUNT": "*i32",
              "n_cols": I32, "s_stride_n": I64, "s_stride_l": I64, "m_stride_n": I64, "m_stride_l": I64,
              "rho_num": I64, "rho_den": I64}, {"BLOCK_L": 2048}, 8))
for has_range in (True, False):
    cases.append((kt.vppo_alpha_kernel, {"MEAN": F, "COUNT": "*i32", "S_MIN": F, "S_MAX": F, "OUT_ALPHA": F,
                  "n_seq": I32, "beta_min": "fp32"}, {"HAS_RANGE": has_range, "BLOCK_N": 1024}, 4))
for fn, types, consts, warps in cases:
    sig = {name: "constexpr" if name in consts else types[name] for name in fn.arg_names}
    kernel = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps})
    assert kernel.asm["cubin"], fn.__name__
print("compiled", len(cases))
"""


def test_all_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip() == "compiled 13"
