"""`score` with the real SmolLM2 on real rows: exact losses, batch invariance, incremental,
resumable, and unscorable samples recorded as such (never 0.0)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import duckdb
import pytest
import torch

from catalog import Catalog, db
from catalog.score import TemplateKey, register_scorer
from tests.conftest import REPO, CliRun, fixture_records, hold_read, write_jsonl

pytestmark = pytest.mark.slow  # the real SmolLM2 and MiniLM


def scores(catalog_dir) -> dict[int, dict]:
    with Catalog(catalog_dir).read() as conn:
        rows = db.query_arrow(conn, "SELECT * FROM miwv_scores ORDER BY sample_id").to_pylist()
    return {r["sample_id"]: r for r in rows}


def prepare(tmp_path, cli_run, records) -> None:
    assert cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", records), "--dataset", "mix").exit_code == 0
    assert cli_run("embed").exit_code == 0


def contract_loss(smollm2, user_turns: list[tuple[str, str]], response: str) -> float:
    """The documented contract, computed here from scratch: chat template of the turns with the
    generation prompt, then tokenizer(response) appended; HF's loss over the response only."""
    _, tokenizer, model = smollm2
    prompt = tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in user_turns], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    target = tokenizer(response, add_special_tokens=False).input_ids
    ids = torch.tensor([list(prompt) + target])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    with torch.inference_mode():
        return model(input_ids=ids, labels=labels).loss.item()


def test_scores_equal_the_contract_computed_independently(tmp_path, cli_run, catalog_dir, smollm2):
    records = fixture_records()[::6]  # 30 rows across the four sources
    prepare(tmp_path, cli_run, records)
    result = cli_run.json("score", "--model", "smollm2-135m")
    assert (result["pool"], result["samples"], result["unscorable"]) == (30, 30, 0)
    rows = scores(catalog_dir)
    assert len(rows) == 30 and all(r["status"] == "ok" for r in rows.values())
    with Catalog(catalog_dir).read() as conn:
        text = dict(db.execute(conn, "SELECT sample_id, user_text FROM samples"))
        response = dict(db.execute(conn, "SELECT sample_id, response FROM samples"))
    for sample_id, row in list(rows.items())[:8]:
        neighbour = row["neighbour_id"]
        zero = contract_loss(smollm2, [("user", text[sample_id])], response[sample_id])
        one = contract_loss(
            smollm2,
            [("user", text[neighbour]), ("assistant", response[neighbour]), ("user", text[sample_id])],
            response[sample_id],
        )
        assert abs(row["zero_shot_loss"] - zero) < 1e-4
        assert abs(row["one_shot_loss"] - one) < 1e-4
        assert row["miwv"] == row["one_shot_loss"] - row["zero_shot_loss"]
    assert cli_run.json("score", "--model", "smollm2-135m")["samples"] == 0  # nothing left


def test_a_llama_factory_history_file_is_scored_on_the_whole_conversation(tmp_path, cli_run, catalog_dir, smollm2):
    """Alpaca rows with `system` and `history` (LLaMA-Factory) become multi-turn samples, and their
    zero-shot pass is the whole conversation: system, the earlier exchanges, then this turn."""
    from tests.test_ingest_shapes import as_llama_factory, expected_messages, shared_rows

    records = as_llama_factory(shared_rows(8), turns=3)  # 6 conversations of 3 exchanges
    prepare(tmp_path, cli_run, records)
    result = cli_run.json("score", "--model", "smollm2-135m")
    assert (result["pool"], result["samples"], result["unscorable"]) == (6, 6, 0)
    rows = scores(catalog_dir)
    with Catalog(catalog_dir).read() as conn:
        ids = {
            tuple(m["content"] for m in messages): sample_id
            for sample_id, messages in db.execute(conn, "SELECT sample_id, messages FROM samples WHERE n_turns = 3")
        }
    assert len(ids) == 6
    for record in records:
        messages = expected_messages(record)
        row = rows[ids[tuple(m["content"] for m in messages)]]
        whole = contract_loss(smollm2, [(m["role"], m["content"]) for m in messages[:-1]], messages[-1]["content"])
        last_turn_only = contract_loss(smollm2, [("user", messages[-2]["content"])], messages[-1]["content"])
        assert row["status"] == "ok" and abs(row["zero_shot_loss"] - whole) < 1e-4
        assert abs(whole - last_turn_only) > 1e-3  # the earlier exchanges matter to the loss


