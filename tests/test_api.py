"""The Python API (`import miwv`): names in, result objects out, errors in its own terms, the same
catalog the CLI sees; and selections written for LLaMA-Factory, read back as it reads them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import miwv
from catalog.records import Sample, alpaca_user_text, to_sample
from tests.conftest import FIXTURE, REPO, CliRun, fixture_records, write_jsonl

IMPORT_PROBE = """
import sys, time
started = time.perf_counter()
import miwv
print(time.perf_counter() - started)
print(",".join(m for m in ("torch", "transformers", "sentence_transformers", "lancedb") if m in sys.modules))
"""


@pytest.mark.slow
def test_import_miwv_is_fast_and_loads_no_model_library():
    probe = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert probe[1] == ""  # torch & co. load inside the methods that need them
    assert float(probe[0]) < 4.0  # about 1 s here (SQLAlchemy, pyarrow); torch alone would add seconds


def test_open_takes_a_path_else_the_env_else_the_default(tmp_path, monkeypatch):
    assert miwv.open(tmp_path / "x").path == tmp_path / "x"
    monkeypatch.setenv("MIWV_CATALOG", str(tmp_path / "from-env"))
    assert miwv.open().path == tmp_path / "from-env"
    monkeypatch.delenv("MIWV_CATALOG")
    assert miwv.open().path == Path("miwv-catalog")


@pytest.fixture
def filled(catalog_built_by, catalog_dir) -> miwv.Catalog:
    """The 180 fixture rows, as dataset "mixed" (first 100) and "tail" (last 80)."""
    catalog_built_by(ingest_mixed_and_tail)
    return miwv.open(catalog_dir)


def ingest_mixed_and_tail(cli_run) -> None:
    cat = miwv.open(cli_run.catalog)
    rows = fixture_records()
    cat.ingest(write_jsonl(cli_run.catalog.parent / "mixed.jsonl", rows[:100]), dataset="mixed")
    cat.ingest(write_jsonl(cli_run.catalog.parent / "tail.jsonl", rows[100:]), dataset="tail")


def test_ingest_returns_its_result_and_status_is_what_the_cli_prints(catalog_dir, cli_run):
    cat = miwv.open(catalog_dir)
    result = cat.ingest(FIXTURE, dataset="mixed")
    assert (result.dataset, result.rows_read, result.rows_new, result.record_shape) == ("mixed", 180, 180, "alpaca")
    assert cat.ingest(FIXTURE, dataset="mixed").rows_duplicate == 180
    status = cat.status()
    assert status["samples"] == 180 and status == cli_run.json("status")


def test_sql_returns_arrow_and_stays_read_only(filled):
    counts = filled.sql("SELECT unnest(datasets) AS dataset, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1")
    assert counts.to_pylist() == [{"dataset": "mixed", "n": 100}, {"dataset": "tail", "n": 80}]
    with pytest.raises(miwv.UserError, match="DELETE statements are refused"):
        filled.sql("DELETE FROM sample")
    assert filled.sql("SELECT count(*) AS n FROM samples")["n"].to_pylist() == [180]


def ids_of(records: list[dict]) -> list[int]:
    return [to_sample(r, "alpaca").sample_id for r in records]


def test_a_selection_reads_as_arrow_pandas_hf_and_files_in_rank_order(filled, tmp_path):
    top = filled.select(strategy="random", top_percent=10, dataset="tail", seed=3)
    assert len(top) == top.selected == len(top.sample_ids) == 8 and top.pool_size == 80
    tail = set(ids_of(fixture_records()[100:]))
    assert set(top.sample_ids) <= tail
    assert ids_of(top.to_arrow().to_pylist()) == top.sample_ids
    assert ids_of(top.to_pandas().to_dict("records")) == top.sample_ids
    assert ids_of(list(top.to_hf())) == top.sample_ids
    written = top.write(tmp_path / "top.parquet")
    assert (written.rows, written.file_format, written.shape) == (8, "parquet", "alpaca")
    assert ids_of(pq.read_table(tmp_path / "top.parquet").to_pylist()) == top.sample_ids
    originals = {to_sample(r, "alpaca").sample_id: r for r in fixture_records()}
    assert top.to_pandas().to_dict("records")[0] == originals[top.sample_ids[0]]  # extras come back too


def test_select_records_the_selection_and_its_output(filled, tmp_path):
    top = filled.select(strategy="random", top_k=5, out=tmp_path / "five.jsonl")
    assert top.output.path == tmp_path / "five.jsonl" and top.output.rows == 5
    listed = filled.selections()[0]
    assert listed["selection_id"] == top.selection_id and listed["output"] == str((tmp_path / "five.jsonl").resolve())
    members = filled.sql(
        f"SELECT sample_id FROM selection_member WHERE selection_id = {top.selection_id} ORDER BY rank"
    )
    assert members["sample_id"].to_pylist() == top.sample_ids
    assert filled.sql(top.sql)["sample_id"].to_pylist() == top.sample_ids  # its SQL reproduces it
    assert top.as_dict() == {
        "selection_id": top.selection_id,
        "strategy": "random",
        "model": None,
        "embedder": None,
        "pool_size": 180,
        "eligible": 180,
        "excluded": {},
        "selected": 5,
        "sql": top.sql,
        "output": {
            "path": str(tmp_path / "five.jsonl"),
            "file_format": "jsonl",
            "shape": "alpaca",
            "rows": 5,
            "note": None,
        },
        "cascade": None,
    }


@pytest.mark.parametrize(
    ("call", "api_message", "cli_args", "cli_message"),
    [
        (
            dict(strategy="random", top_k=3, top_percent=1),
            "give exactly one of top_k and top_percent",
            ["--strategy", "random", "--top-k", "3", "--top-percent", "1"],
            "give exactly one of --top-k and --top-percent",
        ),
        (
            dict(top_k=3),
            "model is required (whose scores rank the pool) except for the random strategy",
            ["--top-k", "3"],
            "--model is required (whose scores rank the pool) except for the random strategy",
        ),
        (
            dict(strategy="random", top_k=3, where="nope = 1"),
            "where is not one SQL condition on the `samples` view (query failed: Binder Error",
            ["--strategy", "random", "--top-k", "3", "--where", "nope = 1"],
            "--where is not one SQL condition on the `samples` view (query failed: Binder Error",
        ),
    ],
)
def test_argument_errors_name_api_arguments_and_the_cli_rewords_them(
    filled, cli_run, call, api_message, cli_args, cli_message
):
    with pytest.raises(miwv.ArgumentError) as raised:
        filled.select(**call)
    assert str(raised.value).startswith(api_message)
    result = cli_run("select", *cli_args)
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: {cli_message}")
    assert filled.selections() == []  # nothing recorded


def test_unknown_names_are_user_errors_naming_what_exists(filled):
    with pytest.raises(miwv.UserError, match="no dataset 'dolly' in the catalog; datasets: mixed, tail"):
        filled.select(strategy="random", top_k=3, dataset="dolly")
    with pytest.raises(miwv.UserError, match="no scores for model 'qwen2.5-7b'; scored models: none"):
        filled.select("qwen2.5-7b", top_k=3)


def test_rows_in_memory_need_a_dataset(catalog_dir):
    with pytest.raises(miwv.ArgumentError, match="dataset is required when ingesting rows from memory"):
        miwv.open(catalog_dir).ingest(fixture_records()[:3])


def test_rows_in_memory_ingest_like_the_file_they_came_from(catalog_dir):
    import datasets
    import pandas as pd
    import pyarrow as pa

    cat = miwv.open(catalog_dir)
    rows = fixture_records()[:30]
    assert cat.ingest(rows, dataset="dicts").rows_new == 30
    assert cat.ingest(pd.DataFrame(rows), dataset="frame").rows_duplicate == 30
    assert cat.ingest(pa.Table.from_pylist(rows), dataset="arrow").rows_duplicate == 30
    assert cat.ingest(datasets.Dataset.from_list(rows), dataset="hf").rows_duplicate == 30
    assert set(cat.sql("SELECT sample_id FROM samples")["sample_id"].to_pylist()) == set(ids_of(rows))


# LLaMA-Factory: conversations with a system message and earlier turns, next to Alpaca rows.
def conversation(record: dict, system: str | None, earlier: list[tuple[str, str]]) -> dict:
    turns = [{"from": "system", "value": system}] if system else []
    for user, assistant in [*earlier, (record["instruction"], record["output"])]:
        turns += [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]
    return {"conversations": turns}


@pytest.fixture
def mixed_shapes(filled, tmp_path) -> miwv.Catalog:
    rows = fixture_records()
    chats = [
        conversation(rows[0], "You answer tersely.", [("Hi.", "Hello.")]),
        conversation(rows[1], None, [("What is 2 + 2?", "4."), ("And 3 + 3?", "6.")]),
        conversation(rows[2], "Be kind.", []),
    ]
    filled.ingest(write_jsonl(tmp_path / "chats.jsonl", chats), dataset="chats")
    return filled


def as_read_by_llamafactory(record: dict, entry: dict) -> int:
    """The sample id of the conversation LLaMA-Factory builds from `record` under `entry`."""
    if entry.get("formatting") == "sharegpt":
        tags = entry["tags"]
        messages = [(m[tags["role_tag"]], m[tags["content_tag"]]) for m in record[entry["columns"]["messages"]]]
        roles = {tags["system_tag"]: "system", tags["user_tag"]: "user", tags["assistant_tag"]: "assistant"}
        return Sample(messages=tuple((roles[r], c) for r, c in messages)).sample_id
    columns = entry["columns"]
    messages = [("system", record[columns["system"]])] if record[columns["system"]] else []
    for user, assistant in record[columns["history"]]:
        messages += [("user", user), ("assistant", assistant)]
    prompt = alpaca_user_text(record[columns["prompt"]], record[columns["query"]])
    messages += [("user", prompt), ("assistant", record[columns["response"]])]
    return Sample(messages=tuple(messages)).sample_id


@pytest.mark.parametrize("shape", ["alpaca", "messages"])
def test_llamafactory_folder_holds_the_selection_and_its_dataset_info_entry(mixed_shapes, tmp_path, shape):
    out = tmp_path / "lf_data"
    theirs = tmp_path / "their_data"  # a LLaMA-Factory data folder of the user's: never overwritten
    theirs.mkdir()
    (theirs / "dataset_info.json").write_text(json.dumps({"alpaca_en": {"file_name": "alpaca_en.json"}}))
    top = mixed_shapes.select(strategy="random", top_percent=100, dataset="chats")
    with pytest.raises(miwv.UserError, match="did not write"):
        top.write(theirs, for_="llamafactory")
    assert json.loads((theirs / "dataset_info.json").read_text()) == {"alpaca_en": {"file_name": "alpaca_en.json"}}
    written = top.write(out, shape=shape if shape == "messages" else None, for_="llamafactory")
    assert (written.file_format, written.shape, written.rows) == ("llamafactory", shape, 3)
    top.write(out, shape=shape if shape == "messages" else None, for_="llamafactory")  # its own folder: replaced
    info = json.loads((out / "dataset_info.json").read_text())
    assert list(info) == ["lf_data"]
    entry = info["lf_data"]
    assert entry["file_name"] == "lf_data.jsonl"
    if shape == "alpaca":
        assert "formatting" not in entry  # LLaMA-Factory's default
        assert entry["columns"] == {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        }
    else:
        assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "messages"}
        assert entry["tags"]["role_tag"] == "role" and entry["tags"]["system_tag"] == "system"
    records = [json.loads(line) for line in (out / entry["file_name"]).read_text().splitlines()]
    assert [as_read_by_llamafactory(r, entry) for r in records] == top.sample_ids
    with_history = [r for r in records if r.get("history")]
    assert shape == "messages" or sorted(len(r["history"]) for r in with_history) == [1, 2]


def test_llamafactory_alpaca_rows_keep_their_fields_and_the_cli_writes_the_same(filled, tmp_path):
    cli = CliRun(filled.path)
    out = tmp_path / "picked"
    result = cli.json("select", "--strategy", "random", "--top-k", "6", "--out", out, "--for", "llamafactory")
    assert result["output"] == {
        "path": str(out),
        "file_format": "llamafactory",
        "shape": "alpaca",
        "rows": 6,
        "note": None,
    }
    records = [json.loads(line) for line in (out / "picked.jsonl").read_text().splitlines()]
    originals = {to_sample(r, "alpaca").sample_id: r for r in fixture_records()}
    members = filled.sql(
        f"SELECT sample_id FROM selection_member WHERE selection_id = {result['selection_id']} ORDER BY rank"
    )["sample_id"].to_pylist()
    assert ids_of(records) == members
    for record, sample_id in zip(records, members, strict=True):
        source = originals[sample_id]
        assert (record["instruction"], record["input"], record["output"]) == (
            source["instruction"],
            source.get("input") or "",
            source["output"],
        )
        assert record["system"] == "" and record["history"] == []
    refused = cli(
        "select", "--strategy", "random", "--top-k", "2", "--out", tmp_path / "x.jsonl", "--for", "llamafactory"
    )
    assert refused.exit_code == 1 and "give --out a folder name, not a file" in refused.stderr
