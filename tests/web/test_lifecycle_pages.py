"""The web explorer after samples left the catalog (issue 16), over HTTP (Starlette's TestClient),
checked against SQL: the overview counts current samples and shows dataset versions; a retired
sample's page says when and why it left, a purged sample's page says only its id remains; the
sample lists, model and compare pages show no retired sample; selections say their pool changed.

A real catalog of 40 rows of ../shared/data with links and losses written by SQL (no model; see
tests/test_lifecycle_views.py), then 3 samples retired and 2 purged."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import miwv
from catalog import Catalog, db
from catalog.lifecycle import remove
from tests.conftest import CliRun
from tests.test_lifecycle_views import MODEL, add_links_and_scores, code_and_dolly, id_file
from web.app import create_app


@dataclass(frozen=True)
class Changed:
    path: Path
    retired: list[int]
    purged: list[int]
    selections: tuple[int, int]  # the first holds the retired and purged samples


@pytest.fixture(scope="module")
def changed(tmp_path_factory) -> Changed:
    root = tmp_path_factory.mktemp("lifecycle_web")
    path = root / "catalog"
    code_and_dolly(CliRun(path))
    store = Catalog(path)
    add_links_and_scores(store, scorers=2)
    cat = miwv.open(path)
    first = cat.select(strategy="random", top_k=10, dataset="code")
    second = cat.select(strategy="random", top_k=5, seed=1)
    purged, retired = first.sample_ids[:2], first.sample_ids[2:5]
    remove(store, ids=id_file(root / "takedown.txt", purged), purge=True)
    remove(store, ids=id_file(root / "wrong.txt", retired))
    return Changed(path, retired, purged, (first.selection_id, second.selection_id))


@pytest.fixture(scope="module")
def client(changed: Changed) -> TestClient:
    return TestClient(create_app(Catalog(changed.path), ["testserver"]))


def rows(changed: Changed, sql: str) -> list[dict]:
    with Catalog(changed.path).read() as conn:
        return db.records(conn, sql)


def jsonl(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def test_overview_counts_current_samples_and_shows_dataset_versions(client, changed):
    page = client.get("/")
    assert page.status_code == 200
    assert "<strong>35</strong> samples" in page.text and "3 retired" in page.text and "2 purged" in page.text
    datasets = jsonl(client.get("/?download=datasets&format=jsonl"))
    assert [(d["dataset"], d["samples"], d["version"]) for d in datasets] == [("code", 15, 3), ("dolly", 20, 1)]
    history = jsonl(client.get("/?download=history&format=jsonl"))
    expected = rows(changed, "SELECT dataset, version, kind, rows_in, rows_out FROM dataset_versions")
    assert [(h["dataset"], h["version"], h["kind"], h["rows_in"], h["rows_out"]) for h in history] == [
        ("code", 3, "remove", 0, 3),
        ("code", 2, "remove", 0, 2),  # removed with --purge
        ("dolly", 1, "ingest", 20, 0),
        ("code", 1, "ingest", 20, 0),
    ]
    assert len(expected) == 4
    assert "Dataset versions" in page.text and "wrong.txt" in page.text
    assert "samples have a vector but no neighbour link" in page.text  # the advice of `status`


def test_a_retired_sample_says_when_and_why_it_left(client, changed):
    sample_id = changed.retired[0]
    page = client.get(f"/samples/{sample_id}")
    assert page.status_code == 200
    left = rows(changed, f"SELECT dataset, kind, detail, strftime(left_at, '%Y-%m-%d %H:%M:%S') AS t FROM departures "
                         f"WHERE sample_id = {sample_id}")[0]  # fmt: skip
    assert 'id="retired"' in page.text and "It is not selectable" in page.text
    for text in (left["dataset"], left["kind"], left["detail"], left["t"]):
        assert text in page.text
    output = rows(changed, f"SELECT output FROM sample WHERE sample_id = {sample_id}")[0]["output"]
    assert output.split("\n")[0][:40] in page.text.replace("&#39;", "'").replace("&#34;", '"')
    assert "Not embedded yet" not in page.text and "<h2>Scores</h2>" not in page.text
    assert (
        jsonl(client.get(f"/samples/{sample_id}?download=selections&format=jsonl"))[0]["selection_id"]
        == (changed.selections[0])
    )
    departures = jsonl(client.get(f"/samples/{sample_id}?download=departures&format=jsonl"))
    assert [(d["dataset"], d["kind"]) for d in departures] == [("code", "remove")]


def test_a_purged_sample_says_only_its_id_remains(client, changed):
    sample_id = changed.purged[0]
    page = client.get(f"/samples/{sample_id}")
    assert page.status_code == 200
    assert 'id="purged"' in page.text and "only its id remains" in page.text
    assert "ids in takedown.txt, purge" in page.text
    departures = jsonl(client.get(f"/samples/{sample_id}?download=departures&format=jsonl"))
    assert [(d["dataset"], d["kind"], d["detail"]) for d in departures] == [
        ("code", "remove", "ids in takedown.txt, purge")
    ]
    assert client.get("/samples/12345").status_code == 404  # never in the catalog


def test_current_samples_pages_do_not_change(client, changed):
    current = rows(changed, "SELECT sample_id FROM samples ORDER BY sample_id LIMIT 1")[0]["sample_id"]
    page = client.get(f"/samples/{current}")
    assert page.status_code == 200 and 'id="retired"' not in page.text and "<h2>Scores</h2>" in page.text


def test_sample_lists_model_and_compare_pages_show_no_retired_sample(client, changed):
    gone = set(changed.retired + changed.purged)
    current = {r["sample_id"] for r in rows(changed, "SELECT sample_id FROM samples")}
    # Samples whose neighbour left have no score until `embed` and `score` run again.
    scored = {r["sample_id"] for r in rows(changed, "SELECT sample_id FROM miwv_scores WHERE scorer_id = 1")}
    assert scored < current and scored.isdisjoint(gone)
    listed = jsonl(client.get(f"/models/{MODEL}/samples?scorer=1&download=samples&format=jsonl"))
    assert {r["sample_id"] for r in listed} == scored
    page = client.get(f"/models/{MODEL}/samples?scorer=1&per_page=500")
    assert page.status_code == 200 and not any(f'href="/samples/{i}"' in page.text for i in gone)
    summary = {
        r["dataset"]: r["scored"] for r in jsonl(client.get(f"/models/{MODEL}?scorer=1&download=summary&format=jsonl"))
    }
    per_dataset = rows(
        changed,
        """SELECT dataset, count(*) AS n FROM miwv_scores JOIN membership USING (sample_id)
           WHERE scorer_id = 1 GROUP BY 1""",
    )
    assert summary == {**{r["dataset"]: r["n"] for r in per_dataset}, "(all)": len(scored)}
    statuses = jsonl(client.get(f"/models/{MODEL}?scorer=1&download=status&format=jsonl"))
    assert sum(r["samples"] for r in statuses) == len(scored)
    points = jsonl(client.get(f"/models/{MODEL}?scorer=1&download=points&format=jsonl"))
    assert {p["sample_id"] for p in points} == scored
    compared = jsonl(client.get("/compare?a=1&b=2&top=100&download=top&format=jsonl"))
    assert {r["sample_id"] for r in compared} == scored
    assert jsonl(client.get("/compare?a=1&b=2&download=summary&format=jsonl"))[0]["pool"] == len(scored)


def test_selections_say_their_pool_changed_and_diffs_keep_members_that_left(client, changed):
    first, second = changed.selections
    listed = {r["selection_id"]: r for r in jsonl(client.get("/selections?download=selections&format=jsonl"))}
    assert listed[first]["pool_changed"] is True and listed[first]["members_gone"] == 5
    assert json.loads(listed[first]["pool_versions"]) == {"code": 1}
    assert listed[second]["pool_changed"] is True  # it drew from every dataset
    assert "pool_changed" in client.get("/selections").text
    both = [
        *jsonl(client.get(f"/selections/{first}/vs/{second}?download=only_a&format=jsonl")),
        *jsonl(client.get(f"/selections/{first}/vs/{second}?download=both&format=jsonl")),
    ]
    states = {r["sample_id"]: r["state"] for r in both}
    assert len(states) == 10  # every member of the first, also those that left
    assert {i: states[i] for i in changed.retired + changed.purged} == {
        **{i: "retired" for i in changed.retired},
        **{i: "purged" for i in changed.purged},
    }
    assert all(r["user_text"] is None for r in both if r["state"] == "purged")
    assert client.get(f"/selections/{first}/vs/{second}").status_code == 200