def test_a_disk_full_batch_commit_is_one_line_and_keeps_the_batches_before_it(tmp_path, cli_run, catalog_dir):
    """The disk fills while `score` runs: the batch that cannot be committed ends the job with one
    line (exit 4), every batch committed before it stays, and the rerun computes only the rest."""
    prepare(tmp_path, cli_run, fixture_records()[::15])  # 12 rows
    command = [sys.executable, str(REPO / "cli.py"), "--catalog", str(catalog_dir), "score", "--model", "smollm2-135m"]
    process = subprocess.Popen(
        [*command, "--max-batch", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),  # writes past the limit fail with EFBIG
    )
    catalog = Catalog(catalog_dir, busy_timeout=30)
    committed = 0
    while not committed and process.poll() is None:
        time.sleep(0.3)
        with catalog.read() as conn:
            committed = db.execute(conn, "SELECT count(*) FROM zero_shot_loss")[0][0]
    assert committed, "score finished before the disk could fill"
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (1, 1))  # from now on no file of it may grow: a full disk
    _, err = process.communicate(timeout=600)
    assert process.returncode == 4 and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"Error: catalog file {catalog_dir / 'catalog.duckdb'}:") and "File too large" in message
    with catalog.read() as conn:
        kept = db.execute(conn, "SELECT count(*) FROM zero_shot_loss")[0][0]
    assert 0 < kept < 12
    assert cli_run("score", "--model", "smollm2-135m").exit_code == 0  # with room again, it finishes
    assert len(scores(catalog_dir)) == 12
    with catalog.read() as conn:
        assert db.execute(conn, "SELECT count(*) FROM zero_shot_loss WHERE run_id = 1")[0][0] == kept


def test_miwv_does_not_depend_on_batch_size(tmp_path, cli_run, catalog_dir):
    prepare(tmp_path, cli_run, fixture_records()[1::9])
    copy = tmp_path / "copy"
    shutil.copytree(catalog_dir, copy)
    assert cli_run("score", "--model", "smollm2-135m", "--max-batch", "8").exit_code == 0
    single = CliRun(copy)("score", "--model", "smollm2-135m", "--max-batch", "1")
    assert single.exit_code == 0, single.output
    batched, alone = scores(catalog_dir), scores(copy)
    assert batched.keys() == alone.keys() and len(batched) == 20
    assert max(abs(batched[s]["miwv"] - alone[s]["miwv"]) for s in batched) < 1e-4


def test_incremental_scoring_computes_only_new_and_changed_samples(tmp_path, cli_run, catalog_dir):
    records = fixture_records()[::4]  # 45 rows
    first, second = records[:25], records[25:]
    prepare(tmp_path, cli_run, first)
    cli_run("score", "--model", "smollm2-135m")
    before = {s: r["neighbour_id"] for s, r in scores(catalog_dir).items()}
    cli_run("ingest", write_jsonl(tmp_path / "more.jsonl", second), "--dataset", "mix")
    cli_run("embed")
    with Catalog(catalog_dir).read() as conn:
        links = dict(db.execute(conn, "SELECT sample_id, neighbour_id FROM neighbours"))
    changed = {s for s, n in before.items() if links[s] != n}
    assert changed, "adding 20 samples should change some old neighbours"
    result = cli_run.json("score", "--model", "smollm2-135m")
    assert (result["pool"], result["samples"]) == (45, 20 + len(changed))
    with Catalog(catalog_dir).read() as conn:
        zero_run2 = db.execute(conn, "SELECT count(*) FROM zero_shot_loss WHERE run_id = 2")[0][0]
        one_run2 = {r[0] for r in db.execute(conn, "SELECT sample_id FROM one_shot_loss WHERE run_id = 2")}
    assert zero_run2 == 20  # new samples only
    assert one_run2 == (set(links) - set(before)) | changed

    # From scratch on the same links: the same view, up to float noise.
    scratch = tmp_path / "scratch"
    shutil.copytree(catalog_dir, scratch)
    with duckdb.connect(str(scratch / "catalog.duckdb")) as con:
        for table in ("zero_shot_loss", "one_shot_loss", "score_current", "score_run", "scorer"):
            con.execute(f"DELETE FROM {table}")
    assert CliRun(scratch)("score", "--model", "smollm2-135m").exit_code == 0
    incremental, fresh = scores(catalog_dir), scores(scratch)
    assert incremental.keys() == fresh.keys() and len(fresh) == 45
    for s in fresh:
        assert incremental[s]["neighbour_id"] == fresh[s]["neighbour_id"]
        assert abs(incremental[s]["miwv"] - fresh[s]["miwv"]) < 1e-4


