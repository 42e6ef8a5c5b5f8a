"""The web explorer over a catalog whose scores come in two neighbour scopes (issue 17): the catalog-wide
one and one per dataset. Every page reads one scope at a time (`?scope=catalog`, the default, or
`?scope=dataset:NAME`), so no list or summary counts a sample twice; the selectors list the scopes a
scorer has; a sample's page shows its example in each scope with that example's MIWV; the model page
shows the stability figures of catalog.examples; a scope that is not there is refused with 400.

The catalog (tests/web/conftest.py `scoped`): two real datasets sharing 8 samples, the real MiniLM
links in both scopes (the library's), losses by SQL; every expectation is read back through SQL.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from starlette.testclient import TestClient

from catalog import Catalog, db
from catalog.examples import stability
from tests.web.conftest import MODEL, SCOPED_DATASETS, SHARED
from web.app import create_app

pytestmark = pytest.mark.slow  # the real MiniLM embeds the catalog
PAGE = f"/models/{MODEL}"
SAMPLES = f"{PAGE}/samples"
SCOPES = {"catalog": "", **{f"dataset:{name}": name for name in SCOPED_DATASETS}}


@pytest.fixture(scope="module")
def client(scoped: Path) -> TestClient:
    return TestClient(create_app(Catalog(scoped), ["testserver"]))


def rows(scoped: Path, sql: str, params: dict | None = None) -> list[dict]:
    with Catalog(scoped).read() as conn:
        return db.records(conn, sql, params)


def jsonl(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def scores_in(scoped: Path, scope_dataset: str) -> dict[int, float]:
    found = rows(scoped, "SELECT sample_id, miwv FROM score_current WHERE scope_dataset = $s", {"s": scope_dataset})
    return {row["sample_id"]: row["miwv"] for row in found}


def options(text: str, name: str) -> list[str]:
    """The values of the select `name` on a page, in order."""
    select = re.search(rf'<select name="{name}"[^>]*>(.*?)</select>', text, re.S)
    assert select, f"no select {name}"
    return re.findall(r'<option value="([^"]*)"', select.group(1))


def test_the_catalog_holds_both_scopes(scoped: Path) -> None:
    counts = {
        r["scope_dataset"]: r["n"]
        for r in rows(scoped, "SELECT scope_dataset, count(*) AS n FROM score_current GROUP BY 1")
    }
    assert counts == {"": 40, "code": 24, "mixed": 24}
    shared = rows(scoped, "SELECT count(*) AS n FROM samples WHERE len(datasets) = 2")[0]["n"]
    assert shared == SHARED


@pytest.mark.parametrize("scope", [None, *SCOPES])
def test_samples_list_each_sample_once_in_its_scope(client: TestClient, scoped: Path, scope: str | None) -> None:
    expected = scores_in(scoped, SCOPES[scope or "catalog"])
    query = f"&scope={quote(scope)}" if scope else ""
    listed = jsonl(client.get(f"{SAMPLES}?download=samples&format=jsonl{query}"))
    assert sorted(r["sample_id"] for r in listed) == sorted(expected)  # no sample twice, none missing
    assert {r["sample_id"]: r["miwv"] for r in listed} == pytest.approx(expected)
    page = client.get(f"{SAMPLES}?per_page=500{query}")
    assert page.status_code == 200
    assert len(re.findall(r'<td><a class="id" href="/samples/', page.text)) == len(expected)


@pytest.mark.parametrize("scope", SCOPES)
def test_model_page_counts_each_scope_alone(client: TestClient, scoped: Path, scope: str) -> None:
    expected = scores_in(scoped, SCOPES[scope])
    table = f"{PAGE}?scope={quote(scope)}&format=jsonl&download="
    assert sum(r["samples"] for r in jsonl(client.get(table + "status"))) == len(expected)
    assert {r["sample_id"] for r in jsonl(client.get(table + "points"))} == set(expected)
    memberships = rows(
        scoped,
        "SELECT dataset, count(*) AS n, round(median(c.miwv), 4) AS median FROM score_current c "
        "JOIN membership USING (sample_id) WHERE c.scope_dataset = $s GROUP BY 1",
        {"s": SCOPES[scope]},
    )
    assert sum(r["samples"] for r in jsonl(client.get(table + "histogram"))) == sum(r["n"] for r in memberships)
    summary = {r["dataset"]: r for r in jsonl(client.get(table + "summary")) if r["dataset"] != "(all)"}
    assert {d: (r["scored"], r["median"]) for d, r in summary.items()} == {
        r["dataset"]: (r["n"], r["median"]) for r in memberships
    }


def test_selectors_list_the_scopes_present(client: TestClient) -> None:
    for url in (PAGE, SAMPLES, "/compare?a=1&b=1"):
        page = client.get(url)
        assert page.status_code == 200
        names = ("a_scope", "b_scope") if url.startswith("/compare") else ("scope",)
        for name in names:
            assert options(page.text, name) == list(SCOPES), url
    chosen = client.get(f"{SAMPLES}?scope=dataset:mixed").text
    assert '<option value="dataset:mixed" selected>' in chosen
    assert 'id="scope">within dataset mixed<' in chosen


def test_links_keep_the_scope(client: TestClient) -> None:
    """The charts and the browse button of a dataset scope open that scope's samples; the catalog
    scope's keep the URLs they had (no scope parameter: the default)."""
    page = client.get(f"{PAGE}?scope=dataset:code").text
    links = re.findall(r'href="([^"]*?/samples\?[^"]*)"', page)
    assert links and all("scope=dataset%3Acode" in html.unescape(link) for link in links)
    plain = client.get(f"{PAGE}?scorer=1&embedder=1").text
    assert 'id="scope">catalog-wide<' in plain
    assert all("scope=" not in link for link in re.findall(r'href="([^"]*?/samples\?[^"]*)"', plain))


