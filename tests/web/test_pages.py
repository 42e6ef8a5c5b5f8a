"""Every route of the web explorer over HTTP (Starlette's TestClient), checked against SQL."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from catalog import Catalog
from tests.conftest import CliRun
from tests.web.conftest import MODEL, run_cli, sql
from web.app import create_app

pytestmark = pytest.mark.slow
SAMPLES = f"/models/{MODEL}/samples"


@pytest.fixture(scope="module")
def client(explored: Path) -> TestClient:
    return TestClient(create_app(Catalog(explored), ["testserver"]))


def jsonl(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def ids_in_order(text: str) -> list[int]:
    """Sample ids in the order the samples table lists them."""
    body = text.split('<table class="samples">', 1)[1].split("</table>", 1)[0]
    return [int(m) for m in re.findall(r'<td><a class="id" href="/samples/(-?\d+)">', body)]


def test_overview_shows_the_status_facts(client: TestClient, explored: Path) -> None:
    page = client.get("/")
    assert page.status_code == 200
    for row in sql(explored, "SELECT dataset, count(*) AS n FROM membership GROUP BY 1"):
        assert f"<td>{row['dataset']}</td>" in page.text
    total = sql(explored, "SELECT count(*) AS n FROM samples")[0]["n"]
    assert f"<strong>{total}</strong> samples" in page.text
    scores = jsonl(client.get("/?download=scores&format=jsonl"))
    assert {(r["scorer_id"], r["scored"]) for r in scores} == {
        (r["scorer_id"], r["n"])
        for r in sql(explored, "SELECT scorer_id, count_if(status = 'ok')::INTEGER AS n FROM miwv_scores GROUP BY 1")
    }
    runs = jsonl(client.get("/?download=score_runs&format=jsonl"))
    expected_runs = sql(explored, "SELECT run_id FROM score_run ORDER BY 1 DESC")
    assert [r["run_id"] for r in runs] == [r["run_id"] for r in expected_runs]


def test_every_response_carries_a_strict_csp(client: TestClient) -> None:
    for url in ("/", f"/models/{MODEL}", SAMPLES, "/selections", "/nowhere", "/static/app.js"):
        headers = client.get(url).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"


def test_only_requests_for_this_machine_are_served(explored: Path) -> None:
    local = TestClient(create_app(Catalog(explored)), base_url="http://127.0.0.1:8765")
    assert local.get("/").status_code == 200
    assert local.get("/", headers={"host": "attacker.example"}).status_code == 400


def test_model_page_summary_matches_sql(client: TestClient, explored: Path) -> None:
    page = client.get(f"/models/{MODEL}?scorer=1")
    assert page.status_code == 200 and 'id="histogram"' in page.text and 'id="scatter"' in page.text
    summary = {r["dataset"]: r for r in jsonl(client.get(f"/models/{MODEL}?scorer=1&download=summary&format=jsonl"))}
    expected = sql(
        explored,
        "SELECT count(*) AS n, round(median(miwv), 4) AS median, round(avg((miwv > 0)::INT), 4) AS positive "
        "FROM miwv_scores WHERE scorer_id = 1 AND status = 'ok'",
    )[0]
    assert summary["(all)"]["scored"] == expected["n"] > 0
    assert summary["(all)"]["median"] == pytest.approx(expected["median"])
    assert summary["(all)"]["positive"] == pytest.approx(expected["positive"])
    bins = jsonl(client.get(f"/models/{MODEL}?scorer=1&download=histogram&format=jsonl"))
    per_dataset = sql(
        explored,
        "SELECT count(*) AS n FROM miwv_scores m JOIN samples s USING (sample_id), unnest(s.datasets) AS d(dataset) "
        "WHERE scorer_id = 1 AND status = 'ok'",
    )[0]["n"]
    assert sum(b["samples"] for b in bins) == per_dataset
    assert page.text.count('class="point"') == expected["n"]
    assert client.get(f"/models/{MODEL}?scorer=2").status_code == 200


def test_samples_first_page_is_the_sql_order(client: TestClient, explored: Path) -> None:
    page = client.get(SAMPLES + "?scorer=1")
    expected = sql(
        explored,
        "SELECT sample_id FROM miwv_scores WHERE scorer_id = 1 ORDER BY miwv DESC NULLS LAST, sample_id LIMIT 50",
    )
    assert ids_in_order(page.text) == [r["sample_id"] for r in expected]
    assert "FROM score_current m" in html.unescape(page.text)  # the statement that ran is on the page


def shown_statements(text: str) -> list[str]:
    """The SQL statements a page shows under its tables' "SQL" folds."""
    return [
        html.unescape(m)
        for m in re.findall(r'<details class="sql"><summary>SQL</summary>(.*?)<p class="hint">', text, re.S)
        for m in re.findall(r"<pre>(.*?)</pre>", m, re.S)
    ]


