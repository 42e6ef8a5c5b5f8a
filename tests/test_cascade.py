"""Screening: a score run's pool (a selection, a condition, a calibration sample) and the recall
estimate of a cascade, against the recall computed directly once the target has scored everything."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import miwv
from catalog.pools import resolve_pool, wilson
from catalog.store import Catalog
from tests.conftest import FIXTURE, SHARED_DATA, CliRun, write_jsonl


def ingest_two_datasets(cli_run: CliRun) -> None:
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    cat = miwv.open(cli_run.catalog)
    cat.ingest(rows[:120], dataset="a")
    cat.ingest(rows[120:], dataset="b")


@pytest.fixture
def cat(catalog_built_by, catalog_dir) -> miwv.Catalog:
    catalog_built_by(ingest_two_datasets)
    return miwv.open(catalog_dir)


def ids_of(cat: miwv.Catalog, query: str) -> np.ndarray:
    return np.sort(cat.sql(query)["sample_id"].to_numpy())


def test_no_screen_is_no_pool(cat):
    assert resolve_pool(Catalog(cat.path), "a", None, None, None, 0) is None


def test_a_screen_is_its_current_members_matching_the_condition_within_the_dataset(cat):
    screen = cat.select(strategy="random", top_k=60, seed=3)
    pool = resolve_pool(Catalog(cat.path), "a", screen.selection_id, "n_turns = 1 AND length(output) > 200", None, 0)
    expected = ids_of(
        cat,
        f"""SELECT sample_id FROM samples WHERE list_contains(datasets, 'a') AND n_turns = 1 AND length(output) > 200
            AND sample_id IN (SELECT sample_id FROM selection_member WHERE selection_id = {screen.selection_id})""",
    )
    assert 0 < len(expected) < 60
    assert pool.ids.tolist() == expected.tolist() and pool.ids.dtype == np.int64
    assert (pool.selection_id, pool.calibrate_percent, pool.calibrate_seed, len(pool.calibration_ids)) == (
        screen.selection_id,
        None,
        None,
        0,
    )


def test_the_calibration_sample_is_a_seeded_share_of_the_full_pool_as_random_select_ranks_it(cat):
    screen = cat.select(strategy="random", top_k=10, seed=1)
    store = Catalog(cat.path)
    pool = resolve_pool(store, "b", screen.selection_id, None, 12.5, 7)  # 60 samples in b: 7.5 -> 8
    in_b = cat.select(strategy="random", dataset="b", top_k=8, seed=7)  # the same md5(sample_id:seed) order
    assert pool.calibration_ids.tolist() == sorted(in_b.sample_ids)
    screened_in_b = np.intersect1d(
        screen.sample_ids, ids_of(cat, "SELECT sample_id FROM samples WHERE list_contains(datasets, 'b')")
    )
    assert pool.ids.tolist() == np.union1d(screened_in_b, pool.calibration_ids).tolist()
    assert (pool.calibrate_percent, pool.calibrate_seed) == (12.5, 7)
    assert resolve_pool(store, "b", screen.selection_id, None, 12.5, 7).calibration_ids.tolist() == (
        pool.calibration_ids.tolist()
    )
    assert len(resolve_pool(store, None, screen.selection_id, None, 0.01, 0).calibration_ids) == 1  # at least 1


def test_the_wilson_interval_matches_its_formula_at_known_points():
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 5) == pytest.approx((0.0, 0.4345), abs=1e-4)
    assert wilson(5, 5) == pytest.approx((0.5655, 1.0), abs=1e-4)


def wilson_reference(k: int, n: int) -> tuple[float, float]:
    """Wilson's 1927 interval, written out: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    z, p = 1.959963984540054, k / n
    root = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return ((p + z**2 / (2 * n) - root) / (1 + z**2 / n), (p + z**2 / (2 * n) + root) / (1 + z**2 / n))


def rows_of(run: CliRun, query: str) -> list[dict]:
    return [json.loads(line) for line in run("sql", query, "--json").output.splitlines()]


def id_set(run: CliRun, query: str) -> set[int]:
    return {row["sample_id"] for row in rows_of(run, query)}


