"""`evaluate --judge openai:MODEL --judge-url URL` against a real OpenAI-compatible server: transformers'
own `transformers serve` (FastAPI), started here on 127.0.0.1 with the bundled SmolLM2 on CPU.

A 135M model does not write Cherry's score line on its own (it echoes the prompt), so the served folder's
chat template shows it one demonstration exchange first (few-shot, in the template): the judge client
sends Cherry's system and user messages unchanged. Rate limits, server errors, a refused key and
unreadable answers come from a small stdlib proxy in front of that server: it answers some requests
itself (429, 503, 401) and forwards the rest, the answers always being the real server's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import miwv
from catalog.db import execute
from scoring.judge import CRITERIA, PROMPT_HASH, SYSTEM, TEMPLATE, parse_score
from tests.conftest import CliRun, write_jsonl
from tests.test_evaluate import dolly, two_lora_runs

pytestmark = pytest.mark.slow  # starts an inference server, loads SmolLM2 and two adapters

SERVED = "judge"  # the served folder's name: the model name the server knows it by
STARTUP = 180  # seconds the server may take to load SmolLM2 (a busy 2-core machine)
DEMO = TEMPLATE.format(question="What is 3 + 4?", answer_1="3 + 4 = 7.", answer_2="It is 12.", criteria=CRITERIA)
CHAT_TEMPLATE = (
    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{DEMO}<|im_end|>\n"
    "<|im_start|>assistant\n9 2<|im_end|>\n"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def served_folder(root: Path) -> Path:
    """SmolLM2's converted folder (links to its files) with the demonstrating chat template."""
    from scoring.models import resolve_model

    model = resolve_model("smollm2-135m").path
    folder = root / SERVED
    folder.mkdir()
    for file in model.iterdir():
        if file.name != "chat_template.jinja":
            (folder / file.name).symlink_to(file)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def starting(tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`transformers serve` started on a free port: its API base URL, process and log. Killed at the end."""
    root = tmp_path_factory.mktemp("served")
    served_folder(root)
    port = free_port()
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", SERVED, "--device", "cpu"]
    command += ["--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)]
    with (root / "server.log").open("w") as log:
        process = subprocess.Popen(
            command, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"HF_HUB_OFFLINE": "1"}
        )
        try:
            yield f"http://127.0.0.1:{port}/v1", process, root / "server.log"
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def server(starting, runs) -> str:
    """The server's API base URL once it answers (SmolLM2 loads there while `runs` is built here)."""
    url, process, log = starting
    wait_until_up(url, process, log)
    return url


def wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"transformers serve did not answer in {STARTUP} s: {log.read_text()[-2000:]}")


