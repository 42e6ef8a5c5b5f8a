"""Pairwise judging through any OpenAI-compatible chat-completions endpoint, under Cherry LLM's prompt.

The judge sees Cherry's system and user messages (scoring.judge) at temperature 0, answers in free
text, and its answer is stored as it came; the verdict is Cherry's parse of its first line (None
when that line is not two scores: scoring.evaluate asks once more, then stores nothing for it).

The endpoint is checked before anything else runs (GET /models): an unreachable server, a refused
key or a model it does not serve is one line naming the URL or the key's variable, before a model
loads. Rate limits (429) and server errors (5xx) are retried with backoff, honouring Retry-After,
a bounded number of times. Only httpx is used: no vendor client library at run time.
"""

from __future__ import annotations

import email.utils
import os
import time
from urllib.parse import urlsplit

import httpx

from catalog.errors import UserError
from scoring.judge import API, CRITERIA, KEY_ENV, SYSTEM, TEMPLATE, Review, verdict

MAX_TOKENS = 64  # the score line comes first; the start of the explanation is kept with it
ATTEMPTS = 5  # tries of one request while the endpoint answers 429 / 5xx or drops the connection
MAX_WAIT = 60.0  # seconds: a longer Retry-After (a spent quota) ends the job with a message instead
TIMEOUT = httpx.Timeout(300.0, connect=10.0)  # a slow local server may take minutes to answer


class ApiJudge:
    """A model behind an OpenAI-compatible endpoint, judging under Cherry's prompt.

    Args:
        spec: "openai:" and the model name the endpoint serves.
        url: the API base, e.g. http://127.0.0.1:8000/v1 (chat completions at {url}/chat/completions).
        key_env: the environment variable holding the key (sent as a bearer token; none for a local server).
    """

    def __init__(self, spec: str, url: str | None, key_env: str = KEY_ENV) -> None:
        self.model = spec[len(API) :]
        if not spec.startswith(API) or not self.model:
            raise UserError(f"judge {spec!r} is not openai:MODEL (a model the endpoint serves)")
        if not url:
            raise UserError(f"judge {spec} needs --judge-url, the endpoint's base URL (http://HOST:PORT/v1)")
        self.url, self.key_env = url.rstrip("/"), key_env
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"judge URL {url!r} is not http(s)://HOST[:PORT]/PATH")
        self.name = f"{API}{self.model}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        key = os.environ.get(key_env)
        self.client = httpx.Client(headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=TIMEOUT)
        self._check_model()

    def review(self, question: str, first: str, second: str) -> Review:
        """The judge's answer for the two answers shown in this order, and Cherry's verdict of it."""
        user = TEMPLATE.format(question=question, answer_1=first, answer_2=second, criteria=CRITERIA)
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        }
        raw = self._content(self._request("POST", "/chat/completions", body))
        return Review(raw, verdict(raw))

    def _content(self, answer: dict) -> str:
        """The answer's text ("" when it has none, e.g. a refusal); a reply of another shape is the server's fault."""
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = 0
        if content is not None and not isinstance(content, str):
            raise UserError(f"judge endpoint {self.url} answered something that is not a chat completion")
        return content or ""

    def _check_model(self) -> None:
        """Reach the endpoint and see that it serves the model, before any work starts."""
        listing = self._request("GET", "/models")
        data = listing.get("data") if isinstance(listing, dict) else None
        served = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
        if served and self.model not in served:
            names = ", ".join(map(str, served[:5])) + (", ..." if len(served) > 5 else "")
            raise UserError(f"judge endpoint {self.url} does not serve {self.model!r} (it serves {names})")

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON answer to one request, retried on 429, 5xx and dropped connections."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = self.client.request(method, self.url + path, json=body)
            except httpx.TransportError as error:
                if attempt == 1 and path == "/models":  # nothing answers there: say so at once
                    raise UserError(
                        f"judge endpoint {self.url} is unreachable ({type(error).__name__}): start the server "
                        "or fix --judge-url"
                    ) from None
                problem, wait = type(error).__name__, _backoff(attempt)
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return self._answer(method, path, response)
                problem, wait = f"HTTP {response.status_code}", _retry_after(response, attempt)
                if wait > MAX_WAIT:
                    raise UserError(
                        f"judge endpoint {self.url} asks to wait {wait:.0f} s ({problem}): run evaluate again "
                        "later; the judgements stored so far are kept"
                    )
            if attempt < ATTEMPTS:
                time.sleep(wait)
        raise UserError(
            f"judge endpoint {self.url} still answers {problem} after {ATTEMPTS} tries: run evaluate again "
            "later; the judgements stored so far are kept"
        )

    def _answer(self, method: str, path: str, response: httpx.Response) -> dict:
        """The JSON of a final answer; a refused key or request is one line naming what to fix."""
        if response.status_code in (401, 403):
            held = f"the key in ${self.key_env}" if os.environ.get(self.key_env) else f"no key (${self.key_env} unset)"
            raise UserError(
                f"judge endpoint {self.url} refused {held} (HTTP {response.status_code}): set {self.key_env} to a "
                "valid key, or name another variable with --judge-key-env"
            )
        if response.is_error:
            detail = " ".join(response.text.split())[:200]
            hint = " (is --judge-url the API base, often ending in /v1?)" if response.status_code == 404 else ""
            raise UserError(
                f"judge endpoint {self.url} answered HTTP {response.status_code} to {method} {path}{hint}: {detail}"
            )
        try:
            return response.json()
        except ValueError:
            raise UserError(
                f"judge endpoint {self.url} answered {method} {path} with something that is not JSON"
            ) from None


def _retry_after(response: httpx.Response, attempt: int) -> float:
    """The server's Retry-After (seconds or an HTTP date), else exponential backoff."""
    value = response.headers.get("retry-after", "").strip()
    if value.replace(".", "", 1).isdigit():
        return float(value)
    if value:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            pass  # neither form: back off as if it were absent
    return _backoff(attempt)


def _backoff(attempt: int) -> float:
    """1, 2, 4, 8 ... seconds, capped at 30."""
    return min(30.0, 2.0 ** (attempt - 1))