@pytest.mark.slow  # the real SmolLM2 (two templates: two scorers) and MiniLM, on 40 real rows
def test_a_cascade_scores_the_screen_and_its_calibration_and_its_estimate_holds(tmp_path: Path):
    lines = (SHARED_DATA / "code_alpaca_2k.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    run = CliRun(tmp_path / "catalog")
    run("ingest", write_jsonl(tmp_path / "code.jsonl", [json.loads(line) for line in lines]), "--dataset", "code")
    run("embed")
    cheap = run.json("score", "--model", "smollm2-135m", "--template", "chat")
    screen = run.json("select", "--model", "smollm2-135m", "--scorer", cheap["scorer_id"], "--top-percent", "50")
    screened = id_set(run, f"SELECT sample_id FROM selection_member WHERE selection_id = {screen['selection_id']}")
    assert len(screened) == 20

    target = run.json(
        "score",
        *("--model", "smollm2-135m", "--template", "alpaca"),
        *("--pool", f"selection:{screen['selection_id']}", "--calibrate", "50"),
    )
    run_id, scorer = target["run_id"], target["scorer_id"]
    calibration = id_set(run, f"SELECT sample_id FROM score_calibration WHERE run_id = {run_id}")
    assert len(calibration) == target["calibration"] == 20
    assert (target["pool_kind"], target["pool_selection_id"], target["pool"]) == (
        "selection",
        screen["selection_id"],
        len(screened | calibration),
    )
    # the target's MIWV exists only for the screen and the calibration sample; its other zero-shot losses
    # are those of their one-shot examples (each example's zero-shot pass is run for the cache, and kept)
    assert id_set(run, f"SELECT sample_id FROM one_shot_loss WHERE scorer_id = {scorer}") == screened | calibration
    assert id_set(run, f"SELECT sample_id FROM miwv_scores WHERE scorer_id = {scorer}") == screened | calibration
    examples = id_set(
        run,
        f"""SELECT neighbour_id AS sample_id FROM one_shot_loss WHERE scorer_id = {scorer}""",
    )
    zero = id_set(run, f"SELECT sample_id FROM zero_shot_loss WHERE scorer_id = {scorer}")
    assert screened | calibration <= zero <= screened | calibration | examples

    picked = run.json("select", "--model", "smollm2-135m", "--scorer", scorer, "--top-percent", "25")
    estimate = picked["cascade"]
    ranked = rows_of(
        run,
        f"""SELECT sample_id FROM miwv_scores WHERE scorer_id = {scorer} AND status = 'ok'
            AND sample_id IN (SELECT sample_id FROM score_calibration WHERE run_id = {run_id})
            ORDER BY miwv DESC, sample_id LIMIT 5""",  # 25% of the 20-sample calibration
    )
    kept = len({row["sample_id"] for row in ranked} & screened)
    assert estimate == pytest.approx(
        {
            "screen_selection_id": screen["selection_id"],
            "calibration_run_id": run_id,
            "calibration_samples": 20,
            "calibration_scored": 20,
            "top_percent": 25.0,
            "calibration_top": 5,
            "kept": kept,
            "recall": kept / 5,
            "ci_low": wilson_reference(kept, 5)[0],
            "ci_high": wilson_reference(kept, 5)[1],
        }
    )
    listed = run.json("selections")["selections"]
    assert next(row for row in listed if row["selection_id"] == picked["selection_id"])["cascade"] == estimate
    shown = run("selections").output
    assert f"selection {picked['selection_id']}: the screen (selection {screen['selection_id']}) kept an estimated" in (
        shown
    )
    reported = run.json("report", "--model", "smollm2-135m", "--scorer", scorer, "--out", tmp_path / "report")
    assert reported["cascades"][0]["cascade"] == estimate
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"the screen (selection {screen['selection_id']}) kept an estimated {estimate['recall']:.0%}" in summary

    run.json("score", "--model", "smollm2-135m", "--template", "alpaca")  # the target over everything
    top = id_set(
        run,
        f"""SELECT sample_id FROM miwv_scores WHERE scorer_id = {scorer} AND status = 'ok'
            ORDER BY miwv DESC, sample_id LIMIT 10""",  # 25% of 40
    )
    direct = len(top & screened) / len(top)
    assert estimate["ci_low"] <= direct <= estimate["ci_high"], (direct, estimate)
    # the latest run of the target was not screened: a selection now has no cascade
    assert run.json("select", "--model", "smollm2-135m", "--scorer", scorer, "--top-percent", "25")["cascade"] is None
