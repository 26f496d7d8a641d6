"""One JSON POST with timeouts, retries and errors that name the URL (the rollout server's client).

Standard library only (``urllib``), as the HTTP judge: no ``openai`` or ``requests`` dependency. Unlike a judge,
a rollout cannot be scored with a default when its request fails, so a request that still fails after its
retries raises :class:`ServerError`, whose message names the URL, the attempts and the server's answer.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from typing import Any


class ServerError(RuntimeError):
    """The rollout server could not be reached or refused a request; the message names the URL."""


class _Retryable(Exception):
    """A timeout, a refused or dropped connection, a 5xx or 429 answer: worth another try."""


def post_json(
    url: str,
    body: dict[str, Any],
    timeout_s: float,
    retries: int = 2,
    backoff_s: float = 1.0,
    api_key_env: str | None = None,
    expect_json: bool = True,
) -> dict[str, Any]:
    """POST ``body`` to ``url`` and return the decoded JSON answer (``{"text": ...}`` for a plain-text answer
    when not ``expect_json``: vLLM's adapter endpoints answer ``Success: ...`` in plain text).

    Timeouts, connection failures, 5xx and 429 answers are retried ``retries`` times after ``backoff_s * 2**k``
    seconds; any other HTTP error (4xx: an unknown model or adapter name, a field the server rejects) is not,
    since asking again gets the same answer.

    Raises:
        ServerError: the last failure, naming ``url``, the number of attempts and the server's message.
    """
    data = json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(api_key_env) if api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            return _post_once(url, data, headers, timeout_s, expect_json)
        except _Retryable as exc:
            error = str(exc)
    raise ServerError(f"rollout server {url}: {error} (after {retries + 1} attempts)")


def _post_once(url: str, data: bytes, headers: dict[str, str], timeout_s: float, expect_json: bool) -> dict[str, Any]:
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            payload = answer.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace")
        if exc.code >= 500 or exc.code == 429:
            raise _Retryable(f"HTTP {exc.code}: {detail}") from exc
        raise ServerError(f"rollout server {url}: HTTP {exc.code}: {detail}") from exc
    except TimeoutError as exc:
        raise _Retryable(f"no answer within timeout_s={timeout_s} s") from exc
    except urllib.error.URLError as exc:  # refused, DNS, a timeout while connecting
        raise _Retryable(f"cannot reach the server ({exc.reason})") from exc
    except (ConnectionError, HTTPException) as exc:  # reset or dropped mid-answer
        raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
    try:
        return json.loads(payload) if payload.strip() else {}
    except json.JSONDecodeError as exc:
        if not expect_json:
            return {"text": payload.decode("utf-8", "replace")}
        raise ServerError(f"rollout server {url}: the answer is not JSON: {payload[:200]!r}") from exc