def test_unscorable_samples_are_recorded_with_null_losses(tmp_path, cli_run, catalog_dir):
    rows = fixture_records()
    short = [r for r in rows if len(r["instruction"]) + len(r["output"]) < 150][:6]
    long = [r for r in rows if len(r["output"]) > 2000][:3]
    lone = {"instruction": "Zqxj vlorp?", "input": "", "output": "Blarg."}
    prepare(tmp_path, cli_run, short + long)
    result = cli_run("score", "--model", "smollm2-135m", "--max-length", "150")
    assert result.exit_code == 0, result.output
    view = scores(catalog_dir)
    statuses = {r["status"] for r in view.values()}
    assert "too_long" in statuses and statuses <= {"ok", "too_long", "too_long_one_shot"}
    for row in view.values():
        if row["status"] == "too_long":
            assert row["zero_shot_loss"] is None and row["one_shot_loss"] is None and row["miwv"] is None
        if row["status"] == "too_long_one_shot":
            assert row["zero_shot_loss"] is not None and row["one_shot_loss"] is None
        if row["status"] == "ok":
            assert row["miwv"] is not None
    with Catalog(catalog_dir).read() as conn:
        assert db.execute(conn, "SELECT count(*) FROM zero_shot_loss WHERE loss = 0")[0][0] == 0

    # A sample alone (a fresh catalog with one row): zero-shot scored, status no_neighbour.
    alone_dir = tmp_path / "alone"
    run = CliRun(alone_dir)
    run("ingest", str(write_jsonl(tmp_path / "lone.jsonl", [lone])))
    run("embed")
    assert run("score", "--model", "smollm2-135m").exit_code == 0
    (row,) = scores(alone_dir).values()
    assert row["status"] == "no_neighbour" and row["neighbour_id"] is None and row["miwv"] is None
    assert row["zero_shot_loss"] > 0


