"""The web explorer with IFD beside MIWV (issue 18), over HTTP (Starlette's TestClient), checked
against computations in the test: the model page's IFD section, the samples list sorted and
filtered by ifd, ifd_ppl and response_loss, a sample's IFD beside its MIWV, the compare page's
agreement curve (MIWV vs MIWV of two scorers, MIWV vs IFD of one), and bad parameters (400).

A real catalog of 40 rows of ../shared/data with links and losses written by SQL (no model; see
tests/test_ifd_views.py): scorer 1 has response losses, scorer 2 has none, scorer 3 was scored
for IFD alone (a screen's `--metrics ifd`: zero-shot and response losses, no one-shot pass).
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from catalog import Catalog, db
from catalog.explore import SCREEN_PERCENTS
from tests.conftest import CliRun
from tests.test_ifd_views import (
    add_response_losses,
    check_agreement,
    check_ifd_figures,
    expected_agreement,
    expected_ifd,
    two_scorers,
)
from tests.test_lifecycle_views import MODEL
from web.app import create_app

SAMPLES = f"/models/{MODEL}/samples"


@dataclass(frozen=True)
class Scored:
    path: Path
    ids: list[int]  # current samples, in sample_id order: ids[0] too long for the response pass, ids[1] zero loss


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Scored:
    path = tmp_path_factory.mktemp("ifd_web") / "catalog"
    two_scorers(CliRun(path))
    store = Catalog(path)
    ids = add_response_losses(store, scorer=1)
    with store.write() as conn:  # scorer 3: IFD alone, its zero-shot losses drawn apart from scorer 1's
        db.execute(
            conn,
            f"""INSERT INTO scorer VALUES (3, '{MODEL}', 'SmolLM2.gguf', 'beef', 'alpaca', 512, 'float32', now(), 2,
                                           'c0ffee', NULL);
                INSERT INTO zero_shot_loss SELECT sample_id, 3, 'ok', 10 * loss, 10, loss, 100, 9, now()
                FROM (SELECT sample_id, 0.5 + 3 * (hash(sample_id) % 1000) / 1000 AS loss FROM samples)""",
        )
    add_response_losses(store, scorer=3, seed=5)
    return Scored(path, ids)


@pytest.fixture(scope="module")
def client(scored: Scored) -> TestClient:
    return TestClient(create_app(Catalog(scored.path), ["testserver"]))


def rows(scored: Scored, sql: str) -> list[dict]:
    with Catalog(scored.path).read() as conn:
        return db.records(conn, sql)


def jsonl(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def ids_in_order(text: str) -> list[int]:
    body = text.split('<table class="samples">', 1)[1].split("</table>", 1)[0]
    return [int(m) for m in re.findall(r'<td><a class="id" href="/samples/(-?\d+)">', body)]


def ifd_by_sample(scored: Scored, scorer: int) -> dict[int, dict]:
    """IFD, ifd_ppl and the response loss from the loss tables (not the view), where IFD is defined."""
    found = rows(
        scored,
        f"""SELECT z.sample_id, z.loss / r.loss AS ifd, exp(z.loss - r.loss) AS ifd_ppl, r.loss AS response_loss
            FROM zero_shot_loss z JOIN response_loss r USING (sample_id, scorer_id)
            WHERE scorer_id = {scorer} AND z.status = 'ok' AND r.status = 'ok' AND r.loss > 0""",
    )
    return {r["sample_id"]: r for r in found}


def miwv_by_sample(scored: Scored, scorer: int) -> dict[int, float]:
    found = rows(scored, f"SELECT sample_id, miwv FROM miwv_scores WHERE scorer_id = {scorer} AND status = 'ok'")
    return {r["sample_id"]: r["miwv"] for r in found}


def direct_curve(a: dict[int, float], b: dict[int, float], percent: float) -> list[tuple]:
    """(screen %, screened, top_k, kept) for A's ranking screening for B's top `percent`%, computed here."""
    pool = sorted(set(a) & set(b))
    count = len(pool)
    top_k = max(1, math.floor(count * percent / 100 + 0.5))
    by_a = sorted(pool, key=lambda i: (-a[i], i))
    top_b = set(sorted(pool, key=lambda i: (-b[i], i))[:top_k])
    curve = []
    for screen in SCREEN_PERCENTS:
        screened = max(1, math.floor(count * screen / 100 + 0.5))
        curve.append((screen, screened, top_k, len(set(by_a[:screened]) & top_b)))
    return curve


def test_the_model_page_shows_the_ifd_section_of_report(client, scored):
    page = client.get(f"/models/{MODEL}?scorer=1")
    assert page.status_code == 200 and 'id="ifd"' in page.text and "Cherry LLM keeps IFD ≤ 1" in page.text
    store = Catalog(scored.path)
    check_ifd_figures(jsonl(client.get(f"/models/{MODEL}?scorer=1&download=ifd&format=jsonl")), expected_ifd(store, 1))
    agreement = jsonl(client.get(f"/models/{MODEL}?scorer=1&download=agreement&format=jsonl"))[0]
    expected = expected_agreement(store, 1)
    check_agreement(agreement, expected)
    assert f'id="ifd-overlap">{expected["top_overlap"]} / {expected["top_k"]}<' in page.text
    assert f'id="ifd-spearman">{agreement["spearman"]:.3f}<' in page.text
    # A scorer without response losses: the page it always had.
    other = client.get(f"/models/{MODEL}?scorer=2")
    assert other.status_code == 200 and 'id="ifd"' not in other.text and "IFD" not in other.text
    assert client.get(f"/models/{MODEL}?scorer=2&download=ifd").status_code == 400


@pytest.mark.parametrize(("sort", "order"), [("ifd", "desc"), ("ifd_ppl", "asc"), ("response_loss", "desc")])
def test_samples_sort_by_ifd_columns_and_page_through(client, scored, sort, order):
    values = ifd_by_sample(scored, 1)
    if sort == "response_loss":  # a loss of 0 (IFD undefined) is still a response loss
        values[scored.ids[1]] = {"response_loss": 0.0}
    everyone = miwv_by_sample(scored, 1)
    sign = -1 if order == "desc" else 1

    def place(i: int) -> tuple:
        value = values[i][sort] if i in values else None
        return (value is None, 0 if value is None else sign * value, i)

    expected = sorted(everyone, key=place)
    listed = jsonl(client.get(f"{SAMPLES}?scorer=1&sort={sort}&order={order}&download=samples&format=jsonl"))
    assert [r["sample_id"] for r in listed] == expected
    for row in listed:
        if row["sample_id"] in values:
            assert row[sort] == pytest.approx(values[row["sample_id"]][sort], rel=1e-9)
        if row["sample_id"] in scored.ids[:2]:
            assert row["ifd"] is None and row["ifd_ppl"] is None
    seen, url = [], f"{SAMPLES}?scorer=1&sort={sort}&order={order}&per_page=15"
    while url:
        page = client.get(url)
        assert page.status_code == 200 and f">{sort} {'▼' if order == 'desc' else '▲'}</a>" in page.text
        seen += ids_in_order(page.text)
        following = re.search(r'<a id="next" href="([^"]+)"', page.text)
        url = html.unescape(following.group(1)) if following else None
    assert seen == expected


def test_samples_filter_by_ifd_ranges(client, scored):
    values = ifd_by_sample(scored, 1)
    kept = sorted((i for i, v in values.items() if v["ifd"] <= 1), key=lambda i: (-values[i]["ifd"], i))
    assert 0 < len(kept) < len(values)
    listed = jsonl(client.get(f"{SAMPLES}?scorer=1&sort=ifd&ifd_max=1&download=samples&format=jsonl"))
    assert [r["sample_id"] for r in listed] == kept
    below = {i for i, v in values.items() if v["ifd_ppl"] < 0.5 and v["response_loss"] >= 1}
    listed = jsonl(
        client.get(f"{SAMPLES}?scorer=1&ifd_ppl_max=0.4999999&response_loss_min=1&download=samples&format=jsonl")
    )
    assert {r["sample_id"] for r in listed} == below
    page = client.get(f"{SAMPLES}?scorer=1&ifd_min=1.2&sort=ifd")
    assert page.status_code == 200 and 'name="ifd_min" value="1.2"' in page.text
    assert set(ids_in_order(page.text)) == {i for i, v in values.items() if v["ifd"] >= 1.2}
    # A scorer without IFD offers neither the columns nor the filters.
    other = client.get(f"{SAMPLES}?scorer=2")
    assert other.status_code == 200 and 'name="ifd_min"' not in other.text and "sort=ifd" not in other.text


def test_a_scorer_scored_for_ifd_alone_lists_its_samples(client, scored):
    values = ifd_by_sample(scored, 3)
    listed = jsonl(client.get(f"{SAMPLES}?scorer=3&sort=ifd&download=samples&format=jsonl"))
    assert [r["sample_id"] for r in listed[: len(values)]] == sorted(values, key=lambda i: (-values[i]["ifd"], i))
    assert len(listed) == 40 and all(r["miwv"] is None for r in listed)  # no MIWV: no one-shot pass
    assert {r["status"] for r in listed} == {"ok", "too_long", "zero_response_loss"}
    page = client.get(f"/models/{MODEL}?scorer=3")
    assert page.status_code == 200 and 'id="ifd"' in page.text and "No sample has both MIWV and IFD" in page.text


def test_the_sample_page_shows_ifd_beside_miwv(client, scored):
    values = ifd_by_sample(scored, 1)
    sample_id = scored.ids[5]
    page = client.get(f"/samples/{sample_id}")
    assert page.status_code == 200 and "L(y) alone" in page.text
    want = values[sample_id]
    assert f'<td class="num strong ifd">{want["ifd"]:.4f}</td>' in page.text
    assert f"{want['ifd_ppl']:.4f}" in page.text and f"{want['response_loss']:.4f}" in page.text
    scores = {s["scorer_id"]: s for s in jsonl(client.get(f"/samples/{sample_id}?download=scores&format=jsonl"))}
    assert scores[1]["ifd"] == pytest.approx(want["ifd"], rel=1e-9) and scores[1]["ifd_status"] == "ok"
    assert scores[1]["miwv"] == pytest.approx(miwv_by_sample(scored, 1)[sample_id], rel=1e-9)
    assert scores[2]["ifd"] is None and scores[2]["ifd_status"] is None  # scorer 2 has no response losses
    too_long = client.get(f"/samples/{scored.ids[0]}")
    assert 'status-too_long">too_long</span></td>' in too_long.text


@pytest.mark.parametrize(
    ("query", "percent"),
    [("a=1&b=2", 5), ("a=2&b=1&top_percent=20", 20), ("a=1&b=1&a_score=miwv&b_score=ifd&top_percent=10", 10),
     ("a=1&b=1&a_score=ifd_ppl&b_score=miwv", 5)],
)  # fmt: skip
def test_the_compare_curve_equals_a_direct_computation(client, scored, query, percent):
    sides = dict(re.findall(r"([ab])_score=(\w+)", query))
    a_scorer, b_scorer = (int(re.search(rf"\b{side}=(\d)", query).group(1)) for side in "ab")

    def scores(scorer: int, score: str) -> dict[int, float]:
        if score == "miwv":
            return miwv_by_sample(scored, scorer)
        return {i: v[score] for i, v in ifd_by_sample(scored, scorer).items()}

    a = scores(a_scorer, sides.get("a", "miwv"))
    b = scores(b_scorer, sides.get("b", "miwv"))
    expected = direct_curve(a, b, percent)
    curve = jsonl(client.get(f"/compare?{query}&download=curve&format=jsonl"))
    assert [(r["screen_percent"], r["screened"], r["top_k"], r["kept"]) for r in curve] == expected
    assert [r["recall"] for r in curve] == pytest.approx([kept / k for _, _, k, kept in expected], abs=1e-4)
    assert curve[-1]["recall"] == 1 and expected[0][3] < expected[0][2]  # a 1% screen misses some of B's top
    page = client.get(f"/compare?{query}")
    assert page.status_code == 200 and '<svg id="curve"' in page.text
    assert page.text.count('class="curve-point"') == len(SCREEN_PERCENTS)
    summary = jsonl(client.get(f"/compare?{query}&download=summary&format=jsonl"))[0]
    assert summary["pool"] == len(set(a) & set(b))
    top = jsonl(client.get(f"/compare?{query}&download=top&format=jsonl"))
    assert f"{sides.get('a', 'miwv')}_a" in top[0] and f"{sides.get('b', 'miwv')}_b" in top[0]


def test_the_compare_form_offers_ifd_only_where_a_scorer_has_it(client):
    page = client.get("/compare")
    assert page.status_code == 200 and 'name="a_score"' in page.text and "scorer 1 (chat) · IFD" in page.text
    assert "scorer 2 (alpaca) · IFD" not in page.text


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/compare?a=1&b=2&a_score=bogus", "a_score must be one of miwv, ifd, ifd_ppl"),
        ("/compare?a=1&b=2&b_score=ifd", "scorer 2 (smollm2-135m) has no response-alone losses"),
        ("/compare?a=1&b=2&top_percent=0", "top_percent must be a number above 0 and at most 100"),
        ("/compare?a=1&b=2&top_percent=101", "top_percent must be a number above 0 and at most 100"),
        ("/compare?a=1&b=2&top_percent=abc", "top_percent must be a number"),
        ("/compare?a=1&b=2&top_percent=nan", "top_percent must be a finite number"),
        ("/compare?a=1&b=2&k=5", "unknown parameter 'k'"),
        (f"{SAMPLES}?scorer=2&sort=ifd", "sorting or filtering by ifd needs IFD"),
        (f"{SAMPLES}?scorer=2&ifd_ppl_max=1", "sorting or filtering by ifd_ppl needs IFD"),
        (f"{SAMPLES}?scorer=1&ifd_min=abc", "ifd_min must be a number"),
        (f"/models/{MODEL}?scorer=2&download=agreement", "no table 'agreement'"),
    ],
)
def test_bad_parameters_are_a_clear_400(client, path, message):
    response = client.get(path)
    assert response.status_code == 400, (path, response.status_code)
    assert message in html.unescape(response.text), response.text[-2000:]
