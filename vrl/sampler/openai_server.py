"""Rollouts from an OpenAI-compatible inference server (vLLM, SGLang) that the user runs: ``sampler=openai_server``.

One chat request per prompt with its images as base64 PNG data URLs and ``n = G``; the server returns the sampled
token ids and their log-probs, which are packed into a ``Rollout`` behind the prompt tokens that the *local*
processor produces (the teacher-forced passes must see exactly the tokens the server conditioned on, so the
server's prompt token ids are compared with the local encoding and a difference stops the run).

Request fields relied on (vLLM's OpenAI server, ``vllm serve``; names as of vLLM 0.10/0.11):
``messages`` (content parts ``text`` and ``image_url`` with a ``data:image/png;base64,`` URL), ``n``,
``max_tokens``, ``temperature``, ``top_p``, ``top_k`` (a vLLM extension; sent only when > 0), ``seed``,
``logprobs: true`` + ``top_logprobs: 0`` (``choices[i].logprobs.content[t].logprob``), ``return_token_ids: true``
(``prompt_token_ids`` at the top level of the answer and ``choices[i].token_ids``), ``return_tokens_as_token_ids:
true`` (a fallback: ``content[t].token`` reads ``token_id:<id>``), ``skip_special_tokens: false`` and
``logit_bias`` (-100 on the vision placeholder tokens, which a response must never contain). vLLM reports the
log-probs of the *raw* model distribution unless the server runs with ``--logprobs-mode processed_logprobs``,
which the temperature-scaled scoring here expects. SGLang's OpenAI server takes most of these fields under the
same names; which of them it honours (the token ids above all) is not verified. Nothing here has run against a real
vLLM or SGLang: only against the stand-in of ``tests/sampler/_vlm_server.py`` (README, "Rollout server").
"""

from __future__ import annotations

import base64
import io
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from vrl.sampler.hf import suppressed_token_ids
from vrl.sampler.http import ServerError, post_json
from vrl.sampler.prefetch import Prefetch, prompt_key
from vrl.sampler.prompts import encode_prompts, model_image_sizes, to_messages
from vrl.types import SAMPLER_LOGPROBS, Rollout, slice_vision


