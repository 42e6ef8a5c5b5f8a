"""Sources other than one file, on real rows: Hugging Face save_to_disk folders, folders of Parquet
shards, hf: through datasets.load_dataset, --columns, and ingest_rows for rows held in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog import Catalog, db
from catalog.errors import InvalidInput
from catalog.ingest import ingest_rows
from catalog.records import to_sample
from tests.conftest import write_jsonl
from tests.test_ingest import sample_ids, table_counts
from tests.test_ingest_shapes import as_llama_factory, shared_rows


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """load_dataset's cache in a temp dir, so tests never touch (or depend on) the user's."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def rows_for_test() -> list[dict]:
    """59 real Dolly rows, every fifth in LLaMA-Factory form (system + one history turn), the rest with an
    empty system and history (as one LLaMA-Factory file holds them)."""
    rows = shared_rows(60)
    chats = as_llama_factory(rows, turns=2)  # chats[i] continues rows[i]
    return [chats[i] if (i + 1) % 5 == 0 else {**rows[i + 1], "system": "", "history": []} for i in range(59)]


def ids(records: list[dict]) -> set[int]:
    return {to_sample(r, "alpaca").sample_id for r in records}


def write_shards(folder: Path, records: list[dict], split: str = "train", shards: int = 2) -> list[Path]:
    """Hub-style shards: folder/data/<split>-0000i-of-0000n.parquet."""
    table = pa.Table.from_pylist(records)
    size = -(-len(records) // shards)
    paths = []
    for i in range(shards):
        path = folder / "data" / f"{split}-{i:05d}-of-{shards:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(i * size, size), path)
        paths.append(path)
    return paths


def save_to_disk(folder: Path, splits: dict[str, list[dict]]) -> Path:
    import datasets

    datasets.disable_progress_bars()
    loaded = {name: datasets.Dataset.from_list(records) for name, records in splits.items()}
    (datasets.DatasetDict(loaded) if len(loaded) > 1 else loaded[next(iter(loaded))]).save_to_disk(str(folder))
    return folder


def test_the_same_rows_from_jsonl_parquet_shards_save_to_disk_and_hf_give_the_same_samples(
    tmp_path, catalog_dir, cli_run, hf_cache
):
    records = rows_for_test()
    assert any(r["history"] for r in records) and any(not r["history"] for r in records)
    expected = ids(records)
    jsonl = write_jsonl(tmp_path / "rows.jsonl", records)
    shards = tmp_path / "shards"
    write_shards(shards, records)
    write_shards(shards, shared_rows(5, "code_alpaca_2k.jsonl"), split="test", shards=1)
    saved = save_to_disk(tmp_path / "saved", {"train": records, "test": shared_rows(3, "code_alpaca_2k.jsonl")})
    local_hub = tmp_path / "hub"
    local_hub.mkdir()
    write_jsonl(local_hub / "train.jsonl", records)

    sources = {
        "jsonl": [jsonl],
        "parquet-dir": [shards, "--split", "train"],
        "hf-disk": [saved, "--split", "train"],
        "hf-hub": [f"hf:{local_hub}", "--split", "train"],
    }
    for file_format, args in sources.items():
        catalog = tmp_path / f"catalog-{file_format}"
        result = cli_run("--catalog", catalog, "ingest", *args, "--dataset", "dolly", "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        assert (summary["file_format"], summary["rows_read"], summary["rows_new"]) == (
            file_format,
            len(records),
            60 - 1,
        )
        assert sample_ids(catalog) == expected, file_format
        with Catalog(catalog).read() as conn:
            [(sha,)] = db.execute(conn, "SELECT file_sha256 FROM ingest_batch")
            messages = dict(db.execute(conn, "SELECT sample_id, messages FROM samples"))
        assert len(sha) == 64
        if file_format == "jsonl":
            reference = messages
        assert messages == reference, file_format  # history turns survive Parquet and Arrow alike


def test_a_folder_of_shards_at_any_depth_is_read_in_name_order_and_fingerprinted(tmp_path, cli_run, catalog_dir):
    records = shared_rows(30)
    folder = tmp_path / "nested"
    for name, part in (("b/2.parquet", records[20:]), ("a/x/1.parquet", records[:10]), ("a/y.parquet", records[10:20])):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part), folder / name)
    first = json.loads(cli_run("ingest", folder, "--json").output)
    assert (first["dataset"], first["rows_read"], first["rows_new"]) == ("nested", 30, 30)
    with Catalog(catalog_dir).read() as conn:
        rows = dict(db.execute(conn, "SELECT sample_id, source_row FROM membership"))
    assert [rows[to_sample(r, "alpaca").sample_id] for r in records] == list(range(1, 31))  # a/x/1, a/y, b/2

    pq.write_table(pa.Table.from_pylist(records[20:29]), folder / "b/2.parquet")
    second = json.loads(cli_run("ingest", folder, "--json").output)
    with Catalog(catalog_dir).read() as conn:
        shas = [row[0] for row in db.execute(conn, "SELECT file_sha256 FROM ingest_batch ORDER BY ingest_id")]
    assert second["rows_new"] == 0 and shas[0] != shas[1]


