"""A real OpenAI-compatible chat-completions server for the judge tests: a tiny random transformers LM behind
stdlib ``http.server``, on 127.0.0.1 and a free port.

It can be told to fail its first k requests with HTTP 500, to delay some requests (so client timeouts happen
for real), or to answer with a fixed reply instead of the model's (so the happy path can be checked against
known verdicts); it records every request body and header and the most requests it ever had in flight.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from vrl.models.tiny import build_tiny_tokenizer


def tiny_causal_lm(seed: int = 0):
    """(model, tokenizer): a 2-layer, 64-wide Qwen2 causal LM with random weights and vrl's offline tokenizer."""
    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def greedy_chat(model, tokenizer, messages: list[dict], max_tokens: int) -> str:
    """What the server answers: the chat template, then greedy decoding of the new tokens."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, do_sample=False, max_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def first_token_logprobs(model, tokenizer, messages: list[dict]) -> list[tuple[str, float]]:
    """Every vocabulary token's log-probability as the reply's first token, most likely first (what an OpenAI
    server's ``top_logprobs`` lists, uncut)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        lp = torch.log_softmax(model(**ids).logits[0, -1].float(), dim=-1)
    order = torch.argsort(lp, descending=True).tolist()
    return [(tokenizer.decode([i]), float(lp[i])) for i in order]


class ChatServer:
    """``with ChatServer(model, tokenizer) as server: HTTPJudge(server.url, ...)``.

    Args:
        model, tokenizer: what answers (see :func:`tiny_causal_lm`).
        max_tokens_cap: generate at most this many tokens whatever the request asks (keeps CPU tests fast).
        fail_first: answer the first k requests with HTTP 500.
        delay_s: sleep this long before answering a delayed request (outside the model lock, so delayed
            requests overlap and the in-flight count is meaningful).
        delay_requests: how many of the first requests are delayed; None delays every request.
        reply: a fixed reply text instead of the model's.
        logprobs: fixed ``top_logprobs`` pairs instead of the model's (for requests with ``logprobs: true``).
    """

    def __init__(
        self,
        model,
        tokenizer,
        max_tokens_cap: int = 8,
        fail_first: int = 0,
        delay_s: float = 0.0,
        delay_requests: int | None = None,
        reply: str | None = None,
        logprobs: list[tuple[str, float]] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.max_tokens_cap = model, tokenizer, max_tokens_cap
        self.fail_first, self.delay_s, self.delay_requests, self.reply = fail_first, delay_s, delay_requests, reply
        self.logprobs = logprobs
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = self.requests = 0
        self._lock, self._model_lock = threading.Lock(), threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def _answer(self, body: dict) -> str:
        if self.reply is not None:
            return self.reply
        with self._model_lock:  # one generate at a time: the tiny model is shared by the handler threads
            return greedy_chat(
                self.model, self.tokenizer, body["messages"], min(body["max_tokens"], self.max_tokens_cap)
            )

    def _top_logprobs(self, body: dict) -> list[dict]:
        if self.logprobs is not None:
            pairs = self.logprobs
        else:
            with self._model_lock:
                pairs = first_token_logprobs(self.model, self.tokenizer, body["messages"])
        return [{"token": t, "logprob": lp} for t, lp in pairs[: body.get("top_logprobs", 0)]]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    index = server.requests
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                self._counted = True
                try:
                    self._serve(index, body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                    pass
                finally:
                    self._leave()

            def _leave(self) -> None:
                # Leave the in-flight count *before* the reply is written: once the client has the reply it may
                # send its next request, which could otherwise be counted while this thread is still in its
                # `finally` (a cap of 2 was once measured as 3 this way).
                if getattr(self, "_counted", False):
                    self._counted = False
                    with server._lock:
                        server.in_flight -= 1

            def _serve(self, index: int, body: dict) -> None:
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": f"no route {self.path}"})
                if server.delay_requests is None or index < server.delay_requests:
                    time.sleep(server.delay_s)
                if index < server.fail_first:
                    return self._send(500, {"error": "injected failure"})
                content = server._answer(body)
                message = {"role": "assistant", "content": content}
                choice = {"index": 0, "message": message, "finish_reason": "length"}
                if body.get("logprobs"):
                    top = server._top_logprobs(body)
                    first = {"token": top[0]["token"] if top else "", "logprob": 0.0, "top_logprobs": top}
                    choice["logprobs"] = {"content": [first]}
                self._send(200, {"object": "chat.completion", "model": body["model"], "choices": [choice]})

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self._leave()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
