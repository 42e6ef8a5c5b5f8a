"""The explorer against a careless or hostile user (issue 21), over HTTP against a real `cli.py serve`
process: slow filters, filters that try to leave the page's own condition, cross-site requests, odd
hosts and parameters, spreadsheet formulas in downloads, and the server's start and stop."""

from __future__ import annotations

import csv
import html
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import duckdb
import pytest

from catalog import Catalog
from catalog.score import TemplateKey, register_scorer, start_run
from tests.conftest import CliRun, write_jsonl
from tests.web.conftest import MODEL, sql

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = f"/models/{MODEL}/samples"
# Billions of rows to hash: minutes of work unless something stops it.
SLOW = "(SELECT sum(hash(range)) FROM range(1000000000000)) <> 0"
FORMULAS = ['=HYPERLINK("http://x.example","y")', "+1+1", "-2+3", "@SUM(A1)", "\t=1+1", "\r=1+1"]


@dataclass
class Server:
    process: subprocess.Popen
    host: str
    port: int

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8")
        finally:
            conn.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def serve_process(catalog: Path, host: str, port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "cli.py", "--catalog", str(catalog), "serve", "--host", host, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


@pytest.fixture
def start_server() -> Iterator:
    """start(catalog, host=..., env=...) -> a running `cli.py serve`; each is stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(catalog: Path, host: str = "127.0.0.1", env: dict[str, str] | None = None) -> Server:
        port = free_port(host)
        process = serve_process(catalog, host, port, env)
        started.append(process)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()
            try:
                socket.create_connection((host, port), timeout=1).close()
                return Server(process, host, port)
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the server did not start")

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def copy_of(explored: Path, tmp_path: Path) -> Path:
    catalog = tmp_path / "catalog"
    shutil.copytree(explored, catalog)
    return catalog


@pytest.fixture(scope="module")
def shared(explored: Path, tmp_path_factory) -> Path:
    """A copy of the explored catalog with samples whose texts start like spreadsheet formulas."""
    root = tmp_path_factory.mktemp("hostile")
    catalog = copy_of(explored, root)
    rows = [{"instruction": text, "input": "", "output": text} for text in FORMULAS]
    CliRun(catalog)("ingest", str(write_jsonl(root / "formulas.jsonl", rows)), "--dataset", "formulas")
    return catalog


@pytest.fixture(scope="module")
def server(shared: Path) -> Iterator[Server]:
    port = free_port()
    process = serve_process(shared, "127.0.0.1", port)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the server did not start"
                time.sleep(0.2)
        yield Server(process, "127.0.0.1", port)
    finally:
        process.kill()
        process.communicate()


def error_of(text: str) -> str:
    found = re.search(r'<p class="error"[^>]*>(.*?)</p>', text, re.S)
    assert found, text[:500]
    return html.unescape(found.group(1))


def samples_url(**params: str) -> str:
    return f"{SAMPLES}?{urlencode({'scorer': '1', **params})}"


# ---- 1. a page never holds the catalog hostage -------------------------------------------------


def ingest(catalog: Path, tmp_path: Path, busy_timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """`cli.py ingest` of one new row, as a user would run it beside the explorer; (result, seconds)."""
    rows = write_jsonl(tmp_path / f"late_{time.monotonic_ns()}.jsonl", [{"instruction": "Late?", "output": "Yes."}])
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "cli.py", "--catalog", str(catalog), "ingest", str(rows), "--dataset", "late"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "MIWV_BUSY_TIMEOUT": str(busy_timeout)},
        timeout=300,
    )
    return result, time.monotonic() - began


def send_and_hang_up(server: Server, path: str, after: float) -> None:
    """Send a GET, then close the connection `after` seconds later without reading the answer."""
    with socket.create_connection((server.host, server.port)) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n\r\n".encode())
        time.sleep(after)


def in_background(call, *args) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call(*args)), daemon=True)
    thread.start()
    return thread, result


def test_a_slow_filter_stops_when_its_client_goes_and_a_writer_gets_in(
    explored: Path, tmp_path: Path, start_server
) -> None:
    catalog = copy_of(explored, tmp_path)
    server = start_server(catalog, env={"MIWV_WEB_TIMEOUT": "600"})  # no help from the time limit here
    send_and_hang_up(server, samples_url(where=SLOW), after=2)
    result, seconds = ingest(catalog, tmp_path, busy_timeout=30)
    assert result.returncode == 0, result.stderr
    assert seconds < 20
    assert server.get("/")[0] == 200  # and the explorer goes on


def test_a_slow_page_stops_at_the_time_limit_and_a_writer_waits_for_one_request_at_most(
    explored: Path, tmp_path: Path, start_server
) -> None:
    catalog = copy_of(explored, tmp_path)
    server = start_server(catalog, env={"MIWV_WEB_TIMEOUT": "3"})
    began = time.monotonic()
    thread, answers = in_background(server.get, samples_url(where=SLOW))
    time.sleep(1)
    result, _ = ingest(catalog, tmp_path, busy_timeout=15)
    thread.join(60)
    status, text = answers[0]
    assert status == 503 and time.monotonic() - began < 30
    assert "3 s" in error_of(text) and "MIWV_WEB_TIMEOUT" in error_of(text)
    assert result.returncode == 0, result.stderr


def test_a_writer_gets_in_while_slow_pages_keep_coming(explored: Path, tmp_path: Path, start_server) -> None:
    """Requests arriving back to back never keep the catalog busy for longer than one time limit."""
    catalog = copy_of(explored, tmp_path)
    server = start_server(catalog, env={"MIWV_WEB_TIMEOUT": "2"})
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            server.get(samples_url(where=SLOW))

    hammers = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
    for thread in hammers:
        thread.start()
    try:
        time.sleep(3)
        result, _ = ingest(catalog, tmp_path, busy_timeout=10)
    finally:
        stop.set()
    assert result.returncode == 0, result.stderr
    for thread in hammers:
        thread.join(30)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_server_stops_promptly_on_a_signal_during_a_slow_request(
    explored: Path, tmp_path: Path, start_server, signum: int
) -> None:
    server = start_server(copy_of(explored, tmp_path), env={"MIWV_WEB_TIMEOUT": "600"})
    in_background(server.get, samples_url(where=SLOW))
    time.sleep(2)
    began = time.monotonic()
    server.process.send_signal(signum)
    server.process.wait(timeout=60)
    assert time.monotonic() - began < 6
    assert "Traceback" not in server.process.stdout.read()


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port of this machine is another origin
        {"Origin": "http://attacker.example"},
        {"Referer": "http://attacker.example/page"},
        {"Origin": "http://127.0.0.1:1"},
    ],
)
@pytest.mark.parametrize("params", [{"where": "n_turns = 1"}, {"download": "samples", "format": "csv"}])
def test_filters_and_downloads_only_come_from_the_explorers_own_pages(
    server: Server, headers: dict[str, str], params: dict[str, str]
) -> None:
    status, text = server.get(samples_url(**params), headers)
    assert status == 403
    assert "another site" in error_of(text)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {"Origin": "http://127.0.0.1:{port}"}],
)
def test_the_explorers_own_requests_pass_the_origin_check(server: Server, headers: dict[str, str]) -> None:
    headers = {k: v.format(port=server.port) for k, v in headers.items()}
    assert server.get(samples_url(where="n_turns = 1"), headers)[0] == 200
    assert server.get(samples_url(download="samples", format="jsonl"), headers)[0] == 200
    assert server.get("/", {"Sec-Fetch-Site": "cross-site"})[0] == 200  # a plain page may be linked to


# ---- 2. a user condition is one expression -----------------------------------------------------

ESCAPES = {
    "1=1) OR (1=1": "closes a parenthesis",
    "1=1)) OR ((1=1": "closes a parenthesis",
    "true) UNION SELECT sample_id FROM samples --": "closes a parenthesis",
    "1=1 -- ) OR (1=1": "comment",
    "1=1 /* ) OR (1=1 */": "comment",
    "(1=1": "never closed",
    "s.user_text = 'x": "never closed",
    '"user_text = 1': "never closed",
    "1=1; SELECT 1": "holds a ;",
    "  ": "empty",
}
LEGIT = ["(n_turns = 1) AND (input <> '' OR user_text NOT LIKE '%)%')", "response <> ')(' AND ((true))"]


@pytest.mark.parametrize("where", [w for w in ESCAPES if w.strip()])  # an empty field is no filter
def test_a_web_filter_cannot_leave_its_parentheses(server: Server, shared: Path, where: str) -> None:
    status, text = server.get(samples_url(where=where, download="samples", format="jsonl"))
    assert status == 400, text[:300]
    message = error_of(text)
    assert "not one SQL condition" in message and ESCAPES[where] in message, message


@pytest.mark.parametrize("where", LEGIT)
def test_a_web_filter_with_parentheses_and_quoted_brackets_works(server: Server, shared: Path, where: str) -> None:
    status, text = server.get(samples_url(where=where, download="samples", format="jsonl"))
    assert status == 200, text[:300]
    rows = [json.loads(line) for line in text.splitlines()]
    expected = sql(shared, f"SELECT count(*) AS n FROM miwv_scores m JOIN samples s USING (sample_id) "
                           f"WHERE m.scorer_id = 1 AND ({where})")[0]["n"]  # fmt: skip
    assert len(rows) == expected > 0


@pytest.mark.parametrize("where", ESCAPES)
def test_select_where_cannot_leave_its_parentheses(shared: Path, where: str) -> None:
    before = sql(shared, "SELECT count(*) AS n FROM selection")[0]["n"]
    result = CliRun(shared)("select", "--model", MODEL, "--scorer", "1", "--top-k", "3", "--dataset", "dolly",
                            "--where", where)  # fmt: skip
    assert result.exit_code != 0, result.output
    assert "--where is not one SQL condition" in result.output and ESCAPES[where] in result.output
    assert "Traceback" not in result.output
    assert sql(shared, "SELECT count(*) AS n FROM selection")[0]["n"] == before


@pytest.mark.parametrize("where", LEGIT)
def test_select_where_with_parentheses_and_quoted_brackets_works(shared: Path, where: str) -> None:
    result = CliRun(shared)("select", "--model", MODEL, "--scorer", "1", "--top-k", "3", "--where", where, "--json")
    assert result.exit_code == 0, result.output


# ---- 5. one default scorer ---------------------------------------------------------------------


def test_a_failed_runs_empty_scorer_is_never_the_explorers_default(explored: Path, tmp_path: Path, start_server):
    catalog = copy_of(explored, tmp_path)
    store = Catalog(catalog)
    newest = max(r["scorer_id"] for r in sql(catalog, "SELECT scorer_id FROM scorer WHERE scorer_id IN "
                                                      "(SELECT scorer_id FROM zero_shot_loss)"))  # fmt: skip
    # What a run stopped before its first commit leaves: a newer scorer of the model, with a run and no losses.
    empty = register_scorer(store, MODEL, "elsewhere.gguf", "f" * 64, TemplateKey("chat", 2, "c0ffee"), 64, "float32")
    start_run(store, empty.scorer_id, 1, "cpu", 10, 10, 1)
    server = start_server(catalog)
    for path in (f"/models/{MODEL}", SAMPLES):
        status, text = server.get(path)
        assert status == 200
        assert f'?scorer={newest}&amp;embedder=1">{MODEL}</a>' in text or f"scorer {newest} " in text, path
        assert f'name="scorer" value="{empty.scorer_id}"' not in text
    page = server.get("/compare")[1]
    assert re.search(rf'<option value="{empty.scorer_id}"[^>]* selected', page) is None
    report = CliRun(catalog).json("report", "--model", MODEL, "--out", str(tmp_path / "report"))
    assert report["scorer"].startswith(f"scorer {newest}:")  # the rule `report` keeps


# ---- 6. loopback hosts -------------------------------------------------------------------------


def test_a_server_on_another_loopback_address_keeps_the_host_check(shared: Path, start_server) -> None:
    server = start_server(shared, host="127.0.0.2")
    assert server.get("/")[0] == 200
    assert server.get("/", {"Host": f"attacker.example:{server.port}"})[0] == 400
    assert server.get("/", {"Host": f"localhost:{server.port}"})[0] == 200


def test_a_server_on_ipv6_loopback_answers_its_own_requests(shared: Path, start_server) -> None:
    try:
        free_port("::1")
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    server = start_server(shared, host="::1")
    assert server.get("/")[0] == 200
    assert server.get("/", {"Host": f"attacker.example:{server.port}"})[0] == 400


# ---- 7. spreadsheet formulas in CSV downloads -------------------------------------------------


def test_csv_downloads_neutralise_formulas(server: Server, shared: Path) -> None:
    ids = sql(shared, "SELECT sample_id, user_text FROM samples WHERE list_contains(datasets, 'formulas')")
    assert {r["user_text"] for r in ids} == set(FORMULAS)
    for row in ids:
        status, text = server.get(f"/samples/{row['sample_id']}?download=sample&format=csv")
        assert status == 200
        cells = next(csv.DictReader(io.StringIO(text, newline="")))
        assert cells["user_text"] == "'" + row["user_text"], cells["user_text"]
        assert cells["response"] == "'" + row["user_text"]
        jsonl = server.get(f"/samples/{row['sample_id']}?download=sample&format=jsonl")[1]
        assert json.loads(jsonl)["user_text"] == row["user_text"]  # JSONL stays exact
    scores = server.get(samples_url(download="samples", format="csv"))[1]
    numbers = [r["miwv"] for r in csv.DictReader(io.StringIO(scores, newline="")) if r["miwv"]]
    assert any(n.startswith("-") for n in numbers)  # numbers are numbers, not text to neutralise


# ---- 8. parameters that make no sense ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (samples_url(per_page="0"), "per_page must be between 1 and 500"),
        (samples_url(per_page="-1"), "per_page must be between 1 and 500"),
        (samples_url(per_page="501"), "per_page must be between 1 and 500"),
        (samples_url(per_page="abc"), "per_page must be a whole number"),
        (samples_url(download="bogus"), "no table 'bogus'"),
        ("/?download=bogus", "no table 'bogus'"),
        (samples_url(download="samples", format="xlsx"), "format must be csv or jsonl"),
        ("/?download=datasets&format=bogus", "format must be csv or jsonl"),
        (samples_url(page="0"), "unknown parameter 'page'"),
        ("/?page=2", "unknown parameter 'page'"),
        ("/compare?a=1&b=2&top=0", "top must be at least 1"),
        (f"/models/{MODEL}?scorer=abc", "scorer must be a whole number"),
    ],
)
def test_parameters_that_make_no_sense_are_a_clear_400(server: Server, path: str, message: str) -> None:
    status, text = server.get(path)
    assert status == 400, (path, status)
    assert message in error_of(text)


# ---- 22. serve's own messages ------------------------------------------------------------------


def test_serve_on_a_foreign_duckdb_file_gives_the_right_advice(tmp_path: Path) -> None:
    folder = tmp_path / "foreign"
    folder.mkdir()
    duckdb.connect(str(folder / "catalog.duckdb")).execute("CREATE TABLE orders (id INTEGER)").close()
    result = CliRun(folder)("serve", "--port", str(free_port()))
    assert result.exit_code == 1
    assert "is not a miwv catalog" in result.output and "choose another --catalog" in result.output
    assert "upgrade" not in result.output


def test_serve_on_a_port_in_use_fails_in_one_line_and_says_serving_only_once_bound(shared: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = serve_process(shared, "127.0.0.1", port)
        output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "serving" not in output and "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0], output