def test_the_sql_a_page_shows_runs_in_cli_sql_and_gives_its_rows(client: TestClient, explored: Path) -> None:
    page = client.get(SAMPLES + "?scorer=1&sort=zero_shot_loss&order=asc")
    ids = ids_in_order(page.text)
    page_sql, texts_sql, datasets_sql = shown_statements(page.text)
    assert [r["sample_id"] for r in sql(explored, page_sql)][:50] == ids
    assert sorted(r["sample_id"] for r in sql(explored, texts_sql)) == sorted(ids)
    assert sorted(r["sample_id"] for r in sql(explored, datasets_sql)) == sorted(ids)
    overview = client.get("/")
    for statement in shown_statements(overview.text):
        sql(explored, statement)  # every statement of the overview runs as shown


@pytest.mark.parametrize(
    ("sort", "order", "scorer"),
    [("miwv", "desc", 3), ("miwv", "asc", 3), ("n_response_tokens", "desc", 1), ("similarity", "asc", 1)],
)
def test_keyset_pages_walk_the_whole_order_both_ways(
    client: TestClient, explored: Path, sort: str, order: str, scorer: int
) -> None:
    # Scorer 3 (max length 96) leaves samples with NULL MIWV: they come last; response lengths tie.
    direction = "DESC" if order == "desc" else "ASC"
    expected = [
        r["sample_id"]
        for r in sql(
            explored,
            f"SELECT sample_id FROM miwv_scores WHERE scorer_id = {scorer} "
            f"ORDER BY {sort} {direction} NULLS LAST, sample_id",
        )
    ]
    url = f"{SAMPLES}?scorer={scorer}&sort={sort}&order={order}&per_page=4"
    forward, pages, next_url = [], [], url
    while next_url:
        page = client.get(next_url)
        pages.append(ids_in_order(page.text))
        forward += pages[-1]
        found = re.search(r'id="next" href="([^"]+)"', page.text)
        next_url = html.unescape(found.group(1)) if found else None
    assert forward == expected and len(pages) == -(-len(expected) // 4)
    backward, previous = [], re.search(r'id="previous" href="([^"]+)"', page.text)
    while previous:
        page = client.get(html.unescape(previous.group(1)))
        backward = ids_in_order(page.text) + backward
        previous = re.search(r'id="previous" href="([^"]+)"', page.text)
    assert backward + pages[-1] == expected


def test_filters_match_sql(client: TestClient, explored: Path) -> None:
    base = "FROM miwv_scores m JOIN samples s USING (sample_id) WHERE m.scorer_id = 1"
    order = "ORDER BY m.miwv DESC NULLS LAST, m.sample_id"
    cases = {
        "dataset=dolly": "list_contains(s.datasets, 'dolly')",
        "status=ok&miwv_min=-0.5&miwv_max=0.1": "m.status = 'ok' AND m.miwv BETWEEN -0.5 AND 0.1",
        "q=" + quote("PYTHON"): "(s.user_text ILIKE '%python%' OR s.response ILIKE '%python%')",
        "where=" + quote("n_turns = 1 AND s.input <> ''"): "s.input <> ''",
        "zero_shot_loss_min=2&one_shot_loss_max=2.5": "m.zero_shot_loss >= 2 AND m.one_shot_loss <= 2.5",
    }
    for params, condition in cases.items():
        expected = [r["sample_id"] for r in sql(explored, f"SELECT m.sample_id {base} AND {condition} {order}")]
        assert expected, params
        assert ids_in_order(client.get(f"{SAMPLES}?scorer=1&{params}").text) == expected, params


def test_a_bad_filter_is_a_clear_message_on_the_page(client: TestClient) -> None:
    page = client.get(f"{SAMPLES}?where=" + quote("no_such_column > 1"))
    assert page.status_code == 400
    message = html.unescape(re.search(r'<p class="error" id="filter-error">(.*?)</p>', page.text, re.S).group(1))
    assert "no_such_column > 1" in message and "not one SQL condition on the `samples` view" in message
    assert 'name="where"' in page.text  # the form is still there to fix it
    assert client.get(f"{SAMPLES}?miwv_min=abc").status_code == 400
    assert client.get(f"{SAMPLES}?sort=sample_text").status_code == 400
    assert client.get(f"{SAMPLES}?dataset=nope").status_code == 400


@pytest.mark.parametrize(
    "where",
    [
        "1 = 1; DELETE FROM sample",
        "1 = 1); DROP TABLE sample; SELECT (1",
        "sample_id IN (SELECT 1); INSERT INTO membership VALUES (1, 'x', 1, 1)",
    ],
)
def test_a_write_in_the_filter_is_refused(client: TestClient, explored: Path, where: str) -> None:
    before = sql(explored, "SELECT count(*) AS n FROM sample")[0]["n"]
    page = client.get(f"{SAMPLES}?where=" + quote(where))
    assert page.status_code == 400
    message = html.unescape(re.search(r'<p class="error" id="filter-error">(.*?)</p>', page.text, re.S).group(1))
    assert "is not one SQL condition on the `samples` view" in message
    assert sql(explored, "SELECT count(*) AS n FROM sample")[0]["n"] == before


def test_downloads_hold_every_matching_sample(client: TestClient, explored: Path) -> None:
    query = "SELECT sample_id, miwv, user_text FROM miwv_scores JOIN samples USING (sample_id) WHERE scorer_id = 1"
    expected = sql(explored, query + " ORDER BY miwv DESC NULLS LAST, sample_id")
    rows = jsonl(client.get(f"{SAMPLES}?scorer=1&per_page=3&download=samples&format=jsonl"))
    assert [(r["sample_id"], r["miwv"], r["user_text"]) for r in rows] == [
        (r["sample_id"], r["miwv"], r["user_text"]) for r in expected
    ]
    response = client.get(f"{SAMPLES}?scorer=1&download=samples&format=csv")
    assert response.headers["content-disposition"] == 'attachment; filename="samples.csv"'
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(r["sample_id"]) for r in table] == [r["sample_id"] for r in expected]
    assert json.loads(table[0]["datasets"])  # lists travel as JSON text
    assert client.get("/?download=nope").status_code == 400


