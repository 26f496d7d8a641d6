"""Multi-turn rollouts with image tools ("thinking with images"), behind the ``HFSampler`` interface.

Per turn, every unfinished trajectory is extended by one ``model.generate`` call (all of them batched, left
padded). A turn ends at EOS (the answer: the trajectory is done), at the tool call's closing tag, or at the
token budget. A call is parsed and run on the trajectory's images; its output becomes an observation turn::

    <|im_end|>\\n<|im_start|>user\\n<|vision_start|><|image_pad|>...<|vision_end|>{text}<|im_end|>\\n<|im_start|>assistant\\n

tokenised by the processor exactly as for a fresh prompt (its images expanded to one ``<|image_pad|>`` per merged
patch, their ``pixel_values`` rows and ``image_grid_thw`` appended after the sequence's earlier images), then the
model continues. Invalid calls (unparseable, unknown tool, bad arguments) get an ``Error: ...`` observation
and are counted; nothing the policy writes can crash the run.

The returned ``Rollout`` holds one sequence per trajectory: prompt (left padded) then the whole response region
(policy turns and observations, right padded). ``attention_mask`` is 1 on every real token; ``response_mask`` is 1
on the **policy's** tokens only, so observation tokens carry no policy gradient, no KL or entropy term and no
weight in the loss normaliser (verl's multi-turn ``response_mask`` does the same) while the teacher-forced passes
still condition on them. Observation tokens are ``attention_mask[:, P:] - response_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vrl.sampler.hf import HFSampler, sampling_logprobs, suppressed_token_ids
from vrl.sampler.prompts import encode_prompts, model_image_sizes
from vrl.tools.base import ImageState, Tool, ToolError, ToolResult, parse_call
from vrl.types import Rollout

#: The observation turn around the tool output (``{images}``: one vision block per new image).
OBSERVATION = "<|im_end|>\n<|im_start|>user\n{images}{text}<|im_end|>\n<|im_start|>assistant\n"
VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"


@dataclass
class Trajectory:
    """One sequence being rolled out: its response-region tokens and images so far."""

    prompt: int
    state: ImageState
    pixels: list[torch.Tensor]  # per image: its processor rows
    grids: list[torch.Tensor]  # per image: [1, 3]
    ids: list[int] = field(default_factory=list)
    policy: list[int] = field(default_factory=list)  # 1 on tokens the policy generated
    mm: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    tool_images: list[Any] = field(default_factory=list)
    stop: str = ""  # answer | length | budget | max_turns

    @property
    def done(self) -> bool:
        return bool(self.stop)


class MultiTurnSampler(HFSampler):
    """``sampler=multi_turn``: G trajectories per prompt, each alternating policy turns and tool observations.

    Args:
        tools: call name -> tool (``conf/tool``; presets fill it with ``/tool@sampler.tools.<name>: <option>``).
        max_turns: tool calls allowed per trajectory; a call past it ends the trajectory (``stop=max_turns``).
        max_new_tokens: tokens per policy turn.
        max_total_tokens: the whole response region (policy turns + observations); an observation that would
            not fit ends the trajectory (``stop=budget``).
        call_open, call_close: the tags around a call (``vrl.tools.base.parse_call``); ``call_close`` is the
            turn's stop string.
        observation: the observation turn's template (``{images}``, ``{text}``).
        bare_tool: a tool name for a bare-box call format (ERGO: ``call_open=<zoom>``, ``call_close=</zoom>``,
            body ``[x1, y1, x2, y2]``); null = JSON calls with a name.
        describe_tools: append each tool's one-line description to the system prompt.
        **kwargs: ``HFSampler``'s knobs (group_size, temperature, top_p, top_k, prompts, logprobs).
    """

    def __init__(
        self,
        tools: dict[str, Tool] | None = None,
        max_turns: int = 2,
        max_total_tokens: int = 256,
        call_open: str = "<tool_call>",
        call_close: str = "</tool_call>",
        observation: str = OBSERVATION,
        bare_tool: str | None = None,
        describe_tools: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if describe_tools and tools:  # the tools' one-line descriptions, after the system prompt
            lines = "\n".join(f"- {name}: {tool.description}" for name, tool in tools.items())
            head = f"{self.system_prompt}\n" if self.system_prompt else ""
            self.system_prompt = (
                f'{head}Tools (call one as <tool_call>{{"name": ..., "arguments": {{...}}}}</tool_call>):\n{lines}'
            )
        if max_turns < 0 or max_total_tokens < self.max_new_tokens:
            raise ValueError(
                f"sampler: max_turns >= 0 and max_total_tokens >= max_new_tokens needed, got {max_turns}, "
                f"{max_total_tokens} < {self.max_new_tokens}"
            )
        self.tools = dict(tools or {})
        self.max_turns, self.max_total_tokens = max_turns, max_total_tokens
        self.call_open, self.call_close, self.observation = call_open, call_close, observation
        self.bare_tool = bare_tool
        self.logits_processor = None  # a scripted policy for tests and demos (vrl.sampler.scripted)
        self._stats: dict[str, float] = {}

    # ----------------------------------------------------------------- the turn loop
    @torch.no_grad()
    def generate(self, vlm, samples: list[dict], group_size: int | None = None, greedy: bool = False) -> Rollout:
        """B rows -> N = B*G trajectories (sequences of one row adjacent), as ``HFSampler.generate``.

        A row's ``forced_turns`` (per policy turn: token ids, e.g. a recorded trajectory's ``turns[k]["ids"]``,
        or a text, tokenised without special tokens) are taken as given instead of sampled: calls in them run
        their tools and get their observations as usual, and the model continues after the last one unless it
        ended the trajectory. That replays a stored trajectory token for token without a model call or a random
        draw (the teacher-forced sequences of multi-turn DPO pairs), or starts one from a chosen prefix (VisRL's
        replaced bad box). Every turn records its token
        ``ids`` and its ``span`` [start, end) in the response region.
        """
        g = 1 if greedy else (group_size or self.group_size)
        processor = vlm.processor
        enc, counts = encode_prompts(processor, samples, self.system_prompt, self.prompt_suffix)
        prompts = _prompt_parts(enc, counts, vlm.patch_size)
        images = [[img.convert("RGB") for img in (s.get("images") or [])] for s in samples]
        trajs = []
        for p in torch.arange(len(samples)).repeat_interleave(g).tolist():
            state = ImageState(list(images[p]), list(prompts[p]["frames"]))
            trajs.append(Trajectory(p, state, list(prompts[p]["pixels"]), list(prompts[p]["grids"])))
        with_logprobs = self.logprobs and not greedy
        model = vlm.model
        was_training = model.training
        model.eval()
        try:
            for _ in range(self.max_turns + 1):
                for t in trajs:  # a trajectory whose observations filled the budget exactly cannot continue
                    if not t.done and len(t.ids) >= self.max_total_tokens:
                        t.stop = "budget"
                forced = self._force_turns(vlm, trajs, samples)
                active = [t for t in trajs if not t.done and id(t) not in forced]
                if not active:
                    if forced:
                        continue
                    break
                tokens, logps = self._decode(vlm, prompts, active, greedy, with_logprobs)
                for t, row, lp in zip(active, tokens, logps):
                    self._advance(vlm, t, row, lp)
        finally:
            model.train(was_training)
        for t in trajs:
            t.stop = t.stop or "max_turns"
        if not greedy:
            self._count(trajs)
        return self._rollout(vlm, samples, prompts, trajs, with_logprobs)

    def _force_turns(self, vlm, trajs: list[Trajectory], samples: list[dict]) -> set[int]:
        """Advance every unfinished trajectory whose row gives its next turn by that turn, as it is (no model
        call); the ``id`` of each one advanced."""
        tok, forced = vlm.processor.tokenizer, set()
        for t in trajs:
            given = _forced(samples[t.prompt])
            if t.done or len(t.turns) >= len(given):
                continue
            turn = given[len(t.turns)]
            ids = tok(turn, add_special_tokens=False)["input_ids"] if isinstance(turn, str) else list(turn)
            self._advance(vlm, t, torch.tensor(ids, dtype=torch.long), torch.zeros(len(ids)))
            forced.add(id(t))
        return forced

    def _decode(self, vlm, prompts, active: list[Trajectory], greedy: bool, with_logprobs: bool):
        """One ``generate`` call continuing every active trajectory: new tokens [n, T] and their sampling
        log-probs [n, T] (zeros without ``logprobs``)."""
        model, tok = vlm.model, vlm.processor.tokenizer
        device = next(model.parameters()).device
        seqs = [prompts[t.prompt]["ids"] + t.ids for t in active]
        mms = [prompts[t.prompt]["mm"] + t.mm for t in active]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in seqs])
        inputs = {
            "input_ids": ids,
            "attention_mask": torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs]),
        }
        if prompts[0]["has_mm"]:
            inputs["mm_token_type_ids"] = torch.tensor([[0] * (width - len(m)) + m for m in mms])
        pixels = [p for t in active for p in t.pixels]
        if pixels:
            inputs["pixel_values"] = torch.cat(pixels)
            inputs["image_grid_thw"] = torch.cat([gr for t in active for gr in t.grids])
        inputs = {k: v.to(device) for k, v in inputs.items()}
        budget = max(min(self.max_new_tokens, self.max_total_tokens - len(t.ids)) for t in active)
        kw = dict(
            max_new_tokens=budget,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            suppress_tokens=suppressed_token_ids(tok),
            stop_strings=[self.call_close],
            tokenizer=tok,
        )
        if greedy and self.val_temperature == 0:
            kw.update(do_sample=False)
        else:
            temp = self.val_temperature if greedy else self.temperature
            kw.update(do_sample=True, temperature=temp, top_p=self.top_p, top_k=self.top_k or None)
        if self.logits_processor is not None:
            self.logits_processor.begin([t.prompt for t in active], [len(t.turns) for t in active], width)
            kw["logits_processor"] = [self.logits_processor]
        out = model.generate(**inputs, **kw, output_logits=with_logprobs, return_dict_in_generate=True)
        new = out.sequences[:, width:].cpu()
        if not with_logprobs:
            return new, torch.zeros(new.shape)
        logits = torch.stack(out.logits, dim=1)
        return new, sampling_logprobs(logits, new.to(logits.device), self.temperature, kw["suppress_tokens"]).cpu()

    def _advance(self, vlm, t: Trajectory, tokens: torch.Tensor, logps: torch.Tensor) -> None:
        """Append one policy turn to ``t`` and, if it ended in a call, the tool's observation."""
        tok = vlm.processor.tokenizer
        row = tokens.tolist()
        end, kind = self._turn_end(tok, row, self.max_total_tokens - len(t.ids))
        span = [len(t.ids), len(t.ids) + end]
        t.ids += row[:end]
        t.policy += [1] * end
        t.mm += [0] * end
        t.logps += logps[:end].tolist()
        text = tok.decode(row[:end], skip_special_tokens=True)
        turn: dict[str, Any] = {"text": text, "ids": row[:end], "span": span}
        t.turns.append(turn)
        if kind != "call":
            t.stop = kind
            return
        if sum(1 for u in t.turns if "tool" in u) >= self.max_turns:
            t.stop = "max_turns"
            return
        result = self._run_tool(t, text, turn)
        obs_ids, obs_mm, pixels, grids = self._encode_observation(vlm.processor, result)
        if len(t.ids) + len(obs_ids) > self.max_total_tokens:
            t.stop = "budget"
            return
        turn["observation_tokens"] = len(obs_ids)
        t.ids += obs_ids
        t.policy += [0] * len(obs_ids)
        t.mm += obs_mm
        t.logps += [0.0] * len(obs_ids)
        for image, grid, rows in zip(result.images, grids, pixels):
            t.state.images.append(image)
            t.state.frames.append(model_image_sizes(grid[None], vlm.patch_size)[0])
            t.pixels.append(rows)
            t.grids.append(grid[None])
            t.tool_images.append(image)

    def _turn_end(self, tok, row: list[int], budget: int) -> tuple[int, str]:
        """(tokens kept, why the turn ended): EOS -> ``answer`` (EOS kept), the call's closing tag -> ``call``,
        else the per-turn or total budget -> ``length``. Tokens after the end (generate's padding) are dropped."""
        limit = min(len(row), budget)
        for j in range(limit):
            if row[j] == tok.eos_token_id:
                return j + 1, "answer"
            if ">" in tok.decode(row[j : j + 1]) and self.call_close in tok.decode(row[: j + 1]):
                return j + 1, "call"
        return limit, "length"

    def _run_tool(self, t: Trajectory, text: str, turn: dict[str, Any]) -> ToolResult:
        """Parse and run the call; every failure becomes an error observation (``turn["error"]``)."""
        turn["tool"] = None
        try:
            name, args = parse_call(text, self.call_open, self.call_close, self.bare_tool)
            turn["tool"], turn["args"] = name, args
            if name not in self.tools:
                raise ToolError(f"unknown tool {name!r}; tools: {', '.join(sorted(self.tools)) or 'none'}")
            result = self.tools[name](t.state, args)
        except ToolError as e:
            turn["error"] = str(e)
            return ToolResult(text=f"Error: {e}")
        except Exception as e:  # a tool's own failure on odd input: contained and counted like a bad call
            turn["error"] = f"{type(e).__name__}: {e}"
            return ToolResult(text=f"Error: the tool failed ({type(e).__name__})")
        turn["box"], turn["source"], turn["images"] = result.box, result.source, len(result.images)
        return result

    def _encode_observation(self, processor, result: ToolResult):
        """Observation tokens, their mm types, and each new image's pixel rows and grid, via the processor."""
        text = self.observation.format(images=VISION_BLOCK * len(result.images), text=result.text)
        kwargs = {"images": [im.convert("RGB") for im in result.images]} if result.images else {}
        enc = processor(text=[text], return_tensors="pt", **kwargs)
        ids = enc["input_ids"][0].tolist()
        mm = enc["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in enc else [0] * len(ids)
        if not result.images:
            return ids, mm, [], []
        grids = enc["image_grid_thw"]
        rows = enc["pixel_values"].split(grids.prod(-1).tolist())
        return ids, mm, list(rows), list(grids)

    # ----------------------------------------------------------------- packing and metrics
    def _rollout(self, vlm, samples, prompts, trajs: list[Trajectory], with_logprobs: bool) -> Rollout:
        tok = vlm.processor.tokenizer
        p_width = max(len(prompts[t.prompt]["ids"]) for t in trajs)
        l_width = max(1, max(len(t.ids) for t in trajs))

        def row(prompt: list, resp: list, fill_p, fill_r) -> list:
            return [fill_p] * (p_width - len(prompt)) + prompt + resp + [fill_r] * (l_width - len(resp))

        pad = tok.pad_token_id
        ids = torch.tensor([row(prompts[t.prompt]["ids"], t.ids, pad, pad) for t in trajs])
        att = torch.tensor([row([1] * len(prompts[t.prompt]["ids"]), [1] * len(t.ids), 0, 0) for t in trajs])
        policy = torch.tensor([t.policy + [0] * (l_width - len(t.policy)) for t in trajs], dtype=torch.float32)
        mm = torch.tensor([row(prompts[t.prompt]["mm"], t.mm, 0, 0) for t in trajs])
        pixels = [p for t in trajs for p in t.pixels]
        device = next(vlm.model.parameters()).device
        rows = []
        for t in trajs:
            calls = [u for u in t.turns if "tool" in u]
            rows.append(
                {
                    **samples[t.prompt],
                    "model_image_sizes": [list(f) for f in prompts[t.prompt]["frames"]],
                    "turns": t.turns,
                    "tool_calls": len(calls),
                    "invalid_calls": sum(1 for u in calls if "error" in u),
                    "tool_images": t.tool_images,
                    "stop": t.stop,
                    "response_tokens": sum(t.policy),
                }
            )
        old = None
        if with_logprobs:
            old = torch.tensor([t.logps + [0.0] * (l_width - len(t.logps)) for t in trajs]).to(device) * policy.to(
                device
            )
        return Rollout(
            input_ids=ids.to(device),
            attention_mask=att.to(device),
            response_mask=policy.to(device),
            pixel_values=torch.cat(pixels).to(device) if pixels else None,
            image_grid_thw=torch.cat([g for t in trajs for g in t.grids]).to(device) if pixels else None,
            images_per_seq=torch.tensor([len(t.pixels) for t in trajs]),
            group_ids=torch.tensor([t.prompt for t in trajs], device=device),
            samples=rows,
            responses=["\n".join(u["text"] for u in t.turns) for t in trajs],
            mm_token_type_ids=mm.to(device) if prompts[0]["has_mm"] else None,
            old_logprobs=old,
        )

    def _count(self, trajs: list[Trajectory]) -> None:
        s = self._stats
        for t in trajs:
            calls = [u for u in t.turns if "tool" in u]
            s["n"] = s.get("n", 0) + 1
            s["calls"] = s.get("calls", 0) + len(calls)
            s["invalid"] = s.get("invalid", 0) + sum(1 for u in calls if "error" in u)
            s["turns"] = s.get("turns", 0) + len(t.turns)
            s["obs"] = s.get("obs", 0) + len(t.ids) - sum(t.policy)
            s["answered"] = s.get("answered", 0) + (t.stop == "answer")

    def pop_stats(self) -> dict[str, float]:
        """Tool metrics of the training rollouts since the last call (validation's greedy ones are left out)."""
        s, self._stats = self._stats, {}
        if not s:
            return {}
        n = s["n"]
        return {
            "tools/calls_per_traj": s["calls"] / n,
            "tools/invalid_rate": s["invalid"] / s["calls"] if s["calls"] else 0.0,
            "tools/turns_mean": s["turns"] / n,
            "tools/observation_tokens_mean": s["obs"] / n,
            "tools/answered_frac": s["answered"] / n,
        }


def _forced(sample: dict) -> list[list[int]]:
    """The row's given turns (``forced_turns``: token ids or a text per policy turn), or none."""
    return sample.get("forced_turns") or []


def _prompt_parts(enc: dict, counts: torch.Tensor, patch_size: int) -> list[dict[str, Any]]:
    """Per prompt row: unpadded ids and mm types, and each image's pixel rows, grid and model frame."""
    grids = enc.get("image_grid_thw")
    rows = list(enc["pixel_values"].split(grids.prod(-1).tolist())) if grids is not None else []
    start, parts = 0, []
    for b, n in enumerate(counts.tolist()):
        keep = enc["attention_mask"][b].bool()
        mm = enc["mm_token_type_ids"][b][keep].tolist() if "mm_token_type_ids" in enc else []
        g = [grids[i : i + 1] for i in range(start, start + n)] if grids is not None else []
        parts.append(
            {
                "ids": enc["input_ids"][b][keep].tolist(),
                "mm": mm if mm else [0] * int(keep.sum()),
                "has_mm": "mm_token_type_ids" in enc,
                "pixels": rows[start : start + n],
                "grids": g,
                "frames": [tuple(f) for f in model_image_sizes(torch.cat(g), patch_size)] if g else [],
            }
        )
        start += n
    return parts
