"""`select`, `selections` and `report` on a real scored catalog, checked against pandas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from catalog.records import to_sample
from tests.conftest import CliRun, fixture_records, write_jsonl

pytestmark = pytest.mark.slow  # the real SmolLM2 and MiniLM


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    """36 real rows in two datasets, embedded and scored with SmolLM2; 8 more rows never scored."""
    root = tmp_path_factory.mktemp("scored")
    catalog = root / "catalog"
    rows = fixture_records()[::5]  # 36 rows, all four sources
    run = CliRun(catalog)
    run("ingest", write_jsonl(root / "a.jsonl", rows[:20]), "--dataset", "a")
    run("ingest", write_jsonl(root / "b.jsonl", rows[20:]), "--dataset", "b")
    run("embed")
    assert run("score", "--model", "smollm2-135m").exit_code == 0
    run("ingest", write_jsonl(root / "late.jsonl", fixture_records()[1::20][:8]), "--dataset", "b")
    return catalog


def view(run, query: str) -> pd.DataFrame:
    return pd.DataFrame([json.loads(line) for line in run("sql", query, "--json").output.splitlines()])


def members(run, selection_id: int) -> list[int]:
    rows = view(run, f"SELECT sample_id FROM selection_member WHERE selection_id = {selection_id} ORDER BY rank")
    return rows["sample_id"].tolist() if len(rows) else []


def k_of(pool: int, percent: float) -> int:
    return max(1, math.floor(pool * percent / 100 + 0.5))


@pytest.mark.parametrize(
    ("strategy", "column", "descending"),
    [
        ("miwv", "miwv", True),
        ("low-miwv", "miwv", False),
        ("zero-shot-loss", "zero_shot_loss", True),
        ("one-shot-loss", "one_shot_loss", True),
    ],
)
def test_strategies_pick_what_pandas_picks(scored, strategy, column, descending):
    run = CliRun(scored)
    result = run.json("select", "--model", "smollm2-135m", "--top-percent", "25", "--strategy", strategy)
    scores = view(run, "SELECT sample_id, miwv, zero_shot_loss, one_shot_loss FROM miwv_scores WHERE status = 'ok'")
    pool = len(view(run, "SELECT sample_id FROM samples"))
    expected = scores.sort_values([column, "sample_id"], ascending=[not descending, True])["sample_id"]
    assert members(run, result["selection_id"]) == expected.head(k_of(pool, 25)).tolist()
    assert (result["pool_size"], result["eligible"], result["excluded"], result["selected"]) == (
        pool,
        len(scores),
        {"not scored": pool - len(scores)},
        11,
    )


def test_dataset_and_where_pools_take_k_percent_of_their_own_size(scored):
    run = CliRun(scored)
    in_b = view(run, "SELECT sample_id FROM samples WHERE list_contains(datasets, 'b')")
    result = run.json("select", "--model", "smollm2-135m", "--dataset", "b", "--top-percent", "10")
    assert (result["pool_size"], result["eligible"], result["excluded"], result["selected"]) == (
        len(in_b),
        16,
        {"not scored": 8},
        k_of(len(in_b), 10),
    )
    chosen = members(run, result["selection_id"])
    assert set(chosen) <= set(in_b["sample_id"])
    where = run.json("select", "--model", "smollm2-135m", "--top-k", "3", "--where", "input <> '' AND n_turns = 1")
    with_input = view(
        run,
        "SELECT m.sample_id, m.miwv FROM miwv_scores m JOIN samples s USING (sample_id) "
        "WHERE s.input <> '' AND m.status = 'ok'",
    )
    expected = with_input.sort_values(["miwv", "sample_id"], ascending=[False, True])["sample_id"].head(3)
    assert members(run, where["selection_id"]) == expected.tolist()


@pytest.mark.parametrize("where", ["nope = 1", "1 = 1) OR (1 = 1; DROP TABLE sample", "sample_id IN (SELEC 1)"])
def test_a_bad_where_is_one_clear_error_and_records_nothing(scored, where):
    run = CliRun(scored)
    before = len(view(run, "SELECT * FROM selection"))
    result = run("select", "--model", "smollm2-135m", "--top-k", "3", "--where", where)
    assert result.exit_code == 1 and "--where" in result.output and "Traceback" not in result.output
    assert len(view(run, "SELECT * FROM selection")) == before
    assert len(view(run, "SELECT sample_id FROM samples")) == 44


def test_random_is_seeded_and_covers_the_whole_pool(scored):
    run = CliRun(scored)
    picks = [
        members(run, run.json("select", "--strategy", "random", "--top-percent", "50", "--seed", seed)["selection_id"])
        for seed in (0, 0, 1)
    ]
    assert picks[0] == picks[1] != picks[2] and len(picks[0]) == 22
    unscored = set(
        view(run, "SELECT sample_id FROM samples WHERE sample_id NOT IN (SELECT sample_id FROM miwv_scores)")[
            "sample_id"
        ]
    )
    assert unscored & (set(picks[0]) | set(picks[2]))  # random ignores scores


@pytest.mark.parametrize("name", ["top.jsonl", "top.parquet", "top_hf"])
def test_export_keeps_rank_order_extras_and_scores(scored, tmp_path, name):
    run = CliRun(scored)
    out = tmp_path / name
    result = run.json("select", "--model", "smollm2-135m", "--top-k", "12", "--out", out, "--with-scores")
    if name.endswith(".jsonl"):
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    elif name.endswith(".parquet"):
        records = pq.read_table(out).to_pylist()
    else:
        from datasets import load_from_disk

        records = list(load_from_disk(str(out)))
    assert [to_sample(r, "alpaca").sample_id for r in records] == members(run, result["selection_id"])
    assert all(r["miwv"] is not None and r["zero_shot_loss"] > 0 for r in records)
    ranked = [r["miwv"] for r in records]
    assert ranked == sorted(ranked, reverse=True)
    originals = {to_sample(r, "alpaca").sample_id: r for r in fixture_records()}
    for record in records:
        source = originals[to_sample(record, "alpaca").sample_id]
        assert {k: record[k] for k in source if record.get(k) is not None} == {
            k: v for k, v in source.items() if v is not None
        }  # every original field, extras included


@pytest.mark.parametrize(
    ("name", "shape"), [("top.jsonl", "alpaca"), ("top.parquet", "messages"), ("chat.jsonl", "messages")]
)
def test_export_then_ingest_gives_the_same_sample_ids(scored, tmp_path, name, shape):
    run = CliRun(scored)
    result = run.json("select", "--model", "smollm2-135m", "--top-k", "10", "--out", tmp_path / name, "--shape", shape)
    chosen = members(run, result["selection_id"])
    again = CliRun(tmp_path / "again")
    assert again("ingest", tmp_path / name, "--dataset", "round-trip").exit_code == 0
    assert set(view(again, "SELECT sample_id FROM samples")["sample_id"]) == set(chosen)


def test_export_is_atomic(scored, tmp_path, monkeypatch):
    run = CliRun(scored)
    out = tmp_path / "top.parquet"
    out.write_bytes(b"the previous selection")
    before = len(view(run, "SELECT * FROM selection"))

    def crash(table, path, *args, **kwargs):
        Path(path).write_bytes(b"half a parquet file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    result = run("select", "--model", "smollm2-135m", "--top-k", "5", "--out", out)
    assert result.exit_code == 4 and "disk full" in result.output and "Traceback" not in result.output
    assert out.read_bytes() == b"the previous selection"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["top.parquet"]  # no staging left behind
    assert len(view(run, "SELECT * FROM selection")) == before  # nothing recorded


def test_selections_are_listed_and_their_sql_reproduces_them(scored):
    run = CliRun(scored)
    shown = run("select", "--model", "smollm2-135m", "--top-percent", "20", "--show-sql").output.split(";\n", 1)[0]
    result = run.json("select", "--model", "smollm2-135m", "--top-percent", "20")
    assert shown == result["sql"]
    reproduced = view(run, result["sql"])["sample_id"].tolist()
    assert reproduced == members(run, result["selection_id"])
    listed = run.json("selections")["selections"]
    assert listed[0]["selection_id"] == result["selection_id"] and listed[0]["top_percent"] == 20


def test_report_writes_plots_and_a_summary_matching_pandas(scored, tmp_path):
    run = CliRun(scored)
    result = run("report", "--model", "smollm2-135m", "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    for png in ("miwv_histogram.png", "losses.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "report" / "summary.md").read_text()
    scores = view(
        run, "SELECT m.miwv, s.datasets FROM miwv_scores m JOIN samples s USING (sample_id) WHERE m.status = 'ok'"
    )
    assert "| a | 20 |" in summary and "| b | 16 |" in summary and "| (all) | 36 |" in summary
    all_row = next(line for line in summary.splitlines() if line.startswith("| (all)")).split(" | ")
    assert float(all_row[4]) == pytest.approx(scores["miwv"].median(), abs=1e-4)
    assert float(all_row[7]) == pytest.approx((scores["miwv"] > 0).mean(), abs=1e-4)


def test_an_unknown_dataset_is_named_with_the_known_ones(scored):
    run = CliRun(scored)
    for args in (["select", "--model", "smollm2-135m", "--top-k", "3"], ["score", "--model", "smollm2-135m"]):
        result = run(*args, "--dataset", "dolly")
        assert result.exit_code == 1 and "no dataset 'dolly' in the catalog; datasets: a, b" in result.output


def test_select_needs_a_scored_model(scored):
    run = CliRun(scored)
    assert "--model is required" in run("select", "--top-k", "3").output
    missing = run("select", "--model", "qwen2.5-7b", "--top-k", "3")
    assert missing.exit_code == 1 and "no scores for model 'qwen2.5-7b'" in missing.output
    both = run("select", "--model", "smollm2-135m", "--top-k", "3", "--top-percent", "1")
    assert both.exit_code == 1 and "exactly one of --top-k and --top-percent" in both.output
