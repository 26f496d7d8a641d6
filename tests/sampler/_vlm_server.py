"""A stand-in for ``vllm serve`` on 127.0.0.1: a tiny real Qwen2.5-VL behind stdlib ``http.server``, speaking the
subset of vLLM's OpenAI protocol that ``vrl.sampler.openai_server`` relies on.

``POST /v1/chat/completions``: messages with ``image_url`` data URLs are turned back into PIL images and rendered
with the processor's own chat template (as vLLM renders a request with the model's HF processor), generated with
``n`` samples under the request's ``seed``; the answer carries ``prompt_token_ids``, ``choices[i].token_ids`` and
``choices[i].logprobs.content[t].{token: "token_id:<id>", logprob}``: processed log-probs (temperature applied,
``logit_bias`` of -100 or less treated as a ban, as vLLM's ``--logprobs-mode processed_logprobs`` reports them).
``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` (PEFT adapters from disk, answered in plain text
like vLLM; a name loaded twice is a 400) and ``POST /update_weights_from_disk`` (SGLang's full reload).

Failure injection: the first ``fail_first`` chat requests answer HTTP 500; the first ``delay_requests`` (None: all)
sleep ``delay_s`` first; ``token_ids=False`` leaves out ``prompt_token_ids`` and ``token_ids`` (an older vLLM).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from PIL import Image


class VLMServer:
    """``with VLMServer(vlm) as server: sampler.base_url = server.url``.

    Args:
        vlm: the served ``vrl.models.loading.VLM`` without LoRA (its model is the base adapters load onto).
        served_name: the base model's name in requests.
        processor: render prompts with this processor instead of the vlm's (a server configured differently).
    """

    def __init__(
        self,
        vlm,
        served_name: str = "tiny-vl",
        processor=None,
        fail_first: int = 0,
        delay_s: float = 0.0,
        delay_requests: int | None = None,
        token_ids: bool = True,
    ) -> None:
        self.base, self.processor = vlm.model.eval(), processor or vlm.processor
        self.served_name, self.fail_first, self.token_ids = served_name, fail_first, token_ids
        self.delay_s, self.delay_requests = delay_s, delay_requests
        self.adapters: dict[str, torch.nn.Module] = {}
        self.calls: list[tuple[str, dict]] = []  # (path, body) of every request, in arrival order
        self.chat_requests = 0
        self._lock, self._model_lock = threading.Lock(), threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.root = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.url = self.root + "/v1"

    def __enter__(self) -> VLMServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def bodies(self, path: str) -> list[dict]:
        return [b for p, b in self.calls if p == path]

    # ------------------------------------------------------------------ routes
    def chat(self, body: dict) -> tuple[int, dict | str]:
        name = body["model"]
        model = self.base if name == self.served_name else self.adapters.get(name)
        if model is None:
            return 404, {"error": {"message": f"The model `{name}` does not exist.", "code": 404}}
        images, messages = _decode(body["messages"])
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = self.processor(text=[text], return_tensors="pt", **({"images": images} if images else {}))
        n, temperature = int(body.get("n", 1)), float(body.get("temperature", 1.0))
        banned = sorted(int(k) for k, v in (body.get("logit_bias") or {}).items() if v <= -100)
        with self._model_lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(body.get("seed", 0)))
            ids, logprobs = _sample(model, self.processor.tokenizer, enc, n, temperature, body, banned)
        prompt = enc["input_ids"][0].tolist()
        eos = self.processor.tokenizer.eos_token_id
        choices = []
        for i, (tokens, lps) in enumerate(zip(ids, logprobs)):
            content = [
                {"token": f"token_id:{t}", "logprob": lp, "bytes": None, "top_logprobs": []}
                for t, lp in zip(tokens, lps)
            ]
            choice = {
                "index": i,
                "message": {"role": "assistant", "content": self.processor.tokenizer.decode(tokens)},
                "logprobs": {"content": content},
                "finish_reason": "stop" if tokens and tokens[-1] == eos else "length",
            }
            if self.token_ids:
                choice["token_ids"] = tokens
            choices.append(choice)
        answer = {"id": "chatcmpl-0", "object": "chat.completion", "model": name, "choices": choices}
        if self.token_ids:
            answer["prompt_token_ids"] = prompt
        return 200, answer

    def load_lora(self, body: dict) -> tuple[int, dict | str]:
        from peft import PeftModel

        name = body["lora_name"]
        if name in self.adapters:
            return 400, {"error": {"message": f"The lora adapter '{name}' has already been loaded.", "code": 400}}
        with self._model_lock:
            self.adapters[name] = PeftModel.from_pretrained(copy.deepcopy(self.base), body["lora_path"]).eval()
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def unload_lora(self, body: dict) -> tuple[int, dict | str]:
        if self.adapters.pop(body["lora_name"], None) is None:
            return 404, {"error": {"message": f"The lora adapter '{body['lora_name']}' cannot be found.", "code": 404}}
        return 200, f"Success: LoRA adapter '{body['lora_name']}' removed successfully."

    def update_weights(self, body: dict) -> tuple[int, dict | str]:
        from vrl.models.loading import load_vlm

        with self._model_lock:
            self.base = load_vlm(body["model_path"]).model.eval()
        return 200, {"success": True, "message": "Succeeded to update model weights."}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        routes = {
            "/v1/chat/completions": self.chat,
            "/v1/load_lora_adapter": self.load_lora,
            "/v1/unload_lora_adapter": self.unload_lora,
            "/update_weights_from_disk": self.update_weights,
        }

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.calls.append((self.path, body))
                    index = server.chat_requests
                    server.chat_requests += self.path == "/v1/chat/completions"
                try:
                    if self.path == "/v1/chat/completions":
                        if server.delay_requests is None or index < server.delay_requests:
                            time.sleep(server.delay_s)
                        if index < server.fail_first:
                            return self._send(500, {"error": {"message": "injected failure"}})
                    route = routes.get(self.path)
                    self._send(*(route(body) if route else (404, {"error": f"no route {self.path}"})))
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                    pass

            def _send(self, code: int, payload: dict | str) -> None:
                text = isinstance(payload, str)
                data = payload.encode() if text else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _decode(messages: list[dict]) -> tuple[list[Image.Image], list[dict]]:
    """OpenAI messages -> (images in order, processor messages with ``{"type": "image"}`` parts in place)."""
    images, out = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = []
        for part in content:
            if part["type"] == "image_url":
                data = part["image_url"]["url"].split(",", 1)[1]
                images.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": part["text"]})
        out.append({"role": message["role"], "content": parts})
    return images, out


@torch.no_grad()
def _sample(model, tok, enc, n: int, temperature: float, body: dict, banned: list[int]):
    """n responses (token ids up to and including EOS) and their processed log-probs."""
    inputs = {k: v.repeat(n, *[1] * (v.dim() - 1)) for k, v in enc.items()}
    kwargs = dict(
        max_new_tokens=int(body["max_tokens"]),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        suppress_tokens=banned or None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=body.get("top_p", 1.0), top_k=body.get("top_k"))
    else:
        kwargs.update(do_sample=False)
    out = model.generate(**inputs, **kwargs)
    response = out.sequences[:, enc["input_ids"].shape[1] :]
    logits = torch.stack(out.logits, dim=1).float() / (temperature if temperature > 0 else 1.0)
    if banned:
        logits = logits.index_fill(-1, torch.tensor(banned), -1e9)
    lps = torch.log_softmax(logits, -1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
    ids, logprobs = [], []
    for row, lp in zip(response.tolist(), lps.tolist()):
        cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        ids.append(row[:cut])
        logprobs.append(lp[:cut])
    return ids, logprobs