def test_unknown_things_are_404(client: TestClient) -> None:
    for url in ("/models/no-such-model", "/models/no-such-model/samples", f"/models/{MODEL}?scorer=99",
                "/samples/12345", "/samples/not-a-number", "/selections/1/vs/99", "/selections/x/vs/1",
                "/compare?a=1&b=99", "/nowhere"):  # fmt: skip
        response = client.get(url)
        assert response.status_code == 404, url
        assert '<p class="error">' in response.text


def test_sample_page_shows_the_example_scores_ranks_and_inputs(client: TestClient, explored: Path) -> None:
    top = sql(
        explored,
        "SELECT sample_id, neighbour_id, similarity, miwv FROM miwv_scores WHERE scorer_id = 1 AND status = 'ok' "
        "ORDER BY miwv DESC, sample_id LIMIT 2",
    )[1]  # the second-highest MIWV: rank 2
    page = client.get(f"/samples/{top['sample_id']}")
    text = html.unescape(page.text)
    assert page.status_code == 200
    assert f'href="/samples/{top["neighbour_id"]}"' in page.text
    assert f"cosine {top['similarity']:.4f}" in text
    scored = sql(explored, "SELECT count(*) AS n FROM miwv_scores WHERE scorer_id = 1 AND status = 'ok'")[0]["n"]
    assert f"2 of {scored}" in text
    scores = jsonl(client.get(f"/samples/{top['sample_id']}?download=scores&format=jsonl"))
    assert {s["scorer_id"] for s in scores} >= {1}
    assert next(s for s in scores if s["scorer_id"] == 1)["miwv"] == pytest.approx(top["miwv"])
    # The zero-shot input as SmolLM2 saw it: its chat template, the scored tokens marked, and those
    # tokens spell the response exactly.
    assert "<|im_start|>user" in text and "<|im_start|>assistant" in text
    response = sql(explored, f"SELECT response FROM samples WHERE sample_id = {top['sample_id']}")[0]["response"]
    first_pass = page.text.split('class="tokens"', 2)[1]
    tokens = re.findall(r'<span class="scored"[^>]*>(.*?)</span>', first_pass, re.S)
    scored_text = "".join(html.unescape(t) for t in tokens)
    assert scored_text == response


