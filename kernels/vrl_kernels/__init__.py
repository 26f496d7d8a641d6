"""vrl_kernels: fused Triton kernels for VPPO-style token-masked GRPO, each with a pure-PyTorch reference.

Lives in `kernels/vrl_kernels/` and imports only as `vrl_kernels`: the top-level `kernels/` folder has no
`__init__.py`, so it can never shadow `kernels`, an unrelated PyPI package that transformers probes for.

Ops (each: `<op>_reference` = the spec, `<op>_triton` = the kernel, `<op>(..., impl="auto")` = dispatch):

* K1 `vocab_stats` / `dual_vocab_stats`: sampled-token log-probs, entropy, lse and the exact
  KL(P_img || P_pert) in one pass over the vocabulary (forward only).
* K2 `segmented_topk_mask_and_shape`: per-sequence top-k token mask + VPPO advantage scaling.
* K3 `masked_grpo_loss`: clipped-ratio policy loss with separate loss mask and normalisation,
  forward and backward from logits.

Triton is imported only when a kernel runs, so the references work without it.
"""

from ._dispatch import IMPLS, interpret_requested, triton_available
from .grpo_loss import masked_grpo_loss, masked_grpo_loss_reference, masked_grpo_loss_triton
from .topk_shape import (
    TopkShape,
    keep_count,
    segmented_topk_mask_and_shape,
    segmented_topk_mask_and_shape_reference,
    segmented_topk_mask_and_shape_triton,
    vppo_alpha_reference,
)
from .vocab_stats import (
    DualVocabStats,
    VocabStats,
    dual_vocab_stats,
    dual_vocab_stats_reference,
    dual_vocab_stats_triton,
    vocab_stats,
    vocab_stats_reference,
    vocab_stats_triton,
)

__all__ = [
    "IMPLS",
    "DualVocabStats",
    "TopkShape",
    "VocabStats",
    "dual_vocab_stats",
    "dual_vocab_stats_reference",
    "dual_vocab_stats_triton",
    "interpret_requested",
    "keep_count",
    "masked_grpo_loss",
    "masked_grpo_loss_reference",
    "masked_grpo_loss_triton",
    "segmented_topk_mask_and_shape",
    "segmented_topk_mask_and_shape_reference",
    "segmented_topk_mask_and_shape_triton",
    "triton_available",
    "vocab_stats",
    "vocab_stats_reference",
    "vocab_stats_triton",
    "vppo_alpha_reference",
]
