"""`report --out` writes only where `select --out` may: a new folder or one it wrote itself, never
inside the catalog, never over a user's files; a refusal is one line and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.export import MARKER
from tests.conftest import CliRun, fixture_records, write_jsonl

pytestmark = pytest.mark.slow  # the real MiniLM and SmolLM2

MODEL = "smollm2-135m"
FILES = ["losses.png", "miwv_histogram.png", "summary.md"]


def ingest_embed_and_score_six(cli_run: CliRun) -> None:
    cli_run("ingest", write_jsonl(cli_run.catalog.parent / "d.jsonl", fixture_records()[::15]), "--dataset", "d")
    assert cli_run("embed").exit_code == 0
    assert cli_run("score", "--model", MODEL, "--limit", "6").exit_code == 0


@pytest.fixture
def scored(catalog_built_by, cli_run) -> CliRun:
    catalog_built_by(ingest_embed_and_score_six)
    return cli_run


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(result, *words: str) -> None:
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and all(w in result.output for w in words), result.output


def test_a_users_folder_is_refused_and_left_untouched(scored, tmp_path):
    mine = tmp_path / "work" / "mine"
    mine.mkdir(parents=True)
    (mine / "summary.md").write_text("my own notes\n")
    (mine / "losses.png").write_bytes(b"not a plot")
    before = tree(mine)
    assert_refused(scored("report", "--model", MODEL, "--out", mine), str(mine), "did not write")
    assert tree(mine) == before and [p.name for p in mine.parent.iterdir()] == ["mine"]


@pytest.mark.parametrize("inside", [".", "report", "deeper/report"])
def test_the_catalog_and_any_folder_in_it_are_refused(scored, catalog_dir, inside):
    before = tree(catalog_dir)
    out = catalog_dir / inside
    assert_refused(scored("report", "--model", MODEL, "--out", out), "inside the catalog")
    assert tree(catalog_dir) == before and not (catalog_dir / "deeper").exists()


def test_a_new_folder_is_written_and_can_be_written_again(scored, tmp_path):
    out = tmp_path / "reports" / "smollm2"
    first = scored("report", "--model", MODEL, "--out", out)
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, MARKER])
    (out / "summary.md").write_text("stale\n")
    second = scored("report", "--model", MODEL, "--out", out)
    assert second.exit_code == 0, second.output
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, MARKER])
    assert (out / "summary.md").read_text().startswith(f"# MIWV of {MODEL}")
    assert [p.name for p in out.parent.iterdir()] == ["smollm2"]  # no staging folder left beside it


def test_a_users_file_is_refused_by_the_api_too(scored, tmp_path):
    import miwv

    mine = tmp_path / "work" / "report"
    mine.parent.mkdir()
    mine.write_text("my own file\n")
    with pytest.raises(miwv.UserError, match="not a folder"):
        miwv.open(scored.catalog).report(MODEL, mine)
    assert mine.read_text() == "my own file\n" and [p.name for p in mine.parent.iterdir()] == ["report"]