def test_sample_page_shows_the_example_of_each_scope(client: TestClient, scoped: Path) -> None:
    shared = rows(scoped, "SELECT sample_id FROM samples WHERE len(datasets) = 2 ORDER BY sample_id")[0]["sample_id"]
    links = rows(
        scoped,
        "SELECT n.scope, n.scope_dataset, n.neighbour_id, n.similarity, m.miwv FROM neighbours n "
        "JOIN miwv_scores m USING (sample_id, embedder_id, neighbour_id) "
        "WHERE n.sample_id = $id AND m.scope IS NOT DISTINCT FROM n.scope "
        "AND m.scope_dataset IS NOT DISTINCT FROM n.scope_dataset ORDER BY n.scope_dataset NULLS FIRST",
        {"id": shared},
    )
    assert [r["scope_dataset"] for r in links] == [None, "code", "mixed"]
    page = client.get(f"/samples/{shared}")
    assert page.status_code == 200
    blocks = re.findall(r'<div class="example" data-scope="([^"]+)">(.*?)</div>', page.text, re.S)
    assert [scope for scope, _ in blocks] == ["catalog", "dataset:code", "dataset:mixed"]
    for (_, block), link in zip(blocks, links, strict=True):
        assert f'href="/samples/{link["neighbour_id"]}">sample {link["neighbour_id"]}<' in block
        assert f"cosine {link['similarity']:.4f}" in block
        assert f"MIWV {link['miwv']:.4f}" in block
    scores = jsonl(client.get(f"/samples/{shared}?download=scores&format=jsonl"))
    assert [(r["scope"], r["scope_dataset"], r["miwv"]) for r in scores] == [
        (r["scope"], r["scope_dataset"], pytest.approx(r["miwv"])) for r in links
    ]
    for score in scores:  # each ranked among the scores of its own scope
        pool = scores_in(scoped, score["scope_dataset"] or "")
        assert score["ranked"] == len(pool)
        assert score["rank"] == 1 + sum(m > score["miwv"] for m in pool.values())


def test_model_page_shows_stability_where_there_are_lists(client: TestClient, scoped: Path) -> None:
    for scope in ("catalog", "dataset:code"):
        figures = stability(Catalog(scoped), 1, 1, SCOPES[scope], 5.0)
        assert figures is not None
        page = client.get(f"{PAGE}?scope={scope}").text
        assert 'id="stability"' in page
        assert f'id="stability-spearman">{figures.rank_correlation:.3f}<' in page
        assert f'id="stability-top">{100 * figures.top_share:.0f}%<' in page
        assert f'id="stability-losses">{figures.loss_correlation:.3f}<' in page
        assert html.escape(figures.meaning) in page
    assert stability(Catalog(scoped), 1, 1, "mixed", 5.0) is None
    assert 'id="stability"' not in client.get(f"{PAGE}?scope=dataset:mixed").text


def test_compare_ranks_each_side_in_its_scope(client: TestClient, scoped: Path) -> None:
    catalog, mixed = scores_in(scoped, ""), scores_in(scoped, "mixed")
    pool = sorted(set(catalog) & set(mixed))
    assert any(catalog[i] != mixed[i] for i in pool)  # the shared samples' examples differ between the scopes
    summary = jsonl(client.get("/compare?a=1&b=1&b_scope=dataset:mixed&download=summary&format=jsonl"))[0]
    ranks = [[sorted(pool, key=lambda i, s=side: (-s[i], i)).index(i) for i in pool] for side in (catalog, mixed)]
    assert summary["pool"] == len(pool) == 24
    assert summary["spearman"] == pytest.approx(float(np.corrcoef(*ranks)[0, 1]), abs=1e-4)
    same = jsonl(
        client.get("/compare?a=1&b=1&a_scope=dataset:mixed&b_scope=dataset:mixed&download=summary&format=jsonl")
    )
    assert (same[0]["pool"], same[0]["spearman"]) == (24, 1.0)


@pytest.mark.parametrize(
    "url",
    [
        f"{PAGE}?scope=everywhere",
        f"{PAGE}?scope=dataset:",
        f"{PAGE}?scope=dataset:nowhere",
        f"{SAMPLES}?scope=code",
        "/compare?a=1&b=1&a_scope=dataset:nowhere",
    ],
)
def test_a_scope_not_there_is_refused(client: TestClient, url: str) -> None:
    page = client.get(url)
    assert page.status_code == 400
    assert "scope" in page.text and '<p class="error">' in page.text
