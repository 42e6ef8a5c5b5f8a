"""`score --template` end to end on real rows with the real SmolLM2: the Alpaca fields reach the
prompt, Jinja files work, and scores from the old rendering are never reused."""

from __future__ import annotations

import json

import pytest
import torch

import miwv
from catalog import Catalog, db
from tests.conftest import REPO, CliRun, fixture_records, write_jsonl
from tests.test_templates import BAD_TEMPLATES

pytestmark = pytest.mark.slow  # embeds and scores with the real models

STANFORD_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)


def zero_shot_losses(catalog_dir, scorer_id: int) -> dict[int, float]:
    with Catalog(catalog_dir).read() as conn:
        return dict(
            db.execute(conn, "SELECT sample_id, loss FROM zero_shot_loss WHERE scorer_id = $s", {"s": scorer_id})
        )


def test_rescoring_after_the_template_revision_makes_a_second_scorer(tmp_path, cli_run, catalog_dir, smollm2):
    records = fixture_records()[:6]  # rows 0, 1, 3, 5 have an input
    assert cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", records), "--dataset", "mix").exit_code == 0
    assert cli_run("embed").exit_code == 0
    assert cli_run("score", "--model", "smollm2-135m", "--template", "alpaca").exit_code == 0
    with Catalog(catalog_dir).write() as conn:  # as migration 0006 leaves a scorer of the old rendering
        db.execute(conn, "UPDATE scorer SET template_revision = 1, template_hash = NULL")
        db.execute(conn, "UPDATE zero_shot_loss SET loss = 99.0")  # marks the old losses
    old = zero_shot_losses(catalog_dir, 1)

    result = cli_run("score", "--model", "smollm2-135m", "--template", "alpaca")
    assert result.exit_code == 0, result.output
    assert "scorer 2, alpaca template" in result.output and "pool 6, 6 needed passes" in result.output
    status = json.loads(cli_run("status", "--json").output)["scores"]
    assert [(s["scorer_id"], s["template"], s["template_revision"], s["scored"]) for s in status] == [
        (1, "alpaca", 1, 6),
        (2, "alpaca", 2, 6),
    ]
    assert zero_shot_losses(catalog_dir, 1) == old
    new = zero_shot_losses(catalog_dir, 2)
    assert set(new) == set(old) and 99.0 not in new.values()

    # the new loss of a sample with an input is Stanford's input form, computed here from scratch
    _, tokenizer, model = smollm2
    with Catalog(catalog_dir).read() as conn:
        sample_id, instruction, input, output = db.execute(
            conn,
            "SELECT sample_id, instruction, input, output FROM samples WHERE input <> '' ORDER BY sample_id LIMIT 1",
        )[0]
    prompt = tokenizer(STANFORD_INPUT.format(instruction=instruction, input=input), add_special_tokens=False).input_ids
    ids = torch.tensor([prompt + tokenizer(output, add_special_tokens=False).input_ids])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    with torch.inference_mode():
        assert abs(new[sample_id] - model(input_ids=ids, labels=labels).loss.item()) < 1e-4

    report = cli_run("report", "--model", "smollm2-135m", "--scorer", "1", "--out", tmp_path / "report")
    assert report.exit_code == 0 and "template alpaca (revision 1)" in report.output
    assert "template alpaca (revision 1)" in (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")


def test_a_jinja_file_is_a_template_and_its_name_is_recorded(tmp_path, cli_run, catalog_dir):
    assert cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", fixture_records()[:4])).exit_code == 0
    assert cli_run("embed").exit_code == 0
    vicuna = REPO / "tests" / "data" / "vicuna.jinja"
    result = cli_run("score", "--model", "smollm2-135m", "--template", vicuna)
    assert result.exit_code == 0, result.output
    assert "vicuna.jinja template" in result.output and "pool 4, 4 needed passes" in result.output
    again = cli_run("score", "--model", "smollm2-135m", "--template", vicuna)
    assert "pool 4, 0 needed passes" in again.output  # same file, same scorer
    missing = cli_run("score", "--model", "smollm2-135m", "--template", tmp_path / "nope.jinja")
    assert missing.exit_code == 1 and "nope.jinja: no such file" in missing.output


def ingest_and_embed_four(cli_run: CliRun) -> None:
    assert cli_run("ingest", write_jsonl(cli_run.catalog.parent / "rows.jsonl", fixture_records()[:4])).exit_code == 0
    assert cli_run("embed").exit_code == 0


def scorers_and_runs(catalog_dir) -> list[int]:
    with Catalog(catalog_dir).read() as conn:
        return [db.execute(conn, f"SELECT count(*) FROM {table}")[0][0] for table in ("scorer", "score_run")]


@pytest.mark.parametrize(("content", "problem"), BAD_TEMPLATES.values(), ids=BAD_TEMPLATES)
def test_a_bad_template_is_refused_in_one_line_before_anything_is_written(
    tmp_path, cli_run, catalog_dir, catalog_built_by, content, problem
):
    catalog_built_by(ingest_and_embed_four)
    path = tmp_path / "elsewhere" / "bad.jinja"
    path.parent.mkdir()
    path.write_bytes(content)
    result = cli_run("score", "--model", "smollm2-135m", "--template", path)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [result.output.strip()], result.output
    assert f"--template {path}: " in result.output and problem in result.output, result.output
    assert scorers_and_runs(catalog_dir) == [0, 0]


@pytest.mark.parametrize(("content", "problem"), BAD_TEMPLATES.values(), ids=BAD_TEMPLATES)
def test_the_api_refuses_a_bad_template_before_anything_is_written(
    tmp_path, catalog_dir, catalog_built_by, content, problem
):
    catalog_built_by(ingest_and_embed_four)
    path = tmp_path / "bad.jinja"
    path.write_bytes(content)
    with pytest.raises(miwv.ArgumentError) as refused:
        miwv.open(catalog_dir).score("smollm2-135m", template=str(path))
    assert refused.value.arguments == ("template",) and f"template {path}: " in str(refused.value)
    assert problem in str(refused.value)
    assert scorers_and_runs(catalog_dir) == [0, 0]