def test_a_bad_row_in_a_shard_is_named_by_its_row_in_that_shard(tmp_path, catalog_dir, cli_run):
    records = shared_rows(20)
    records[13] = {**records[13], "output": "  "}
    folder = tmp_path / "shards"
    write_shards(folder, records)  # 10 rows a shard: the bad row is row 4 of the second
    result = cli_run("ingest", folder)
    assert result.exit_code == 2
    assert f"{folder}: row 4 of shard data/train-00001-of-00002.parquet: empty response" in result.output
    assert not (catalog_dir / "catalog.duckdb").exists()

    assert cli_run("ingest", folder, "--skip-invalid").exit_code == 0
    with Catalog(catalog_dir).read() as conn:
        [(line, reason)] = db.execute(conn, "SELECT line, reason FROM rejects")
    assert line == 14 and reason.startswith("row 4 of shard data/train-00001-of-00002.parquet: empty response")


def test_source_problems_are_one_clear_error(tmp_path, cli_run, catalog_dir, hf_cache):
    empty = tmp_path / "empty"
    empty.mkdir()
    saved = save_to_disk(tmp_path / "saved", {"train": shared_rows(3), "test": shared_rows(2)})
    hub_folder = tmp_path / "hub"
    hub_folder.mkdir()
    write_jsonl(hub_folder / "train.jsonl", shared_rows(3))
    write_jsonl(hub_folder / "test.jsonl", shared_rows(2))
    cases = {
        (str(empty),): "no .parquet files and not a `datasets` save_to_disk folder",
        (str(saved),): "has splits train, test; choose one with --split",
        (str(saved), "--split", "dev"): "has splits train, test; there is no split 'dev'",
        (str(save_to_disk(tmp_path / "one", {"train": shared_rows(2)})), "--split", "train"): "holds one dataset",
        ("hf:no-such-org/no-such-dataset-xyz",): "hf:no-such-org/no-such-dataset-xyz: cannot load it",
        (f"hf:{hub_folder}",): f"hf:{hub_folder} has splits train, test; choose one with --split",
        (f"hf:{hub_folder}", "--split", "dev"): f"hf:{hub_folder}: cannot load it (Unknown split",
        (str(write_jsonl(tmp_path / "a.jsonl", shared_rows(2))), "--split", "train"): "--split applies to folders",
    }
    for args, message in cases.items():
        result = cli_run("ingest", *args)
        assert result.exit_code == 2, args
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (catalog_dir / "catalog.duckdb").exists()


def as_prompt_completion(record: dict) -> dict:
    return {"prompt": record["instruction"], "context": record["input"], "completion": record["output"], "id": 1}


def test_columns_rename_fields_before_the_shape_is_detected(tmp_path, catalog_dir, cli_run):
    records = shared_rows(25)
    path = write_jsonl(tmp_path / "pc.jsonl", [as_prompt_completion(r) for r in records])
    assert "cannot tell the record format" in cli_run("ingest", path).output
    result = cli_run("ingest", path, "--columns", "instruction=prompt,input=context,output=completion", "--json")
    assert json.loads(result.output)["record_shape"] == "alpaca"
    assert sample_ids(catalog_dir) == ids(records)
    with Catalog(catalog_dir).read() as conn:
        extras = [json.loads(row[0]) for row in db.execute(conn, "SELECT extra FROM samples")]
    assert extras == [{"id": 1}] * len(records)  # unmapped fields stay extras

    chats = [
        {"dialogue": [{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}]}
        for r in records
    ]
    chat_path = write_jsonl(tmp_path / "chat.jsonl", chats)
    chat = json.loads(cli_run("ingest", chat_path, "--columns", "conversations=dialogue", "--json").output)
    assert chat["record_shape"] == "sharegpt"


