"""Keeping the rollout server's weights in step with the policy (``sampler.weight_sync``), and the callback that
does it after each optimizer step.

``mode=lora`` (implemented, the default): after every RL step that took an optimizer step, the policy's LoRA
adapter is written with PEFT's ``save_pretrained`` to ``<dir>/<adapter_name>-v<step>`` and loaded by the server
under that new name (vLLM: ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}``, which needs ``vllm serve
--enable-lora --max-lora-rank R`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``); requests then name the adapter
as their ``model``, and the previous version is unloaded (``POST /v1/unload_lora_adapter {"lora_name"}``) and its
folder deleted. A new name per version means no server-side cache can serve stale weights. ``dir`` must be a path
the server can read (a shared file system when it runs on another machine).

``mode=full`` (implemented as a documented option): the merged weights are written with ``vrl.models.save_vlm``
to ``<dir>/full-v<step>`` and the server is asked to reload them from disk with ``POST <full_path>
{"model_path": ...}``; the default path is SGLang's ``/update_weights_from_disk``. vLLM's ``vllm serve`` has no
stable HTTP route for this (its weight updates go through NCCL from a trainer process, as TRL's ``vllm-serve``
does), which vrl does not implement. Writing a multi-GB checkpoint per step is slow: use LoRA where possible.

``mode=none``: the server samples from whatever it serves (an evaluation-only or frozen-sampler setup).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from vrl.errors import ConfigError
from vrl.sampler.http import ServerError, post_json

MODES = ("lora", "full", "none")


def server_root(base_url: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000`` (the adapter and reload routes are given from the root)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class WeightSync:
    """How the policy reaches the server (module docstring).

    Args:
        mode: ``lora`` | ``full`` | ``none``.
        dir: where versions are written (readable by the server); relative paths resolve against the working dir.
        adapter_name: prefix of the served adapter names (``<adapter_name>-v<step>``).
        load_path, unload_path: the server's adapter routes, from its root (vLLM's defaults; SGLang serves
            ``/load_lora_adapter`` and ``/unload_lora_adapter`` at the root).
        full_path: the reload-from-disk route for ``mode=full`` (SGLang's ``/update_weights_from_disk``).
        timeout_s, retries: per sync request (a full reload of a large model takes minutes).
        keep_files: keep every pushed version on disk (default: only the one the server holds).
    """

    def __init__(
        self,
        mode: str = "lora",
        dir: str = "served_weights",
        adapter_name: str = "vrl-policy",
        load_path: str = "/v1/load_lora_adapter",
        unload_path: str = "/v1/unload_lora_adapter",
        full_path: str = "/update_weights_from_disk",
        timeout_s: float = 600.0,
        retries: int = 2,
        keep_files: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"sampler.weight_sync.mode must be one of {MODES}, got {mode!r}")
        self.mode, self.dir, self.adapter_name = mode, Path(dir), adapter_name
        self.load_path, self.unload_path, self.full_path = load_path, unload_path, full_path
        self.timeout_s, self.retries, self.keep_files = timeout_s, retries, keep_files
        self.pushes = 0
        self._held: tuple[str, Path] | None = None  # (served name, folder) of the version the server holds

    def name(self, version: int) -> str:
        return f"{self.adapter_name}-v{version}"

    def push(self, sampler: Any, vlm: Any, version: int) -> None:
        """Write weight ``version`` and make the server serve it; ``sampler.served_model`` names it afterwards."""
        if self.mode == "none":
            return
        root = server_root(sampler.base_url)
        if self.mode == "lora":
            if not getattr(vlm, "is_lora", False):
                raise ConfigError(
                    "sampler.weight_sync.mode=lora needs a LoRA policy (e.g. lora=r8); use "
                    "sampler.weight_sync.mode=full, or mode=none to sample from the server's own weights"
                )
            name, path = self.name(version), (self.dir / self.name(version)).resolve()
            vlm.model.save_pretrained(path)
            self._load(root, name, path, sampler.api_key_env)
            sampler.served_model = name
        else:
            from vrl.models.loading import save_vlm

            name, path = sampler.model, (self.dir / f"full-v{version}").resolve()
            save_vlm(vlm, path, merge_lora=True)
            body = {"model_path": str(path)}
            post_json(root + self.full_path, body, self.timeout_s, self.retries, 1.0, sampler.api_key_env, False)
        previous, self._held = self._held, (name, path)
        self.pushes += 1
        if previous is not None:
            self._release(root, *previous, sampler.api_key_env)

    def follow(self, sampler: Any, version: int) -> None:
        """On a rank that does not push (DDP): name the version rank 0 pushed."""
        if self.mode == "lora":
            sampler.served_model = self.name(version)

    def _load(self, root: str, name: str, path: Path, key_env: str | None) -> None:
        body = {"lora_name": name, "lora_path": str(path)}
        try:
            post_json(root + self.load_path, body, self.timeout_s, self.retries, 1.0, key_env, False)
        except ServerError as err:
            if self._held is not None or "already" not in str(err).lower():
                raise
            # the first push of a resumed run: the server still holds this name from the killed process
            self._unload(root, name, key_env)
            post_json(root + self.load_path, body, self.timeout_s, self.retries, 1.0, key_env, False)

    def _unload(self, root: str, name: str, key_env: str | None) -> None:
        post_json(root + self.unload_path, {"lora_name": name}, self.timeout_s, self.retries, 1.0, key_env, False)

    def _release(self, root: str, name: str, path: Path, key_env: str | None) -> None:
        if self.mode == "lora" and name != (self._held or ("",))[0]:
            self._unload(root, name, key_env)
        if not self.keep_files and path != self._held[1]:
            shutil.rmtree(path, ignore_errors=True)


class ServerSync(Callback):
    """Pushes the policy to the rollout server after each RL step with an optimizer step (and once at the start,
    which also serves a resumed run's restored adapter), and paces the prefetch (``vrl.sampler.prefetch``).

    Only rank 0 writes and pushes under DDP; the other ranks wait at a barrier and name the same version.
    (The sampler reports its ``rollout_server/*`` metrics itself: ``OpenAIServerSampler.pop_stats``.)
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def on_train_start(self, trainer, pl_module) -> None:
        self.sampler.source = lambda: pl_module.prompts
        self._sync(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # the first prefetch starts here, not in on_train_start: Lightning calls callbacks' on_train_start before
        # the module's, which restores a resumed run's prompt position
        self._prefetch_fresh(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        s = self.sampler
        if trainer.global_step != s.version:  # an optimizer step changed the weights
            s.prefetch.wait()  # a running prefetch finishes on the version it started with
            self._sync(trainer, pl_module)
        self._prefetch_fresh(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.sampler.prefetch.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.sampler.prefetch.close()

    def _prefetch_fresh(self, pl_module) -> None:
        """``max_staleness=0``: the next batch starts now, on the weights just pushed."""
        s = self.sampler
        if s.max_staleness == 0 and not s.prefetch.pending:
            s.prefetch.launch_next(s, pl_module.vlm)

    def _sync(self, trainer, pl_module) -> None:
        s = self.sampler
        s.set_version(trainer.global_step)
        if s.weight_sync is None:
            return
        if trainer.is_global_zero:
            s.weight_sync.push(s, pl_module.vlm, trainer.global_step)
        else:
            s.weight_sync.follow(s, trainer.global_step)
        trainer.strategy.barrier("vrl-weight-sync")