def test_an_interrupted_score_resumes_without_duplicates(tmp_path, catalog_dir, cli_run):
    prepare(tmp_path, cli_run, fixture_records()[::3])  # 60 rows
    env = {**os.environ, "MIWV_CATALOG": str(catalog_dir)}
    command = [sys.executable, str(REPO / "cli.py"), "score", "--model", "smollm2-135m"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    catalog = Catalog(catalog_dir, busy_timeout=30)
    deadline = time.monotonic() + 240
    committed = 0
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(1)
        with catalog.read() as conn:
            committed = db.execute(conn, "SELECT count(*) FROM one_shot_loss")[0][0]
        if committed >= 10:
            break
    assert process.poll() is None, "score finished before it could be interrupted"
    process.send_signal(signal.SIGINT if committed % 2 else signal.SIGKILL)
    process.wait()
    with catalog.read() as conn:
        interrupted = db.execute(conn, "SELECT count(*) FROM one_shot_loss")[0][0]
        run = db.execute(conn, "SELECT finished_at FROM score_run WHERE run_id = 1")[0][0]
    assert 10 <= interrupted < 60 and run is None
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    with catalog.read() as conn:
        ones, distinct = db.execute(conn, "SELECT count(*), count(DISTINCT sample_id) FROM one_shot_loss")[0]
        scored = db.execute(conn, "SELECT count(*) FROM miwv_scores WHERE status = 'ok'")[0][0]
    assert ones == distinct == 60 and scored == 60
    status = json.loads(cli_run("status", "--json").output)["scores"]
    assert [(s["model"], s["scored"], s["stale"], s["unscored"]) for s in status] == [("smollm2-135m", 60, 0, 0)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model"], "neither an alias (smollm2-135m, qwen2.5-7b"),
        (["--model", "qwen2.5-7b"], "Qwen/Qwen2.5-7B is not in the local Hugging Face cache"),
        (["--model", "smollm2-135m", "--embedder", "bge"], "no embedder 'bge' in the catalog"),
    ],
)
def test_score_errors_are_one_clear_line(tmp_path, cli_run, args, message):
    prepare(tmp_path, cli_run, fixture_records()[:3])
    result = cli_run("score", *args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_score_before_embed_says_what_to_run(tmp_path, cli_run):
    cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", fixture_records()[:3]))
    result = cli_run("score", "--model", "smollm2-135m")
    assert result.exit_code == 1 and "run `python cli.py embed` first" in result.output


def test_a_refused_score_writes_nothing_and_an_empty_scorer_is_never_the_default(tmp_path, cli_run, catalog_dir):
    prepare(tmp_path, cli_run, fixture_records()[:12])
    refused = cli_run("score", "--model", "smollm2-135m", "--dataset", "no-such-dataset")
    assert refused.exit_code == 1 and "no dataset 'no-such-dataset'" in refused.output
    with Catalog(catalog_dir).read() as conn:
        assert db.execute(conn, "SELECT count(*) FROM scorer")[0][0] == 0
    assert cli_run("score", "--model", "smollm2-135m").exit_code == 0
    # What a run stopped before its first commit leaves: a newer scorer of the model with no losses.
    register_scorer(
        Catalog(catalog_dir),
        "smollm2-135m",
        "elsewhere.gguf",
        "f" * 64,
        TemplateKey("chat", 2, "c0ffee"),
        64,
        "float32",
    )
    selected = cli_run("select", "--model", "smollm2-135m", "--top-k", "3", "--out", tmp_path / "top.jsonl")
    assert selected.exit_code == 0, selected.output
    assert "eligible 12" in selected.output and "selected 3" in selected.output
    report = cli_run.json("report", "--model", "smollm2-135m", "--out", tmp_path / "report")
    assert report["scorer"].startswith("scorer 1:")  # not the newer, empty scorer 2


def test_score_waits_for_a_long_reader_and_stores_everything(tmp_path, catalog_dir, cli_run):
    """A read-only query holding the catalog longer than the busy timeout delays commits, never kills the run."""
    prepare(tmp_path, cli_run, fixture_records()[::15])  # 12 rows
    env = {**os.environ, "MIWV_CATALOG": str(catalog_dir), "MIWV_BUSY_TIMEOUT": "1"}
    command = [sys.executable, str(REPO / "cli.py"), "score", "--model", "smollm2-135m", "--max-batch", "4"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    catalog = Catalog(catalog_dir, busy_timeout=30)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        with catalog.read() as conn:
            if db.execute(conn, "SELECT count(*) FROM zero_shot_loss")[0][0]:
                break
    assert process.poll() is None, "score finished before the reader came"
    reader = hold_read(catalog_dir / "catalog.duckdb")
    waited = ""
    for line in process.stderr:  # the reader holds on until the writer has waited past the busy timeout
        if "waiting for the catalog" in line:
            waited = line
            break
    reader.communicate("release\n")
    stdout, _ = process.communicate(timeout=900)
    assert process.returncode == 0
    assert f"waiting for the catalog (catalog {catalog_dir} is busy: process {reader.pid}" in waited
    assert "pool 12, 12 needed passes" in stdout
    with catalog.read() as conn:
        zeros, ones = db.execute(
            conn, "SELECT (SELECT count(*) FROM zero_shot_loss), (SELECT count(*) FROM one_shot_loss)"
        )[0]
        finished = db.execute(conn, "SELECT finished_at IS NOT NULL FROM score_run")[0][0]
    assert ones == 12 and zeros >= 12 and finished