def test_a_bad_column_mapping_is_refused_before_anything_is_written(tmp_path, catalog_dir, cli_run):
    path = write_jsonl(tmp_path / "pc.jsonl", [as_prompt_completion(r) for r in shared_rows(5)])
    parquet = tmp_path / "pc.parquet"
    pq.write_table(pa.Table.from_pylist([as_prompt_completion(r) for r in shared_rows(5)]), parquet)
    cases = {
        "prompt=instruction": "--columns: unknown target prompt; targets are instruction, input, output",
        "instruction=prompt,output=answer": "has no field answer; its fields: prompt, context, completion, id",
        "instruction=prompt,output=completion,input=id,system=context,history=missing": "has no field missing",
        "instruction=prompt,input=prompt,output=completion": "prompt is mapped to more than one target",
        "instruction=": "expected TARGET=FIELD pairs",
    }
    for columns, message in cases.items():
        for source in (path, parquet):
            result = cli_run("ingest", source, "--columns", columns)
            assert result.exit_code == 2 and message in result.output, result.output
    clash = write_jsonl(tmp_path / "clash.jsonl", [{**as_prompt_completion(r), "output": "x"} for r in shared_rows(3)])
    result = cli_run("ingest", clash, "--columns", "instruction=prompt,output=completion")
    assert result.exit_code == 2 and "already has a field output" in result.output
    assert not (catalog_dir / "catalog.duckdb").exists()


@pytest.mark.parametrize("form", ["python", "generator", "pandas", "arrow", "hf-dataset"])
def test_ingest_rows_takes_every_in_memory_form_and_matches_the_file(tmp_path, form):
    import datasets
    import pandas as pd

    records = rows_for_test()
    forms = {
        "python": lambda: records,
        "generator": lambda: (r for r in records),
        "pandas": lambda: pd.DataFrame(records),
        "arrow": lambda: pa.Table.from_pylist(records),
        "hf-dataset": lambda: datasets.Dataset.from_list(records).shuffle(seed=0),
    }
    catalog = Catalog(tmp_path / "catalog")
    result = ingest_rows(catalog, forms[form](), "dolly", source="notebook")
    assert (result.path, result.dataset, result.record_shape, result.rows_new) == ("notebook", "dolly", "alpaca", 59)
    assert result.file_format == {"generator": "python"}.get(form, form)
    assert sample_ids(catalog.path) == ids(records)
    again = ingest_rows(catalog, forms[form](), "dolly")
    assert (again.rows_new, again.rows_duplicate, again.path) == (0, 59, "<rows>")


def test_ingest_rows_is_all_or_nothing_and_takes_columns(tmp_path):
    records = shared_rows(12)
    catalog = Catalog(tmp_path / "catalog")
    bad = [as_prompt_completion(r) for r in records]
    bad[7]["completion"] = ""
    columns = {"instruction": "prompt", "input": "context", "output": "completion"}
    with pytest.raises(InvalidInput, match="notebook: row 8: empty response"):
        ingest_rows(catalog, bad, "dolly", columns=columns, source="notebook")
    assert not catalog.exists()
    result = ingest_rows(catalog, bad, "dolly", columns=columns, skip_invalid=True)
    assert (result.rows_new, result.rows_rejected) == (11, 1)
    assert table_counts(catalog.path)["ingest_reject"] == 1
    with pytest.raises(InvalidInput, match="rows must be a list of dicts"):
        ingest_rows(catalog, {"instruction": ["a"], "output": ["b"]}, "dolly")


def test_a_dataframe_with_missing_cells_or_mixed_types_is_validated_row_by_row(tmp_path):
    import pandas as pd

    rows = shared_rows(200)
    records = [r for r in rows if not r["input"]][:5] + [r for r in rows if r["input"]][:5]
    without_input = [{k: v for k, v in r.items() if k != "input"} for r in records[:5]]  # NaN in the frame
    mixed = [*records[5:], {**records[0], "instruction": "Count.", "input": 7}]
    catalog = Catalog(tmp_path / "catalog")
    first = ingest_rows(catalog, pd.DataFrame(without_input + records[5:]), "dolly")
    assert first.rows_new == 10 and sample_ids(catalog.path) == ids(records)
    with pytest.raises(InvalidInput, match="<rows>: row 6: field 'input' must be a string, got int"):
        ingest_rows(catalog, pd.DataFrame(mixed), "dolly")