def test_sample_text_is_escaped(client: TestClient, hostile_id: int) -> None:
    for url in (f"/samples/{hostile_id}", f"{SAMPLES}?scorer=1&dataset=hostile", f"/models/{MODEL}?scorer=1"):
        page = client.get(url)
        assert page.status_code == 200
        assert "window.__pwned" in page.text  # the text is there, as text
        assert "<script>window" not in page.text and "<img src=x" not in page.text and "<svg onload" not in page.text
        assert page.text.count("<script") == 1  # the page's own /static/app.js only


def test_selections_and_their_diff_match_sql(client: TestClient, explored: Path) -> None:
    listing = client.get("/selections")
    assert listing.status_code == 200 and "zero-shot-loss" in listing.text
    assert client.get("/selections?a=1&b=2", follow_redirects=False).headers["location"] == "/selections/1/vs/2"
    page = client.get("/selections/1/vs/2")
    members = "SELECT sample_id FROM selection_member WHERE selection_id = "
    counts = {
        "in-both": f"SELECT count(*) AS n FROM ({members}1 INTERSECT {members}2)",
        "only-a": f"SELECT count(*) AS n FROM ({members}1 EXCEPT {members}2)",
        "only-b": f"SELECT count(*) AS n FROM ({members}2 EXCEPT {members}1)",
    }
    for element, query in counts.items():
        assert f'id="{element}">{sql(explored, query)[0]["n"]}<' in page.text, element
    only_a = jsonl(client.get("/selections/1/vs/2?download=only_a&format=jsonl"))
    assert sorted(r["sample_id"] for r in only_a) == sorted(
        r["sample_id"] for r in sql(explored, f"{members}1 EXCEPT {members}2")
    )


def test_two_models_compared_on_one_pool(client: TestClient, explored: Path) -> None:
    page = client.get("/compare?a=1&b=2&top=3")
    assert page.status_code == 200
    summary = jsonl(client.get("/compare?a=1&b=2&top=3&download=summary&format=jsonl"))[0]
    example = sql(explored, Path("examples/compare_models.sql").read_text())
    pair = next(r for r in example if "(chat)" in r["model_a"] and "(alpaca)" in r["model_b"])
    assert summary["pool"] == pair["shared_samples"] > 0
    assert summary["spearman"] == pytest.approx(pair["spearman"], abs=1e-4)
    assert summary["pearson"] == pytest.approx(pair["pearson"], abs=1e-4)
    top = (
        "SELECT sample_id FROM miwv_scores WHERE scorer_id = {} AND status = 'ok' AND sample_id IN "
        "(SELECT sample_id FROM miwv_scores WHERE scorer_id = {} AND status = 'ok') "
        "ORDER BY miwv DESC, sample_id LIMIT 3"
    )
    overlap = sql(explored, f"SELECT count(*) AS n FROM (({top.format(1, 2)}) INTERSECT ({top.format(2, 1)}))")[0]["n"]
    assert summary["top_k_overlap"] == overlap
    assert client.get("/compare").status_code == 200


def test_pages_show_new_commits_without_a_restart(client: TestClient, explored: Path) -> None:
    before = client.get("/selections").text.count("<tr>")
    run_cli(explored, "select", "--strategy", "random", "--top-k", "3", "--seed", "7")
    assert client.get("/selections").text.count("<tr>") == before + 1
    newest = sql(explored, "SELECT max(selection_id) AS id FROM selection")[0]["id"]
    assert client.get(f"/selections/{newest}/vs/1").status_code == 200


def test_a_busy_catalog_says_so_and_then_recovers(explored: Path) -> None:
    client = TestClient(create_app(Catalog(explored, busy_timeout=0.5), ["testserver"]))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import duckdb, sys, time; c = duckdb.connect({str(explored / 'catalog.duckdb')!r}); "
         "print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = client.get("/selections")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        assert "The catalog is busy" in busy.text and 'http-equiv="refresh"' in busy.text
    finally:
        holder.communicate("")
    assert client.get("/selections").status_code == 200


def test_serve_refuses_a_missing_catalog(tmp_path: Path) -> None:
    result = CliRun(tmp_path / "none")("serve", "--port", "1")
    assert result.exit_code == 1 and "no catalog at" in result.output