class OpenAIServerSampler:
    """Samples G responses per prompt through an OpenAI-compatible chat-completions server (``conf/sampler``).

    Args:
        base_url: the server's OpenAI base URL, ``/v1`` included (what ``vllm serve`` prints).
        model: the served model name (``--served-model-name``); a pushed LoRA adapter's name replaces it.
        group_size, max_new_tokens, temperature, top_p, top_k, system_prompt, prompt_suffix, val_temperature: as
            ``HFSampler`` (``top_k`` 0 = off; scoring does not apply top-p/top-k truncation: keep them off when the
            log-probs must match the scorer's).
        logprobs: also set ``Rollout.old_logprobs`` to the server's log-probs (the loop then skips its old-policy
            pass; off-policy by the server's numerics). The server's log-probs always travel in
            ``rollout.extras["sampler_logprobs"]`` for ``+method=rollout_correction``.
        check_prompt_tokens: compare the server's ``prompt_token_ids`` with the local encoding (a mismatch:
            ``ServerError`` naming the row and the first differing position).
        timeout_s, retries, backoff_s: per request (see ``vrl.sampler.http.post_json``).
        max_workers: requests in flight at once (one per prompt).
        api_key_env: environment variable with a bearer token (None sends none).
        seed: the base of the per-request seeds (deterministic sampling, see ``request_seed``).
        extra_body: more JSON fields for every request.
        weight_sync: a ``vrl.sampler.weight_sync.WeightSync`` (pushes the policy after each optimizer step), or
            None to sample from the server's weights as they are.
        max_staleness: None: synchronous. 0 or more: generate the next prompt batch in a background thread
            (``vrl.sampler.prefetch``); 0 starts it after the weight push (same result as synchronous), k >= 1
            while the learner works on the current batch (one-step-off-policy), using a prefetched rollout only
            when at most k weight versions old.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        group_size: int = 8,
        max_new_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        system_prompt: str | None = None,
        prompt_suffix: str = "",
        val_temperature: float = 0.0,
        logprobs: bool = False,
        check_prompt_tokens: bool = True,
        timeout_s: float = 300.0,
        retries: int = 2,
        backoff_s: float = 1.0,
        max_workers: int = 64,
        api_key_env: str | None = "OPENAI_API_KEY",
        seed: int = 0,
        extra_body: Mapping[str, Any] | None = None,
        weight_sync: Any = None,
        max_staleness: int | None = None,
    ) -> None:
        if group_size < 1 or max_new_tokens < 1 or temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(
                "sampler: need group_size >= 1, max_new_tokens >= 1, temperature > 0 and 0 < top_p <= 1 "
                f"(got {group_size}, {max_new_tokens}, {temperature}, {top_p})"
            )
        if max_staleness is not None and max_staleness < 0:
            raise ValueError(f"sampler.max_staleness must be null or >= 0, got {max_staleness}")
        self.base_url, self.url = base_url.rstrip("/"), base_url.rstrip("/") + "/chat/completions"
        self.model = self.served_model = model
        self.group_size, self.max_new_tokens, self.temperature = group_size, max_new_tokens, temperature
        self.top_p, self.top_k, self.val_temperature = top_p, top_k, val_temperature
        self.system_prompt, self.prompt_suffix, self.logprobs = system_prompt, prompt_suffix, logprobs
        self.check_prompt_tokens = check_prompt_tokens
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.max_workers, self.api_key_env, self.seed = max_workers, api_key_env, seed
        self.extra_body = dict(extra_body or {})
        self.weight_sync, self.max_staleness = weight_sync, max_staleness
        self.version = 0  # the weight version the server holds (optimizer steps); set by ServerSync
        self.calls = 0  # sampled generate calls since the version was set (seeds per call)
        self.prefetch = Prefetch()
        self.staleness = 0  # weight versions between the last rollout's generation and its use
        self.source = None  # () -> the loop's prompt stream (set by ServerSync; the prefetch peeks at it)

    def callbacks(self) -> list:
        """The Lightning callback that pushes weights and paces the prefetch (``RLModule.configure_callbacks``)."""
        from vrl.sampler.weight_sync import ServerSync

        return [ServerSync(self)]

    def set_version(self, version: int) -> None:
        self.version, self.calls = version, 0

    def pop_stats(self) -> dict[str, float]:
        """This step's ``rollout_server/*`` metrics (the loop merges them into the step's): the weight version the
        server held, and with ``max_staleness`` set the staleness of the step's rollout (0 when generated now) and
        the prefetches used and dropped so far."""
        out = {"rollout_server/weight_version": float(self.version)}
        if self.max_staleness is not None:
            out["rollout_server/staleness"] = float(self.staleness)
            out["rollout_server/prefetch_hits"] = float(self.prefetch.hits)
            out["rollout_server/prefetch_misses"] = float(self.prefetch.misses)
        return out

    # ------------------------------------------------------------------ generation
    def generate(self, vlm, samples: list[dict], group_size: int | None = None, greedy: bool = False) -> Rollout:
        """G responses for each of the B rows (sequences of one row adjacent), as ``HFSampler.generate``."""
        if greedy:
            return self.generate_now(vlm, samples, 1, True, [0] * len(samples))
        g = group_size or self.group_size
        rollout = None
        if self.max_staleness is not None:
            rollout = self.prefetch.take(prompt_key(self, samples, g), self.version, self.max_staleness)
        self.staleness = 0 if rollout is None else self.prefetch.staleness
        if rollout is None:
            rollout = self.generate_now(vlm, samples, g, False, self.next_seeds(len(samples)))
        if self.max_staleness:  # >= 1: the next batch starts now, on the weights the server holds
            self.prefetch.launch_next(self, vlm)
        return rollout

    def next_seeds(self, b: int) -> list[int]:
        """Per-prompt request seeds of the next sampled call: a function of (seed, weight version, call index in
        that version, prompt position), so a resumed run and a prefetched call ask for the same draws."""
        call, self.calls = self.calls, self.calls + 1
        return [request_seed(self.seed, self.version, call, i) for i in range(b)]

    def generate_now(self, vlm, samples: list[dict], g: int, greedy: bool, seeds: list[int]) -> Rollout:
        """One request per prompt (concurrently), checked and packed."""
        processor = vlm.processor
        tok = processor.tokenizer
        enc, images_per_prompt = encode_prompts(processor, samples, self.system_prompt, self.prompt_suffix)
        suppress = suppressed_token_ids(tok)
        bodies = [self.request_body(s, g, greedy, seed, suppress) for s, seed in zip(samples, seeds)]
        workers = max(1, min(self.max_workers, len(bodies)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vrl-rollout") as pool:
            answers = list(pool.map(self._post, bodies))
        responses, logprobs = [], []
        for b, (sample, answer) in enumerate(zip(samples, answers)):
            if self.check_prompt_tokens:
                local = enc["input_ids"][b][enc["attention_mask"][b].bool()].tolist()
                self._check_prompt(answer, local, sample, tok)
            ids, lps = self._choices(answer, g, sample, set(suppress), tok.eos_token_id)
            responses += ids
            logprobs += lps
        return self._pack(vlm, samples, enc, images_per_prompt, g, responses, None if greedy else logprobs)

    def request_body(self, sample: dict, g: int, greedy: bool, seed: int, suppress: list[int]) -> dict[str, Any]:
        """The chat-completions request of one prompt (module docstring: the fields and which server reads them)."""
        body: dict[str, Any] = {
            "model": self.served_model,
            "messages": openai_messages(sample, self.system_prompt, self.prompt_suffix),
            "n": g,
            "max_tokens": self.max_new_tokens,
            "temperature": self.val_temperature if greedy else self.temperature,  # 0: greedy
            "top_p": self.top_p,
            "logprobs": True,
            "top_logprobs": 0,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            "logit_bias": {str(i): -100 for i in suppress},
            "seed": seed,
        }
        if self.top_k > 0:
            body["top_k"] = self.top_k
        return body | self.extra_body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        return post_json(self.url, body, self.timeout_s, self.retries, self.backoff_s, self.api_key_env)

    def _check_prompt(self, answer: dict, local: list[int], sample: dict, tok) -> None:
        served = answer.get("prompt_token_ids")
        if served is None:
            raise ServerError(
                f"rollout server {self.url}: the answer has no prompt_token_ids (vLLM returns them with "
                "return_token_ids=true, vLLM >= 0.10.2); upgrade the server or set sampler.check_prompt_tokens=false"
            )
        if list(served) != local:
            at = next((i for i, (a, b) in enumerate(zip(served, local)) if a != b), min(len(served), len(local)))
            raise ServerError(
                f"rollout server {self.url}: row uid={sample.get('uid')!r}: the server's prompt tokens differ from "
                f"the local processor's at position {at} ({len(served)} vs {len(local)} tokens; server "
                f"{tok.decode(served[at : at + 8])!r} vs local {tok.decode(local[at : at + 8])!r}). Serve the same "
                "chat template and image-processor settings (min_pixels/max_pixels) as model.*"
            )

    def _choices(self, answer: dict, g: int, sample: dict, suppress: set[int], eos: int):
        """(token ids, log-probs) of the G choices in index order; up to and including the first EOS."""
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != g:
            raise ServerError(f"rollout server {self.url}: asked n={g}, got {len(choices)} choices")
        ids_out, lps_out = [], []
        for c in choices:
            content = (c.get("logprobs") or {}).get("content") or []
            ids = c.get("token_ids")
            if ids is None:  # return_tokens_as_token_ids: "token_id:<id>"
                ids = [int(str(t["token"]).rsplit(":", 1)[-1]) for t in content]
            ids = [int(i) for i in ids][: self.max_new_tokens]
            if len(content) < len(ids):
                raise ServerError(
                    f"rollout server {self.url}: {len(ids)} tokens but {len(content)} log-probs (request logprobs)"
                )
            if eos in ids:
                ids = ids[: ids.index(eos) + 1]
            if bad := suppress.intersection(ids):
                raise ServerError(
                    f"rollout server {self.url}: row uid={sample.get('uid')!r}: a response contains vision "
                    f"placeholder tokens {sorted(bad)} (the server ignored logit_bias)"
                )
            ids_out.append(ids)
            lps_out.append([float(t["logprob"]) for t in content[: len(ids)]])
        return ids_out, lps_out

    def _pack(self, vlm, samples, enc, images_per_prompt, g, responses, logprobs) -> Rollout:
        """Local prompt tokens (left-padded) + the server's responses (right-padded) as a ``Rollout``."""
        tok = vlm.processor.tokenizer
        b, n = len(samples), len(responses)
        width = max(1, max(len(r) for r in responses))
        response = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        lp = torch.zeros(n, width)
        for i, ids in enumerate(responses):
            response[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1
            if logprobs is not None:
                lp[i, : len(ids)] = torch.tensor(logprobs[i])
        idx = torch.arange(b).repeat_interleave(g)
        device = next(vlm.model.parameters()).device
        pixel_values = grid = None
        if "pixel_values" in enc:
            pixel_values, grid = slice_vision(enc["pixel_values"], enc["image_grid_thw"], images_per_prompt, idx)
        mm_types = None
        if "mm_token_type_ids" in enc:
            mm_types = torch.cat([enc["mm_token_type_ids"][idx], torch.zeros_like(response)], dim=1)
        frames = model_image_sizes(enc["image_grid_thw"], vlm.patch_size) if "image_grid_thw" in enc else []
        starts = (torch.cumsum(images_per_prompt, 0) - images_per_prompt).tolist()
        per_prompt = [frames[s : s + int(c)] for s, c in zip(starts, images_per_prompt.tolist())]
        rows = [{**samples[p], "model_image_sizes": per_prompt[p]} for p in idx.tolist()]
        for row, length in zip(rows, mask.sum(-1).tolist()):
            row["response_tokens"] = int(length)
        extras = {SAMPLER_LOGPROBS: (lp * mask).to(device)} if logprobs is not None else {}
        to = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Rollout(
            input_ids=to(torch.cat([enc["input_ids"][idx], response], dim=1)),
            attention_mask=to(torch.cat([enc["attention_mask"][idx], mask.to(enc["attention_mask"].dtype)], 1)),
            response_mask=to(mask.float()),
            pixel_values=to(pixel_values),
            image_grid_thw=to(grid),
            images_per_seq=images_per_prompt[idx],
            group_ids=to(idx),
            samples=rows,
            responses=tok.batch_decode(response, skip_special_tokens=True),
            mm_token_type_ids=to(mm_types),
            old_logprobs=extras[SAMPLER_LOGPROBS].clone() if self.logprobs and extras else None,
            extras=extras,
        )


def request_seed(seed: int, version: int, call: int, position: int) -> int:
    """A 31-bit request seed from the run seed, the weight version, the call index and the prompt position."""
    return zlib.crc32(f"{seed}:{version}:{call}:{position}".encode()) & 0x7FFFFFFF


def openai_messages(sample: dict, system_prompt: str | None, prompt_suffix: str) -> list[dict[str, Any]]:
    """The row's chat messages (``vrl.sampler.prompts.to_messages``) in OpenAI form: each image becomes an
    ``image_url`` part with a lossless PNG data URL, in place."""
    images = iter(sample.get("images") or [])
    out = []
    for message in to_messages(sample, system_prompt, prompt_suffix):
        parts = []
        for part in message["content"]:
            if part["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": png_data_url(next(images))}})
            else:
                parts.append(part)
        out.append({"role": message["role"], "content": parts})
    return out


def png_data_url(image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
