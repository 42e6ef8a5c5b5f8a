"""What reads the catalog after samples leave it (issue 16): `status`, ingest's printed line,
`selections` (pool versions, pool_changed, members_gone), exports of a recorded selection and
the report count current samples only, and say what left.

Real catalogs in temp dirs from real rows of ../shared/data, changed with catalog.lifecycle and
ingest --replace. No model runs: where a test needs links and scores, `add_links_and_scores`
writes 4-dim vectors to LanceDB, each sample's nearest neighbour by them, and losses by SQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

import miwv
from catalog import db
from catalog.embed import embedders
from catalog.ingest import ingest_file
from catalog.lifecycle import remove
from catalog.report import ALL, SUMMARY_SQL
from catalog.status import catalog_status
from catalog.store import Catalog
from terminal.render import print_ingested
from tests.conftest import SHARED_DATA, CliRun, write_jsonl

MODEL = "smollm2-135m"
TEMPLATES = {1: "chat", 2: "alpaca"}  # scorers add_links_and_scores writes


def shared_rows(name: str, count: int) -> list[dict]:
    """The first `count` rows of a ../shared/data file."""
    with open(SHARED_DATA / name, encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(count)]


def code_and_dolly(run: CliRun) -> None:
    """20 Code Alpaca rows as dataset `code`, 20 Dolly rows as `dolly`."""
    root = run.catalog.parent
    run("ingest", write_jsonl(root / "code.jsonl", shared_rows("code_alpaca_2k.jsonl", 20)), "--dataset", "code")
    run("ingest", write_jsonl(root / "dolly.jsonl", shared_rows("dolly_3k_alpagasus.jsonl", 20)), "--dataset", "dolly")


def ids_of(store: Catalog, sql: str) -> list[int]:
    with store.read() as conn:
        return [row[0] for row in db.execute(conn, sql)]


def id_file(path: Path, ids: list[int]) -> Path:
    path.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return path


def add_links_and_scores(store: Catalog, scorers: int = 1) -> None:
    """Embedder 1 with a random 4-dim vector per sample (in LanceDB), each sample linked to its
    nearest other sample by cosine, and `scorers` scorers of MODEL whose losses are written by SQL."""
    ids = np.array(sorted(ids_of(store, "SELECT sample_id FROM samples")), np.int64)
    vectors = np.random.default_rng(0).normal(size=(len(ids), 4))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -2)
    nearest = similarity.argmax(axis=1)
    links = pa.table(
        {
            "sample_id": ids,
            "neighbour_id": ids[nearest],
            "similarity": similarity[np.arange(len(ids)), nearest],
            "loss": np.random.default_rng(1).uniform(0.5, 3.0, len(ids)),
        }
    )
    with store.write() as conn:
        db.execute(
            conn,
            """INSERT INTO embedder VALUES (1, 'minilm', 'random', 4, 'mean', true, 256, 'beef', now(), NULL);
               INSERT INTO neighbour_run VALUES (1, 1, 'exact', 'full', 40, 40, 40, now(), now(), '')""",
        )
        with db.registered(conn, "_links", links):
            db.execute(
                conn,
                "INSERT INTO neighbour_link SELECT sample_id, 1, neighbour_id, similarity, 1, now(), '' FROM _links",
            )
            for scorer in range(1, scorers + 1):
                db.execute(
                    conn,
                    f"""INSERT INTO scorer VALUES ({scorer}, '{MODEL}', 'SmolLM2.gguf', 'beef', '{TEMPLATES[scorer]}',
                                                  4096, 'float32', now(), 2, 'c0ffee', NULL);
                        INSERT INTO score_run (run_id, scorer_id, embedder_id, device, pool, samples, passes,
                                               tokens_run, started_at, finished_at, workers)
                                       VALUES ({scorer}, {scorer}, 1, 'cpu', 40, 40, 80, 9000, now(), now(), 1);
                        INSERT INTO zero_shot_loss SELECT sample_id, {scorer}, 'ok', 10 * loss, 10, loss, 100,
                                                          {scorer}, now() FROM _links;
                        INSERT INTO one_shot_loss SELECT sample_id, {scorer}, neighbour_id, 'ok',
                                                         10 * loss * 0.{scorer}, 10, loss * 0.{scorer}, 200, {scorer},
                                                         now(), false FROM _links;
                        INSERT INTO score_current SELECT sample_id, {scorer}, 1, neighbour_id, similarity, loss,
                                                         loss * 0.{scorer}, loss * 0.{scorer} - loss, 10, 'ok', false,
                                                         ''
                                                  FROM _links""",
                )
    embedders(store)[0].vectors(store).add(ids, vectors)


def test_status_counts_current_samples_and_what_left(catalog_built_by, catalog_dir, tmp_path):
    catalog_built_by(code_and_dolly)
    store = Catalog(catalog_dir)
    add_links_and_scores(store)
    before = catalog_status(store)
    assert (before["samples"], before["retired"], before["purged"], before["advice"]) == (40, 0, 0, [])
    assert [(d["dataset"], d["samples"], d["version"]) for d in before["datasets"]] == [
        ("code", 20, 1),
        ("dolly", 20, 1),
    ]
    code = ids_of(store, "SELECT sample_id FROM membership WHERE dataset = 'code' ORDER BY sample_id")
    remove(store, ids=id_file(tmp_path / "purge.txt", code[:2]), purge=True)
    # Retire the samples others link to, so that some current samples lose their link.
    linked_to = ids_of(
        store,
        f"""SELECT neighbour_id FROM neighbour_link WHERE neighbour_id IN (SELECT sample_id FROM membership
            WHERE dataset = 'code') AND sample_id NOT IN ({code[0]}, {code[1]}) GROUP BY 1 ORDER BY 1 LIMIT 3""",
    )
    removal = remove(store, ids=id_file(tmp_path / "retire.txt", linked_to))
    status = catalog_status(store)

    current = ids_of(store, "SELECT count(*) FROM samples")[0]
    assert (status["samples"], status["retired"], status["purged"]) == (current, 3, 2) == (35, 3, 2)
    assert [(d["dataset"], d["samples"], d["version"]) for d in status["datasets"]] == [
        ("code", 15, 3),
        ("dolly", 20, 1),
    ]
    embedder = status["embedders"][0]
    assert embedder["embedded"] == 35  # the retired samples' vectors stay, but count for no one
    unlinked = ids_of(store, "SELECT count(*) FROM samples ANTI JOIN neighbour_link USING (sample_id)")[0]
    assert embedder["not_linked"] == unlinked >= removal.links_to_repair > 0
    assert embedder["vectors_missing"] == 0
    assert any(f"{unlinked} samples have a vector but no neighbour link" in a for a in status["advice"])
    assert all("run `python cli.py embed`" in a for a in status["advice"])
    printed = CliRun(catalog_dir)("status")
    assert "35 samples (3 retired, 2 purged)" in printed.stdout
    assert CliRun(catalog_dir).json("status")["retired"] == 3


def test_a_replacing_ingest_prints_its_version_and_what_left(catalog_built_by, catalog_dir, tmp_path, capsys):
    catalog_built_by(code_and_dolly)
    store = Catalog(catalog_dir)
    add_links_and_scores(store)
    rows = shared_rows("code_alpaca_2k.jsonl", 25)
    v2 = write_jsonl(tmp_path / "code_v2.jsonl", rows[8:25])  # 8 rows dropped, 5 new
    result = ingest_file(store, v2, dataset="code", replace=True)
    assert (result.version, result.rows_in, result.rows_out, result.samples_retired) == (2, 5, 8, 8)
    print_ingested(result)
    line = capsys.readouterr().out.splitlines()[1]
    repair = f"; {result.links_to_repair} links to repair: run `python cli.py embed`, then `score`"
    assert line == f"dataset 'code' v2: 5 rows in, 8 out (8 samples retired{repair if result.links_to_repair else ''})"
    print_ingested(ingest_file(store, v2, dataset="dolly"))  # not a replace: one line, as before
    assert len(capsys.readouterr().out.splitlines()) == 1


def selections_by_id(cat: miwv.Catalog) -> dict[int, dict]:
    return {row["selection_id"]: row for row in cat.selections()}


def test_selections_know_when_their_pool_changed(catalog_built_by, catalog_dir, tmp_path):
    catalog_built_by(code_and_dolly)
    cat, store = miwv.open(catalog_dir), Catalog(catalog_dir)
    of_code = cat.select(strategy="random", top_k=10, dataset="code")
    of_dolly = cat.select(strategy="random", top_k=5, dataset="dolly")
    of_all = cat.select(strategy="random", top_k=5)
    listed = selections_by_id(cat)
    assert [listed[s.selection_id]["pool_versions"] for s in (of_code, of_dolly, of_all)] == [
        {"code": 1},
        {"dolly": 1},
        {"code": 1, "dolly": 1},
    ]
    assert {(row["pool_changed"], row["members_gone"]) for row in listed.values()} == {(False, 0)}

    again = write_jsonl(tmp_path / "code_again.jsonl", shared_rows("code_alpaca_2k.jsonl", 20))
    ingest_file(store, again, dataset="code")  # a version with no row in or out changes no pool
    assert {row["pool_changed"] for row in selections_by_id(cat).values()} == {False}

    leaving = of_code.sample_ids[:4]
    with store.read() as conn:
        texts = dict(db.execute(conn, "SELECT sample_id, output FROM sample"))
    v2 = [row for row in shared_rows("code_alpaca_2k.jsonl", 20) if row["output"] not in {texts[i] for i in leaving}]
    assert len(v2) == 16
    ingest_file(store, write_jsonl(tmp_path / "code_v2.jsonl", v2), dataset="code", replace=True)
    listed = selections_by_id(cat)
    assert listed[of_code.selection_id]["pool_changed"] is True
    assert listed[of_dolly.selection_id]["pool_changed"] is False  # another dataset's change
    assert listed[of_all.selection_id]["pool_changed"] is True  # no dataset: every change counts
    assert listed[of_code.selection_id]["members_gone"] == 4
    assert listed[of_all.selection_id]["members_gone"] == len(set(of_all.sample_ids) & set(leaving))

    after = cat.select(strategy="random", top_k=3, dataset="code")
    assert selections_by_id(cat)[after.selection_id]["pool_versions"] == {"code": 3}
    assert selections_by_id(cat)[after.selection_id]["pool_changed"] is False
    assert set(after.sample_ids).isdisjoint(leaving)  # the pool is the current samples
    remove(store, dataset="dolly")
    listed = selections_by_id(cat)
    assert listed[of_dolly.selection_id]["pool_changed"] is True
    assert listed[of_dolly.selection_id]["members_gone"] == 5
    assert listed[after.selection_id]["pool_changed"] is False

    with store.write() as conn:  # as a selection recorded before versions were kept
        db.execute(conn, "UPDATE selection SET pool_change_id = NULL, pool_versions = NULL WHERE selection_id = 1")
    unknown = selections_by_id(cat)[1]
    assert (unknown["pool_changed"], unknown["pool_versions"], unknown["members_gone"]) == (None, None, 4)


def test_an_export_of_a_selection_writes_only_current_members_and_says_so(catalog_built_by, catalog_dir, tmp_path):
    catalog_built_by(code_and_dolly)
    cat, store = miwv.open(catalog_dir), Catalog(catalog_dir)
    chosen = cat.select(strategy="random", top_k=12)
    assert cat.select(strategy="random", top_k=12, out=tmp_path / "fresh.jsonl").output.note is None
    retired, purged = chosen.sample_ids[1:4], chosen.sample_ids[6:8]
    remove(store, ids=id_file(tmp_path / "purge.txt", purged), purge=True)
    remove(store, ids=id_file(tmp_path / "retire.txt", retired))

    written = chosen.write(tmp_path / "top.jsonl")
    assert written.rows == 7
    assert (
        written.note
        == "5 of 12 members have left the catalog since the selection (retired or purged) and were not written"
    )
    with store.read() as conn:
        outputs = dict(db.execute(conn, "SELECT sample_id, output FROM sample"))
    lines = [json.loads(line)["output"] for line in (tmp_path / "top.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines == [outputs[i] for i in chosen.sample_ids if i not in retired + purged]  # rank order
    folder = chosen.write(tmp_path / "lf", for_="llamafactory")
    assert folder.rows == 7 and folder.note.startswith("5 of 12 members have left")


def test_the_report_counts_current_samples_only(catalog_built_by, catalog_dir, tmp_path):
    catalog_built_by(code_and_dolly)
    store = Catalog(catalog_dir)
    add_links_and_scores(store)
    code = ids_of(store, "SELECT sample_id FROM membership WHERE dataset = 'code' ORDER BY sample_id")
    remove(store, ids=id_file(tmp_path / "retire.txt", code[:6]))
    with store.read() as conn:
        summary = {
            r["dataset"]: r["scored"] for r in db.records(conn, SUMMARY_SQL, {"scorer": 1, "embedder": 1, "all": ALL})
        }
        scored = dict(
            db.execute(
                conn,
                """SELECT d.dataset, count(*) FROM miwv_scores m JOIN membership d USING (sample_id)
                   WHERE m.status = 'ok' GROUP BY 1""",
            )
        )
        current = db.execute(conn, "SELECT count(*) FROM miwv_scores WHERE status = 'ok'")[0][0]
    assert summary == {**scored, ALL: current}
    assert summary["code"] <= 14 and set(code[:6]).isdisjoint(ids_of(store, "SELECT sample_id FROM score_current"))
