"""FSDP2 for the loop (``trainer=fsdp``): Lightning's ``ModelParallelStrategy`` sharding the policy, the frozen
reference with torch's ``fully_shard``, one unit per decoder layer and vision block.

Lightning's strategy leaves the sharding to the module (``configure_model``) and builds a 2-D mesh whose
defaults are tensor parallel within a node; :class:`FSDP2Strategy` fixes the mesh to pure data parallel (every
rank one shard of each parameter) and carries the sharding settings, which :func:`shard_modules` applies. The
loop's lock-step rules for sharded forwards are in ``vrl.lit.dist`` (``lockstep``); this file only shards and
gathers weights back for saving.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from vrl.models.sharding import fully_shard_units, is_sharded

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` with a data-parallel-only mesh (W ranks x 1) and vrl's sharding settings.

    Args:
        unit_names: class names of the FSDP units; None = the model's ``_no_split_modules``.
        param_dtype: ``bf16``/``fp16`` runs forwards and backwards in that dtype with fp32 master weights and fp32
            gradient reduction (FSDP2's ``MixedPrecisionPolicy``); None keeps the weights' dtype (the CPU tests).
        activation_checkpointing: recompute the policy's decoder layers in backward.
        reshard_after_forward: True frees gathered weights after each unit's forward (ZeRO-3).
        save_distributed_checkpoint: False (the default here) writes ``last.ckpt`` as one file of full weights,
            which vrl's resume and transformers read; True writes a folder of per-rank shards.
        **kwargs: ``ModelParallelStrategy``'s other arguments (``process_group_backend``, ``timeout``).
    """

    def __init__(
        self,
        unit_names: list[str] | None = None,
        param_dtype: str | None = None,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        if param_dtype is not None and param_dtype not in _DTYPES:
            raise ValueError(f"trainer.strategy.param_dtype={param_dtype!r}; choose one of {sorted(_DTYPES)} or null")
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.unit_names = list(unit_names) if unit_names is not None else None
        self.param_dtype, self.activation_checkpointing = param_dtype, activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # every rank in one data-parallel group; Lightning's "auto" would put a node's devices in a tensor-parallel
        # group, which needs a model-specific plan
        self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
        super().setup_environment()

    def mp_policy(self):
        """FSDP2's mixed precision for ``param_dtype`` (None: none)."""
        if self.param_dtype is None:
            return None
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=_DTYPES[self.param_dtype], reduce_dtype=torch.float32)


def shard_modules(module: Any) -> list[str]:
    """``RLModule.configure_model``: under :class:`FSDP2Strategy`, shard the policy and the frozen reference on the
    data-parallel mesh (a no-op under any other strategy, and for a model already sharded). Returns the names of
    the models it sharded.

    Judges' models stay whole on every rank (as under DDP): a judge runs as many forwards as its rank has items
    to judge, which differs between ranks, and a sharded forward is a collective."""
    strategy = module.trainer.strategy if module._trainer is not None else None
    if not isinstance(strategy, FSDP2Strategy):
        return []
    if strategy.world_size > 1:
        refuse_unsynced(module)
    mesh = strategy.device_mesh["data_parallel"]
    models = {"policy": module.policy}
    if module.reference is not None:
        models["reference"] = module.reference
    done = []
    for name, model in models.items():
        ckpt = strategy.activation_checkpointing and name == "policy"  # frozen models have no backward
        settings = dict(mp_policy=strategy.mp_policy(), reshard_after_forward=strategy.reshard_after_forward)
        if fully_shard_units(model, mesh, strategy.unit_names, checkpointing=ckpt, **settings):
            done.append(name)
    return done


def refuse_unsynced(module: Any) -> None:
    """Stop at start, with the reason, where the policy would run a rank-dependent number of forwards that the loop
    does not pad yet (README 'FSDP'): the multi-turn sampler (as many generate calls as turns, which differ by
    rank), a judge that uses the policy (as many generate calls as its rank has items to judge) and a hook that
    loops over ``ctx.logits`` per micro-batch (``Hook.rank_dependent_forwards``: VPPO's ``exact_kl`` and
    ``entropy_rho``, entropy_focus)."""
    from vrl.errors import ConfigError
    from vrl.lit.attach import find_models
    from vrl.sampler.multi_turn import MultiTurnSampler

    if isinstance(module.sampler, MultiTurnSampler):
        raise ConfigError("trainer=fsdp on more than one device: the multi-turn sampler is not lock-step yet")
    roots = {"reward": module.reward, "hooks": module.hooks, "advantage": module.advantage}
    bound = [path for path, obj in find_models(roots) if callable(getattr(obj, "bind_policy", None))]
    if bound:
        raise ConfigError(
            f"trainer=fsdp on more than one device: {bound[0]} judges with the policy, whose generate calls are not "
            "lock-step yet; use a judge with a model of its own"
        )
    looping = [name for name, h in zip(module.hooks.names, module.hooks.hooks) if h.rank_dependent_forwards]
    if looping:
        raise ConfigError(
            f"trainer=fsdp on more than one device: hooks.{looping[0]} runs one policy forward per micro-batch of its "
            "rank's rollout, and ranks with different counts would hang (e.g. VPPO's dependency=exact_kl or "
            "entropy_rho); use the default k3_sampled dependency and entropy_rho=null, or trainer=ddp"
        )


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) weights of a sharded ``model``, on the CPU of rank 0 (None on other ranks and for a
    model that is not sharded). A collective: every rank calls it."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if torch.distributed.get_rank() == 0 else None
