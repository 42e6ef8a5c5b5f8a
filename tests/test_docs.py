"""The README's examples are tested, so the docs cannot drift from the code (as sqlite-utils
tests its docs): its Python blocks run as written, and every command is documented."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from cli import cli
from tests.conftest import FIXTURE, REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
DOCUMENTED_COMMANDS = set(re.findall(r"^python cli\.py (\w+)", README, re.M))


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    assert PYTHON_BLOCKS, "README.md has no ```python blocks"
    (tmp_path / "tests" / "data").mkdir(parents=True)
    shutil.copy(FIXTURE, tmp_path / "tests" / "data" / FIXTURE.name)  # the paths it names, from a clean dir
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in PYTHON_BLOCKS:
        exec(compile(block, str(REPO / "README.md"), "exec"), namespace)
    # What its comments say it does, it does.
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == ["180 new samples", "12"]
    top = namespace["top"]
    assert printed[2].startswith(f"{top.selection_id} 3 ")
    assert len((tmp_path / "top3.jsonl").read_text().splitlines()) == 3
    info = json.loads((tmp_path / "lf_data" / "dataset_info.json").read_text())
    assert info["lf_data"]["file_name"] == "lf_data.jsonl" and (tmp_path / "lf_data" / "lf_data.jsonl").is_file()
    assert namespace["cat"].selections()[0]["selection_id"] == top.selection_id


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_is_documented_with_help(name):
    assert name in DOCUMENTED_COMMANDS
    assert cli.commands[name].help
