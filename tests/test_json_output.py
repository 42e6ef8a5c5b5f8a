"""--json: every command that reports prints one JSON object on stdout, with the fields of the
Python API's result (as_dict()), so scripts never parse prose."""

from __future__ import annotations

import json
from dataclasses import fields
from types import SimpleNamespace

import pytest

import miwv
from cli import cli
from tests.conftest import CliRun, fixture_records, write_jsonl


def api_fields(result_class) -> set[str]:
    return {f.name for f in fields(result_class) if f.repr}


@pytest.mark.parametrize("name", sorted(set(cli.commands) - {"serve"}))  # serve reports nothing: it serves
def test_every_command_has_json_output(name):
    assert any("--json" in param.opts for param in cli.commands[name].params)


def test_stdout_is_one_json_object_even_when_the_prose_has_several_lines(tmp_path, cli_run):
    rows = write_jsonl(tmp_path / "rows.jsonl", fixture_records()[:40])
    result = cli_run("ingest", rows, "--dataset", "d", "--json")
    assert isinstance(json.loads(result.stdout), dict)
    ingested = cli_run.json("ingest", rows, "--dataset", "d")
    assert (ingested["rows_read"], ingested["rows_new"], ingested["rows_duplicate"]) == (40, 0, 40)


def test_select_selections_upgrade_models_and_status(tmp_path, cli_run):
    cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", fixture_records()[:40]), "--dataset", "d")
    selected = cli_run.json("select", "--strategy", "random", "--top-k", "4", "--out", tmp_path / "four.jsonl")
    assert set(selected) == api_fields(miwv.Selection)
    assert (selected["selected"], selected["pool_size"], selected["output"]["rows"]) == (4, 40, 4)
    listed = cli_run.json("selections")
    assert [s["selection_id"] for s in listed["selections"]] == [selected["selection_id"]]
    upgraded = cli_run.json("upgrade")
    assert set(upgraded) == api_fields(miwv.Upgraded) and upgraded["revision"]
    aliases = cli_run.json("models")["models"]
    assert [a["alias"] for a in aliases][0] == "smollm2-135m" and set(aliases[0]) == {"alias", "source", "local"}
    assert cli_run.json("status")["samples"] == 40


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> SimpleNamespace:
    """24 real rows embedded (MiniLM) and 8 of them scored (SmolLM2): the CLI and its --json results."""
    root = tmp_path_factory.mktemp("json")
    run = CliRun(root / "catalog")
    run("ingest", write_jsonl(root / "rows.jsonl", fixture_records()[::7][:24]), "--dataset", "d")
    embedded = run.json("embed")
    return SimpleNamespace(
        run=run, embedded=embedded, scored=run.json("score", "--model", "smollm2-135m", "--limit", "8")
    )


@pytest.mark.slow
def test_embed_and_neighbours(scored):
    embedded = scored.embedded
    assert set(embedded) == api_fields(miwv.Embedded) and set(embedded["neighbours"]) == api_fields(miwv.Linked)
    assert (embedded["embedder"], embedded["embedded"], embedded["total"]) == ("minilm", 24, 24)
    assert embedded["neighbours"]["changed"] == 24
    again = scored.run.json("neighbours")
    assert (again["mode"], again["changed"], again["samples"]) == ("up-to-date", 0, 24)


@pytest.mark.slow
def test_score_select_and_report(scored, tmp_path):
    result = scored.scored
    assert set(result) == api_fields(miwv.Scored)
    assert (result["model"], result["pool"], result["samples"], result["not_linked"]) == ("smollm2-135m", 8, 8, 0)
    assert result["passes"] >= 16  # a zero- and a one-shot pass each, plus examples' zero-shot passes for the cache
    ok = scored.run.json("sql", "SELECT count(*) AS n FROM miwv_scores WHERE status = 'ok'")["n"]
    selected = scored.run.json("select", "--model", "smollm2-135m", "--top-k", "3")
    assert (selected["model"], selected["embedder"], selected["eligible"], selected["selected"]) == (
        "smollm2-135m",
        "minilm",
        ok,
        3,
    )
    reported = scored.run.json("report", "--model", "smollm2-135m", "--out", tmp_path / "report")
    assert set(reported) == api_fields(miwv.Reported)
    assert reported["summary"][-1]["dataset"] == "(all)" and reported["summary"][-1]["scored"] == ok
    assert sorted(p.rsplit("/", 1)[1] for p in reported["files"]) == ["losses.png", "miwv_histogram.png", "summary.md"]