class Proxy(ThreadingHTTPServer):
    """Between the judge and the real server: `answer(method, n)` (n: POSTs so far) gives a status to answer
    with itself (429 and 503 with Retry-After: 1) or 0 to forward; `max_tokens` replaces what is asked for."""

    def __init__(self, upstream: str, answer: Callable[[str, int], int], max_tokens: int | None = None) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream, self.answer, self.max_tokens = upstream, answer, max_tokens
        self.posts, self.answered, self.keys = 0, [], []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class ProxyHandler(BaseHTTPRequestHandler):
    server: Proxy

    def do_GET(self) -> None:
        self.relay("GET", None)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.max_tokens is not None:
            body["max_tokens"] = self.server.max_tokens
        self.server.posts += 1
        self.relay("POST", body)

    def relay(self, method: str, body: dict | None) -> None:
        status = self.server.answer(method, self.server.posts)
        self.server.keys.append(self.headers.get("Authorization"))
        self.server.answered.append(status)
        if status:
            payload = json.dumps({"error": {"message": f"proxy says {status}"}}).encode()
            headers = {"Retry-After": "1"} if status in (429, 503) else {}
        else:
            status, headers, payload = forward(self.server.upstream + self.path.removeprefix("/v1"), method, body)
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def forward(url: str, method: str, body: dict | None) -> tuple[int, dict, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, {}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {}, error.read()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[miwv.Catalog, Path]:
    """Two LoRA runs of SmolLM2 (as in test_evaluate) and a file of one test prompt."""
    root = tmp_path_factory.mktemp("judge_api")
    cat = two_lora_runs(root, 20, 5)
    write_jsonl(root / "one.jsonl", [{"instruction": dolly(slice(101, 102))[0]["instruction"]}])
    return cat, root / "one.jsonl"


def judgements(cat: miwv.Catalog, judge: str) -> list[dict]:
    with cat._store.read() as conn:
        rows = execute(
            conn, "SELECT a_first, verdict, raw, judge_prompt_hash FROM judgement WHERE judge = $j", {"j": judge}
        )
    return [dict(zip(("a_first", "verdict", "raw", "hash"), row, strict=True)) for row in rows]


def evaluate(
    cat: miwv.Catalog, prompts: Path, url: str | None, judge: str = f"openai:{SERVED}", **more
) -> miwv.Evaluated:
    return cat.evaluate([1, 2], testset=prompts, judge=judge, judge_url=url, max_new_tokens=8, **more)


def test_a_real_server_judges_both_orders_once(server, runs):
    cat, prompts = runs
    result = CliRun(cat.path).json(
        "evaluate", "--runs", "1,2", "--testset", prompts, "--judge", f"openai:{SERVED}", "--judge-url", server,
        "--max-new-tokens", 8,
    )  # fmt: skip
    judge = f"openai:{SERVED}@{server.split('/')[2]}"
    assert (result["judge"], result["generated"], result["asked"], result["unreadable"]) == (judge, 2, 2, 0)
    stored = judgements(cat, judge)
    assert sorted(row["a_first"] for row in stored) == [False, True] and {row["hash"] for row in stored} == {
        PROMPT_HASH
    }
    for row in stored:  # the verdict is Cherry's reading of the raw answer, from run a's side
        first, second = parse_score(row["raw"])
        shown = ("a", "b") if row["a_first"] else ("b", "a")
        assert row["verdict"] == ("tie" if first == second else shown[0] if first > second else shown[1])
    (pair,) = result["pairs"]
    assert pair["n"] == 2 and pair["wins"] + pair["ties"] + pair["losses"] == 2
    again = evaluate(cat, prompts, server)
    assert (again.generated, again.asked, again.unreadable) == (0, 0, 0) and len(judgements(cat, judge)) == 2
    with pytest.raises(miwv.UserError, match=rf"^judge endpoint {server} does not serve 'nope' \(it serves judge\)$"):
        evaluate(cat, prompts, server, judge="openai:nope")


def test_rate_limits_and_server_errors_are_retried_then_stop_keeping_what_was_answered(server, runs):
    cat, prompts = runs
    # POST 1: rate-limited; 2: answered; 3-7: server errors (the next question's 5 tries); then answered
    script = {1: 429, 3: 503, 4: 503, 5: 503, 6: 503, 7: 503}
    proxy = Proxy(server, lambda method, n: script.get(n, 0) if method == "POST" else 0)
    try:
        started = time.monotonic()
        with pytest.raises(
            miwv.UserError, match=r"^judge endpoint .* still answers HTTP 503 after 5 tries: run"
        ) as raised:
            evaluate(cat, prompts, proxy.url)
        assert "\n" not in str(raised.value) and time.monotonic() - started >= 1  # Retry-After honoured
        judge = f"openai:{SERVED}@127.0.0.1:{proxy.server_address[1]}"
        assert len(judgements(cat, judge)) == 1  # the answered one is kept
        again = evaluate(cat, prompts, proxy.url)
        assert (again.asked, again.unreadable) == (1, 0) and len(judgements(cat, judge)) == 2
        assert [s for s in proxy.answered if s] == [429, 503, 503, 503, 503, 503]
    finally:
        proxy.shutdown()


def test_unreadable_answers_are_asked_twice_then_left_out_for_a_rerun(server, runs):
    cat, prompts = runs
    proxy = Proxy(server, lambda method, n: 0, max_tokens=1)  # one token: never a two-score line
    try:
        result = evaluate(cat, prompts, proxy.url)
        assert (result.asked, result.unreadable, result.pairs) == (4, 2, [])
        assert judgements(cat, result.judge) == []
    finally:
        proxy.shutdown()


def test_unreachable_endpoint_and_refused_key_are_one_line_before_anything_runs(runs, monkeypatch, tmp_path):
    cat, _ = runs
    fresh = write_jsonl(tmp_path / "fresh.jsonl", [{"instruction": "Name a colour."}])  # would need generating
    before = cat.sql("SELECT count(*) AS n FROM generation").to_pylist()
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    result = CliRun(cat.path)(
        "evaluate", "--runs", "1,2", "--testset", fresh, "--judge", "openai:x", "--judge-url", url
    )
    assert result.exit_code == 1
    assert result.output.strip().endswith(
        f"judge endpoint {url} is unreachable (ConnectError): start the server or fix --judge-url"
    )
    proxy = Proxy("http://127.0.0.1:1", lambda method, n: 401)
    try:
        monkeypatch.setenv("MIWV_TEST_KEY", "wrong")
        with pytest.raises(miwv.UserError, match=r"refused the key in \$MIWV_TEST_KEY \(HTTP 401\): set MIWV_TEST_KEY"):
            evaluate(cat, fresh, proxy.url, judge_key_env="MIWV_TEST_KEY")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        with pytest.raises(miwv.UserError, match=r"refused no key \(\$OPENAI_API_KEY unset\)"):
            evaluate(cat, fresh, proxy.url)
        assert proxy.keys == ["Bearer wrong", None]  # the key is sent as a bearer token, none when unset
    finally:
        proxy.shutdown()
    with pytest.raises(miwv.UserError, match=r"^judge openai:x needs --judge-url"):
        evaluate(cat, fresh, None, judge="openai:x")
    with pytest.raises(miwv.UserError, match=r"^--judge-url is the endpoint of an openai:MODEL judge: give --judge"):
        cat.evaluate([1, 2], testset=fresh, judge_url=proxy.url)
    with pytest.raises(miwv.UserError, match=r"^--judge-url is for an openai:MODEL judge, not local:smollm2-135m"):
        cat.evaluate([1, 2], testset=fresh, judge="local:smollm2-135m", judge_url=proxy.url)
    assert cat.sql("SELECT count(*) AS n FROM generation").to_pylist() == before
