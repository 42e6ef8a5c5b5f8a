"""Only current samples are embedded, linked and scored. After `ingest --replace` and removals the
incremental links equal a rebuild and the links of a catalog built from the remaining rows alone,
and `score` computes only what the change made stale; its top-K equals the from-scratch catalog's.

The from-scratch catalogs get the same vectors (copied from LanceDB, as `embed` would compute them
for the same texts): links depend only on which samples are current, which is what is tested here,
while a batch of different texts may move a vector by float noise and decide a near-tie otherwise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import miwv
from catalog import Catalog, db, lifecycle
from catalog.embed import EmbedderRow, find_embedder, register_embedder
from catalog.ingest import ingest_file
from scoring.neighbours import link_neighbours
from tests.conftest import SHARED_DATA, write_jsonl

pytestmark = pytest.mark.slow  # the real MiniLM, and SmolLM2 for the score test

MODEL = "smollm2-135m"


def shared_rows(name: str, n: int, short: bool = False) -> list[dict]:
    """The first `n` rows of a shared file (with `short`: of those under 140 characters, cheap to score)."""
    rows = [json.loads(line) for line in (SHARED_DATA / name).read_text(encoding="utf-8").splitlines()]
    if short:
        rows = [r for r in rows if len(r["instruction"]) + len(r["input"]) + len(r["output"]) < 140]
    return [{k: r[k] for k in ("instruction", "input", "output")} for r in rows[:n]]


def versions(rows: list[dict], v1: int, outputs: int, instructions: int, dropped: int) -> tuple[list, list]:
    """(v1, v2) of a dataset: v1 is rows[:v1]; v2 corrects the output of its first `outputs` rows
    (same user text), rewords the instruction of the next `instructions`, drops the next `dropped`,
    keeps the rest of v1 and adds rows[v1:] (new)."""
    first = rows[:v1]
    fixed = [r | {"output": r["output"] + " (corrected)"} for r in first[:outputs]]
    end = outputs + instructions
    reworded = [r | {"instruction": r["instruction"] + " Keep it short."} for r in first[outputs:end]]
    return first, fixed + reworded + first[end + dropped :] + rows[v1:]


def links(store: Catalog) -> dict[int, tuple]:
    """Every stored link: sample_id -> (neighbour_id, similarity)."""
    with store.read() as conn:
        rows = db.execute(conn, "SELECT sample_id, neighbour_id, similarity FROM neighbour_link")
    return {s: (n, sim) for s, n, sim in rows}


def current(store: Catalog) -> set[int]:
    with store.read() as conn:
        return {row[0] for row in db.execute(conn, "SELECT DISTINCT sample_id FROM membership")}


def assert_current_links(store: Catalog, embedder: EmbedderRow) -> None:
    """Exactly the current embedded samples have a link, and every link names a current sample."""
    now, stored = current(store), links(store)
    embedded = set(embedder.vectors(store).ids().tolist())
    assert set(stored) == now & embedded
    assert {n for n, _ in stored.values() if n is not None} <= now


def from_scratch(root: Path, sources: list[tuple[Path, str]], vectors_of: Catalog) -> tuple[Catalog, EmbedderRow]:
    """A new catalog of `sources` only, with the vectors `vectors_of` holds for its samples; not linked."""
    store = Catalog(root)
    for path, dataset in sources:
        ingest_file(store, path, dataset)
    source = find_embedder(vectors_of)
    embedder = register_embedder(
        store, source.name, source.path, source.dimension, source.pooling, source.fingerprint, source.max_seq_length
    )
    wanted = np.array(sorted(current(store)), np.int64)
    ids, vectors = source.vectors(vectors_of).load(wanted)
    assert np.array_equal(ids, wanted)
    embedder.vectors(store).add(ids, vectors)
    return store, embedder


def v2_and_dolly(files: dict[str, Path]) -> list[tuple[Path, str]]:
    return [(files["v2"], "code"), (files["dolly"], "dolly")]


@pytest.fixture(scope="module")
def replaced(tmp_path_factory) -> dict:
    """A catalog of code v1 + dolly, embedded, then code v2 ingested with replace and embedded again.

    Dolly's file also holds a code row that v2 drops (it stays: it is still in dolly). An `extra`
    dataset was ingested and removed before the first embed: its retired samples must get no vector.
    """
    root = tmp_path_factory.mktemp("replaced")
    code = shared_rows("code_alpaca_2k.jsonl", 100)
    v1, v2 = versions(code, 80, outputs=8, instructions=4, dropped=10)
    files = {
        "v1": write_jsonl(root / "code_v1.jsonl", v1),
        "v2": write_jsonl(root / "code_v2.jsonl", v2),
        "dolly": write_jsonl(root / "dolly.jsonl", shared_rows("dolly_3k_alpagasus.jsonl", 40) + [code[15]]),
        "extra": write_jsonl(root / "extra.jsonl", shared_rows("gpteacher_roleplay_dedupe.jsonl", 3)),
    }
    store = Catalog(root / "catalog")
    ingest_file(store, files["v1"], "code")
    ingest_file(store, files["dolly"], "dolly")
    extra = ingest_file(store, files["extra"], "extra")
    lifecycle.remove(store, dataset="extra")
    api = miwv.Catalog(store.path)
    first = api.embed()
    assert (first.embedded, first.total, extra.rows_new) == (len(current(store)), len(current(store)), 3)
    before = links(store)
    replace = ingest_file(store, files["v2"], "code", replace=True)
    assert replace.links_to_repair >= 3  # some remaining samples lost their example
    second = api.embed()
    assert second.embedded == 8 + 4 + 20 and second.neighbours.mode == "incremental"
    return {"catalog": store.path, "files": files, "links_before": before}


def copy_of(replaced: dict, tmp_path: Path) -> tuple[Catalog, EmbedderRow]:
    shutil.copytree(replaced["catalog"], tmp_path / "catalog")
    store = Catalog(tmp_path / "catalog")
    return store, find_embedder(store)


def test_links_after_a_replace_equal_a_rebuild_and_a_catalog_of_v2_alone(replaced, tmp_path):
    store, embedder = copy_of(replaced, tmp_path)
    repaired = links(store)
    assert_current_links(store, embedder)
    orphaned = {s for s, (n, _) in replaced["links_before"].items() if n not in current(store) and s in repaired}
    assert len(orphaned) >= 3  # the replace retired the neighbour of remaining samples: they were re-linked
    assert link_neighbours(store, embedder, rebuild=True).changed == 0 and links(store) == repaired
    scratch, scratch_embedder = from_scratch(tmp_path / "scratch", v2_and_dolly(replaced["files"]), store)
    assert link_neighbours(scratch, scratch_embedder).mode == "full"
    assert links(scratch) == repaired


def most_linked(store: Catalog, n: int) -> list[int]:
    """The `n` samples that are the neighbour of the most others (removing them orphans the most links)."""
    with store.read() as conn:
        rows = db.execute(
            conn,
            "SELECT neighbour_id FROM neighbour_link GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT $n",
            {"n": n},
        )
    return [row[0] for row in rows]


@pytest.mark.parametrize("how", ["where", "ids with purge"])
def test_links_after_a_removal_equal_a_rebuild_and_a_catalog_without_those_rows(replaced, tmp_path, how):
    store, embedder = copy_of(replaced, tmp_path)
    if how == "where":
        removal = {"where": "instruction ILIKE '%string%'"}
    else:
        ids_file = tmp_path / "takedown.txt"
        ids_file.write_text("".join(f"{i}\n" for i in most_linked(store, 8)))
        removal = {"ids": ids_file}
    removed = lifecycle.remove(store, **removal, purge=how != "where")
    assert removed.samples_retired >= 8 and removed.links_to_repair >= 5
    if how != "where":
        assert removed.samples_purged > removed.samples_retired  # with those the replace retired
        assert len(embedder.vectors(store).ids()) == len(current(store))  # their vectors are gone too
    linked = miwv.Catalog(store.path).neighbours()
    assert linked.mode == "incremental" and linked.new_samples == removed.links_to_repair
    assert_current_links(store, embedder)
    repaired = links(store)
    assert link_neighbours(store, embedder, rebuild=True).changed == 0 and links(store) == repaired
    unpurged = Catalog(replaced["catalog"])  # holds the vectors a purge deleted here
    scratch, scratch_embedder = from_scratch(tmp_path / "scratch", v2_and_dolly(replaced["files"]), unpurged)
    lifecycle.remove(scratch, **removal)  # before any link: its links are computed once, over what remains
    link_neighbours(scratch, scratch_embedder)
    assert links(scratch) == repaired
    if how == "where":  # the ANN index still holds the retired vectors: its hits on them are dropped
        assert link_neighbours(store, embedder, rebuild=True, method="ann").changed == 0


def test_score_after_a_replace_computes_only_what_it_made_stale_and_ranks_as_from_scratch(tmp_path):
    code = shared_rows("code_alpaca_2k.jsonl", 12, short=True)
    v1, v2 = versions(code, 10, outputs=1, instructions=1, dropped=2)
    files = {
        "v1": write_jsonl(tmp_path / "code_v1.jsonl", v1),
        "v2": write_jsonl(tmp_path / "code_v2.jsonl", v2),
        "dolly": write_jsonl(tmp_path / "dolly.jsonl", shared_rows("dolly_3k_alpagasus.jsonl", 4, short=True)),
    }
    store = Catalog(tmp_path / "catalog")
    ingest_file(store, files["v1"], "code")
    ingest_file(store, files["dolly"], "dolly")
    api = miwv.Catalog(store.path)
    api.embed()
    api.score(MODEL, template="alpaca", max_length=256)
    before, links_before, zero_before = current(store), links(store), zero_shot_rows(store)
    ingest_file(store, files["v2"], "code", replace=True)
    api.embed()
    now, links_after = current(store), links(store)
    new = now - before
    moved = {s for s in now & before if links_after[s][0] != links_before[s][0]}
    assert len(new) == 1 + 1 + 2 and moved  # corrected, reworded and added rows; links a change moved
    scored = api.score(MODEL, template="alpaca", max_length=256)
    assert (scored.pool, scored.samples) == (len(now), len(new | moved))
    with store.read() as conn:
        run = db.execute(conn, "SELECT max(run_id) FROM score_run")[0][0]
        zero = {r[0] for r in db.execute(conn, "SELECT sample_id FROM zero_shot_loss WHERE run_id = $r", {"r": run})}
        one = db.execute(conn, "SELECT sample_id FROM one_shot_loss WHERE run_id = $r", {"r": run})
    assert zero == new  # zero-shot passes of the samples that stayed are never recomputed
    assert sorted(r[0] for r in one) == sorted(new | moved)  # one one-shot pass per new or moved link
    assert {s: row for s, row in zero_shot_rows(store).items() if s in before} == zero_before
    scratch, scratch_embedder = from_scratch(tmp_path / "scratch", v2_and_dolly(files), store)
    link_neighbours(scratch, scratch_embedder)
    assert links(scratch) == links_after
    fresh = miwv.Catalog(scratch.path)
    assert fresh.score(MODEL, template="alpaca", max_length=256).samples == len(now)
    top, top_fresh = api.select(MODEL, top_k=6), fresh.select(MODEL, top_k=6)
    assert top.sample_ids == top_fresh.sample_ids
    assert np.allclose(top.scores, top_fresh.scores, rtol=0, atol=1e-4)


def zero_shot_rows(store: Catalog) -> dict[int, tuple]:
    with store.read() as conn:
        rows = db.execute(conn, "SELECT sample_id, loss, run_id, computed_at FROM zero_shot_loss")
    return {s: (loss, run_id, at) for s, loss, run_id, at in rows}
