"""Untrusted text (sample text, dataset, file and output names) reaches the terminal literally:
no escape sequence, control or bidi character is written raw, rich markup is shown as typed,
and `sql --csv` / `--json` still give the exact stored text."""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import CliRun, fixture_records, write_jsonl

# What a hostile row, dataset name or file name may hold, by what it would do if printed raw.
PAYLOADS = {
    "clear_screen": "\x1b[2J\x1b[H",
    "osc52_clipboard": "\x1b]52;c;cm0gLXJmIH4=\x07",
    "bell": "ding\x07",
    "backspace": "rm\x08\x08ok",
    "carriage_return": "safe\rEVIL",
    "c1_csi": "\x9b31mred",
    "bidi_override": "\u202etxt.exe",
    "bidi_isolate": "\u2066x\u2069",
    "line_separator": "a\u2028b",
    "delete": "a\x7fb",
    "tab_newline": "a\tb\nc",
    "markup_style": "[red]",
    "markup_link": "[link=e.vil]go[/link]",
    "markup_close": "x[/]",
}
MARKUP = ("[red]", "[link=e.vil]go[/link]", "x[/]")


def raw_controls(text: str) -> list[str]:
    """The characters of `text` a terminal acts on or that reorder what it shows (newline aside)."""
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


def ingest_hostile(cli_run: CliRun) -> None:
    """One file per payload, named with it, ingested as a dataset named with it, its row holding it;
    one invalid row (in `rejects`) too; and a selection of each markup payload's dataset."""
    base = fixture_records()
    for index, (name, payload) in enumerate(PAYLOADS.items()):
        row = {**base[index], "instruction": f"{payload} {base[index]['instruction']}", "note": payload}
        rows = [row, {"instruction": payload}] if name == "clear_screen" else [row]
        write_jsonl(hostile_path(cli_run, name, payload, ".jsonl"), rows)
        cli_run("ingest", hostile_path(cli_run, name, payload, ".jsonl"), "--dataset", f"d{payload}", "--skip-invalid")
    for markup in MARKUP:
        selected = cli_run("select", "--strategy", "random", "--top-k", "1", "--dataset", f"d{markup}")
        assert selected.exit_code == 0, selected.output


def hostile_path(run: CliRun, name: str, payload: str, suffix: str) -> Path:
    """A file beside the catalog whose name holds `payload` (a name cannot hold a slash)."""
    return run.catalog.parent / f"{name}{payload.replace('/', '|')}{suffix}"


@pytest.fixture
def hostile(catalog_built_by, cli_run) -> CliRun:
    catalog_built_by(ingest_hostile)
    return cli_run


def human_outputs(run: CliRun) -> dict[str, str]:
    """stdout of every human view of the hostile catalog (what a person sees)."""
    return {
        "sql_instruction": run("sql", "SELECT instruction FROM samples ORDER BY sample_id").stdout,
        "sql_datasets": run("sql", "SELECT datasets, extra FROM samples ORDER BY sample_id").stdout,
        "sql_rejects": run("sql", "SELECT * FROM rejects").stdout,
        "sql_ingests": run("sql", "SELECT dataset, path FROM ingest_batch").stdout,
        "status": run("status").stdout,
        "selections": run("selections").stdout,
    }


def test_no_control_or_bidi_character_reaches_the_terminal(hostile):
    for view, text in human_outputs(hostile).items():
        assert raw_controls(text) == [], view


@pytest.mark.parametrize(("name", "payload"), PAYLOADS.items(), ids=list(PAYLOADS))
def test_ingest_and_select_lines_show_names_literally(hostile, name, payload):
    rows = [{**fixture_records()[100], "instruction": payload}]
    ingested = hostile(
        "ingest", write_jsonl(hostile_path(hostile, "new", payload, ".jsonl"), rows), "--dataset", payload
    )
    out = hostile_path(hostile, "selected", payload, ".jsonl")
    selected = hostile("select", "--strategy", "random", "--top-k", "1", "--dataset", payload, "--out", out)
    for result in (ingested, selected):
        assert result.exit_code == 0 and raw_controls(result.stdout) == [], result.stdout
    assert visible_form(payload.replace("/", "|")) in selected.stdout


@pytest.mark.parametrize("markup", MARKUP)
def test_markup_is_shown_as_typed(hostile, markup):
    outputs = human_outputs(hostile)
    for view in ("sql_instruction", "status", "selections"):
        assert markup in outputs[view], view


def shown_as(character: str) -> str:
    """How the terminal shows a control character: newline as ⏎, the others escaped as in Python."""
    return {"\n": "⏎", "\t": "\\t", "\r": "\\r"}.get(character) or ascii(character)[1:-1]


@pytest.mark.parametrize(("name", "payload"), PAYLOADS.items(), ids=list(PAYLOADS))
def test_control_characters_are_shown_visibly(hostile, name, payload):
    shown = hostile("sql", f"SELECT instruction FROM samples WHERE instruction LIKE '{payload}%'").stdout
    assert "1 row" in shown
    assert visible_form(payload) in shown


def visible_form(text: str) -> str:
    return "".join(c if c.isprintable() else shown_as(c) for c in text)


@pytest.mark.parametrize(("name", "payload"), PAYLOADS.items(), ids=list(PAYLOADS))
def test_csv_and_json_keep_the_exact_text(hostile, name, payload):
    query = f"SELECT instruction, datasets FROM samples WHERE list_contains(datasets, 'd{payload}')"
    rows = [json.loads(line) for line in hostile("sql", query, "--json").stdout.split("\n") if line]
    assert [r["datasets"] for r in rows] == [[f"d{payload}"]]
    assert rows[0]["instruction"].startswith(payload + " ")
    table = list(csv.reader(io.StringIO(hostile("sql", query, "--csv").stdout, newline="")))
    assert table[1][0] == rows[0]["instruction"] and json.loads(table[1][1]) == [f"d{payload}"]


def test_the_progress_bar_shows_a_hostile_file_name_literally(cli_run, tmp_path):
    base = fixture_records()[0]
    rows = [{**base, "instruction": f"{i} {base['instruction']}"} for i in range(5000)]  # enough for a bar
    name = "".join([*MARKUP, *PAYLOADS.values()]).replace("/", "|")
    result = cli_run("ingest", write_jsonl(tmp_path / f"{name}.jsonl", rows), "--dataset", "d")
    assert result.exit_code == 0 and "reading [red][link=e.vil]" in result.stderr, result.stderr
    assert raw_controls(result.stderr) == []


def test_an_error_line_naming_hostile_datasets_shows_them_literally(hostile):
    result = hostile("select", "--strategy", "random", "--top-k", "1", "--dataset", "nope")
    assert result.exit_code != 0 and "d[red]" in result.stderr and "d\\x1b[2J" in result.stderr, result.stderr
    assert raw_controls(result.stderr) == [] and len(result.stderr.strip().splitlines()) == 1
