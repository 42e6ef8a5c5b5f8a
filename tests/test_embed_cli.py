"""`embed` and `neighbours` with the real MiniLM on real rows, in real DuckDB + LanceDB catalogs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from catalog import Catalog, db
from catalog.embed import find_embedder
from scoring.neighbours import near_tie_margin
from tests.conftest import REPO, SHARED_DATA, fixture_records, write_jsonl

pytestmark = pytest.mark.slow  # the real MiniLM


def sql_rows(cli_run, query: str) -> list[dict]:
    result = cli_run("sql", query, "--json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def links(cli_run, embedder: str = "minilm") -> dict[int, tuple[int | None, float | None]]:
    rows = sql_rows(
        cli_run, f"SELECT sample_id, neighbour_id, similarity FROM neighbours WHERE embedder = '{embedder}'"
    )
    return {r["sample_id"]: (r["neighbour_id"], r["similarity"]) for r in rows}


def test_embed_links_every_sample_to_its_nearest_other_user_text(tmp_path, cli_run):
    records = fixture_records()[:60]
    # Same instruction + input, different responses: exact duplicates of the user text.
    twins = [{**r, "output": r["output"] + " Also, good question."} for r in records[:5]]
    cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", records + twins), "--dataset", "mix")
    result = cli_run.json("embed")
    assert result["embedded"] == 65 and result["neighbours"]["changed"] == 65
    pairs = sql_rows(
        cli_run,
        """
        SELECT n.sample_id, s.user_text, t.user_text AS neighbour_text, n.similarity
        FROM neighbours n JOIN samples s USING (sample_id) JOIN samples t ON t.sample_id = n.neighbour_id""",
    )
    assert len(pairs) == 65
    assert all(p["user_text"] != p["neighbour_text"] for p in pairs)
    assert all(-1.0 <= p["similarity"] <= 1.0 + 1e-6 for p in pairs)
    # The link is the true nearest: check against the stored vectors directly.
    catalog = Catalog(tmp_path.parent / tmp_path.name / "catalog")
    ids, vectors = find_embedder(catalog).vectors(catalog).load()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    texts = {p["sample_id"]: p["user_text"] for p in pairs}
    sims = np.round(vectors.astype(np.float64) @ vectors.astype(np.float64).T, 12)  # BLAS rounding differs per column
    same_text = np.array([[texts[a] == texts[b] for b in ids] for a in ids])
    sims[same_text] = -np.inf
    stored = links(cli_run)
    expected = {a: ids[row == row.max()].min() for a, row in zip(ids, sims, strict=True)}  # ties: smallest id
    assert {a: stored[a][0] for a in ids} == expected


def test_a_second_run_embeds_nothing_and_a_lone_sample_has_no_neighbour(tmp_path, cli_run):
    cli_run("ingest", write_jsonl(tmp_path / "one.jsonl", fixture_records()[:1]))
    first = cli_run.json("embed")
    assert first["embedded"] == 1 and first["neighbours"]["without_neighbour"] == 1
    assert links(cli_run) == {next(iter(links(cli_run))): (None, None)}
    again = cli_run.json("embed")
    assert (again["embedded"], again["total"], again["neighbours"]["mode"]) == (0, 1, "up-to-date")


def test_incremental_links_equal_a_full_recompute_on_real_data(tmp_path, cli_run, catalog_dir):
    """Ingest Code Alpaca in two halves, embedding after each; then recompute from scratch."""
    lines = (SHARED_DATA / "code_alpaca_2k.jsonl").read_text(encoding="utf-8").splitlines()
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(lines[:600]) + "\n", encoding="utf-8")
    second.write_text("\n".join(lines[600:1000]) + "\n", encoding="utf-8")
    cli_run("ingest", first, "--skip-invalid")
    cli_run("embed")
    before = links(cli_run)
    cli_run("ingest", second, "--skip-invalid")
    assert cli_run.json("embed")["neighbours"]["mode"] == "incremental"
    incremental = links(cli_run)
    changed_old = sum(incremental[s] != before[s] for s in before)
    assert 0 < changed_old < len(before)  # some old samples found a nearer new one, most did not
    written = sql_rows(cli_run, "SELECT links_changed, new_samples FROM neighbour_run ORDER BY run_id")[-1]
    assert written == {
        "links_changed": changed_old + len(incremental) - len(before),
        "new_samples": len(incremental) - len(before),
    }

    rebuilt = cli_run.json("neighbours", "--rebuild")
    assert (rebuilt["mode"], rebuilt["changed"]) == ("full", 0)  # identical to the incremental result
    assert links(cli_run) == incremental

    # A second catalog embedding everything at once: vectors differ by float noise (batch padding),
    # so links may differ only where two candidates are within that noise of each other.
    other = tmp_path / "other"
    whole = tmp_path / "whole.jsonl"
    whole.write_text("\n".join(lines[:1000]) + "\n", encoding="utf-8")
    env = {**os.environ, "MIWV_CATALOG": str(other)}
    subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "ingest", str(whole), "--skip-invalid"],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run([sys.executable, str(REPO / "cli.py"), "embed"], env=env, check=True, capture_output=True)
    at_once = Catalog(other)
    with at_once.read() as conn:
        other_links = dict(db.execute(conn, "SELECT sample_id, neighbour_id FROM neighbours"))
    differ = [s for s in incremental if incremental[s][0] != other_links[s]]
    assert len(differ) <= 0.01 * len(incremental)


def test_ann_method_agrees_with_exact_on_real_rows(tmp_path, cli_run):
    cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", fixture_records()))
    cli_run("embed")
    exact = links(cli_run)
    result = cli_run.json("neighbours", "--rebuild", "--method", "ann")
    assert (result["method"], result["mode"]) == ("ann", "full")
    assert links(cli_run) == exact


def embed_140_rows(cli_run) -> None:
    cli_run("ingest", write_jsonl(cli_run.catalog.parent / "first.jsonl", fixture_records()[:140]))
    cli_run("embed")


@pytest.mark.parametrize("new_rows", [1, 2, 20])
def test_ann_method_links_new_rows_as_the_exact_method_does(tmp_path, cli_run, catalog_built_by, new_rows):
    """One new row is searched as a single vector, which LanceDB answers without a query index."""
    catalog_built_by(embed_140_rows)
    cli_run("ingest", write_jsonl(tmp_path / "new.jsonl", fixture_records()[140 : 140 + new_rows]))
    result = cli_run.json("embed", "--method", "ann")
    assert (result["embedded"], result["neighbours"]["method"], result["neighbours"]["mode"]) == (
        new_rows,
        "ann",
        "incremental",
    )
    by_ann = links(cli_run)
    exact = cli_run.json("neighbours", "--rebuild", "--method", "exact")
    assert exact["changed"] == 0 and links(cli_run) == by_ann and len(by_ann) == 140 + new_rows
    assert cli_run.json("embed", "--method", "ann")["neighbours"]["mode"] == "up-to-date"


@pytest.mark.parametrize("rows", [1, 2])
def test_ann_method_on_a_catalog_of_one_or_two_rows(tmp_path, cli_run, rows):
    cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", fixture_records()[:rows]))
    result = cli_run.json("embed", "--method", "ann")
    assert (result["neighbours"]["method"], result["neighbours"]["without_neighbour"]) == ("ann", 2 - rows)
    assert len(links(cli_run)) == rows


def test_two_embedders_keep_their_vectors_and_links_side_by_side(tmp_path, cli_run):
    cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", fixture_records()[:80]))
    cli_run("embed")
    cls = cli_run.json("embed", "--pooling", "cls")
    assert (cls["pooling"], cls["embedded"]) == ("cls", 80)
    status = cli_run.json("status")
    assert [(e["name"], e["pooling"], e["embedded"], e["linked"]) for e in status["embedders"]] == [
        ("minilm", "mean", 80, 80),
        ("minilm", "cls", 80, 80),
    ]
    by_pooling = sql_rows(
        cli_run,
        """SELECT e.pooling, count(*) AS n FROM neighbour_link l
                                      JOIN embedder e USING (embedder_id) GROUP BY 1 ORDER BY 1""",
    )
    assert by_pooling == [{"pooling": "cls", "n": 80}, {"pooling": "mean", "n": 80}]
    mean = links(cli_run)
    assert len(mean) == 80 and "--embedder" not in cli_run("neighbours").output  # default: minilm, mean


def test_unknown_embedder_is_one_clear_error(tmp_path, cli_run):
    cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", fixture_records()[:3]))
    result = cli_run("embed", "--embedder", str(tmp_path / "no-model"))
    assert result.exit_code == 1
    assert "is neither an alias (minilm, bge-large" in result.output
    assert "a Hugging Face id like Org/Name" in result.output
    assert "Traceback" not in result.output


def test_a_killed_embed_keeps_whole_batches_and_the_rerun_finishes(tmp_path, catalog_dir):
    env = {**os.environ, "MIWV_CATALOG": str(catalog_dir)}
    cli = [sys.executable, str(REPO / "cli.py")]
    subprocess.run(
        [*cli, "ingest", str(SHARED_DATA / "code_alpaca_2k.jsonl"), "--skip-invalid"],
        env=env,
        check=True,
        capture_output=True,
    )
    process = subprocess.Popen([*cli, "embed"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    catalog = Catalog(catalog_dir)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            if len(find_embedder(catalog).vectors(catalog).ids()) >= 512:
                break
        except Exception:  # the catalog or the vector table may not exist yet
            continue
    assert process.poll() is None, "embed finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = find_embedder(catalog).vectors(catalog).ids()
    assert len(kept) % 256 == 0 and 512 <= len(kept) < 2015  # whole batches only
    rerun = subprocess.run([*cli, "embed"], env=env, check=True, capture_output=True, text=True)
    assert f"{2015 - len(kept)} embedded, 2015 in all" in rerun.stdout
    ids = find_embedder(catalog).vectors(catalog).ids()
    assert len(ids) == len(np.unique(ids)) == 2015


def test_near_tie_margin_covers_float32_dot_error():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    error = np.abs((x @ x.T).astype(np.float64) - x.astype(np.float64) @ x.astype(np.float64).T).max()
    assert error < near_tie_margin(384) / 4
