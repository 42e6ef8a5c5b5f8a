"""The sample page rebuilds the inputs a scorer saw from what the catalog recorded and what this
machine holds: the template text stored with the scorer (never a file of that name in the
server's working directory), the tokenizer from the model cache or a local folder (never a
download, a GGUF conversion or the weights); otherwise it says how to get them."""

from __future__ import annotations

import hashlib
import html
import os
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from catalog import Catalog, db
from scoring.models import cache_dir, resolve_model
from scoring.templates import TEMPLATE_REVISION
from tests.conftest import REPO, CliRun, fixture_records, write_jsonl
from web import tokens
from web.app import create_app

pytestmark = pytest.mark.slow  # embeds and scores with the real MiniLM and SmolLM2

MODEL = "smollm2-135m"
VICUNA = REPO / "tests" / "data" / "vicuna.jinja"
# Files named like the scored template in the server's working directory, none of them its text.
SAME_NAME = {
    "none": None,
    "broken": "{% for m in messages %}",
    "different": "HUMAN: {{ messages[-1]['content'] }} BOT:",
    "looping": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
}


def score_with_a_template_by_full_path(cli_run: CliRun) -> None:
    """Four rows, two scored with a copy of vicuna.jinja in a folder of its own, named by full path."""
    root = cli_run.catalog.parent
    assert cli_run("ingest", write_jsonl(root / "rows.jsonl", fixture_records()[:4])).exit_code == 0
    assert cli_run("embed").exit_code == 0
    template = root / "templates" / "vicuna.jinja"
    template.parent.mkdir()
    template.write_text(VICUNA.read_text(encoding="utf-8"), encoding="utf-8")
    result = cli_run("score", "--model", MODEL, "--template", template, "--limit", "2")
    assert result.exit_code == 0, result.output


@pytest.fixture
def scored(catalog_built_by, catalog_dir: Path) -> int:
    """The id of a sample scored by scorer 1 (vicuna.jinja); the tokenizer cache starts empty."""
    catalog_built_by(score_with_a_template_by_full_path)
    tokens._tokenizer.cache_clear()
    with Catalog(catalog_dir).read() as conn:
        return db.execute(conn, "SELECT min(sample_id) FROM miwv_scores WHERE scorer_id = 1 AND status = 'ok'")[0][0]


def sample_page(catalog_dir: Path, sample_id: int) -> str:
    response = TestClient(create_app(Catalog(catalog_dir), ["testserver"])).get(f"/samples/{sample_id}")
    assert response.status_code == 200, response.text
    return html.unescape(response.text.split('<section class="block inputs">', 1)[1])


def first_user_turn(catalog_dir: Path, sample_id: int) -> str:
    with Catalog(catalog_dir).read() as conn:
        messages = db.execute(conn, "SELECT messages FROM samples WHERE sample_id = $id", {"id": sample_id})[0][0]
    return next(m["content"] for m in messages if m["role"] == "user")


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")} if folder.exists() else {}


@pytest.fixture
def no_model_load(monkeypatch) -> None:
    """Loading any model's weights fails the test (a read-only page must never do it)."""
    from transformers import PreTrainedModel

    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"a page loaded the weights of {cls.__name__}")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("same_name", SAME_NAME.values(), ids=SAME_NAME)
def test_the_page_renders_the_recorded_template_whatever_file_of_its_name_is_here(
    scored, catalog_dir, tmp_path, monkeypatch, same_name
):
    cwd = tmp_path / "server-cwd"
    cwd.mkdir()
    if same_name is not None:
        (cwd / "vicuna.jinja").write_text(same_name, encoding="utf-8")
    monkeypatch.chdir(cwd)
    inputs = sample_page(catalog_dir, scored)
    user = first_user_turn(catalog_dir, scored)
    assert "A chat between a curious user and an artificial intelligence assistant." in inputs
    assert f"USER: {user} ASSISTANT:" in inputs
    assert 'class="warn"' not in inputs.split("</section>", 1)[0]


def test_opening_a_sample_writes_nothing_and_loads_no_weights(scored, catalog_dir, no_model_load):
    """The tokenizer of the converted GGUF in the model cache is used as it is."""
    before = files_under(cache_dir())
    inputs = sample_page(catalog_dir, scored)
    assert f"USER: {first_user_turn(catalog_dir, scored)} ASSISTANT:" in inputs
    assert files_under(cache_dir()) == before


def test_without_the_converted_model_the_page_says_how_to_get_it_and_converts_nothing(
    scored, catalog_dir, tmp_path, monkeypatch, no_model_load
):
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    monkeypatch.setenv("MIWV_CACHE", str(empty))
    inputs = sample_page(catalog_dir, scored)
    assert f"the tokenizer of {MODEL} is not in the model cache ({empty}): run" in inputs
    assert f"`python cli.py score --model {MODEL}` once" in inputs
    assert list(empty.rglob("*")) == []


MISSING_MODELS = {
    "hub id not in the HF cache": ("SomeOrg/not-downloaded", "is not in the local Hugging Face cache"),
    "folder gone": ("/nowhere/model-folder", "(/nowhere/model-folder) are not on this machine"),
    "gguf file gone": ("/nowhere/model.gguf", "(/nowhere/model.gguf) are not on this machine"),
}


@pytest.mark.parametrize(("source", "message"), MISSING_MODELS.values(), ids=MISSING_MODELS)
def test_a_model_not_on_this_machine_is_said_on_the_page(scored, catalog_dir, no_model_load, source, message):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # never the network, whatever the code does
    with Catalog(catalog_dir).write() as conn:
        db.execute(conn, "UPDATE scorer SET model = $source, source = $source", {"source": source})
    inputs = sample_page(catalog_dir, scored)
    assert "cannot rebuild the inputs: " in inputs and message in inputs


def test_a_scorer_from_before_template_texts_says_so_until_it_scores_again(scored, catalog_dir, cli_run):
    with Catalog(catalog_dir).write() as conn:  # as migration 0008 leaves a scorer
        db.execute(conn, "UPDATE scorer SET template_text = NULL")
    inputs = sample_page(catalog_dir, scored)
    assert "this scorer did not record the text of its template 'vicuna.jinja'" in inputs
    assert "score again with --template pointing at that file to record it" in inputs

    again = cli_run("score", "--model", MODEL, "--template", VICUNA, "--limit", "2")  # the same text
    assert again.exit_code == 0 and "scorer 1, vicuna.jinja template" in again.output, again.output
    assert f"USER: {first_user_turn(catalog_dir, scored)} ASSISTANT:" in sample_page(catalog_dir, scored)


def test_a_chat_scorer_without_its_text_is_flagged_when_the_tokenizers_template_differs(scored):
    """Before the text was recorded, the tokenizer's own template stands in, checked against the hash."""
    spec = resolve_model(MODEL)
    key = tokens.ScorerKey(
        MODEL, spec.source, spec.fingerprint, "chat", TEMPLATE_REVISION, hashlib.sha256(b"another text").hexdigest()
    )
    inputs = tokens.model_inputs(key, 512, (("user", "Name a colour."), ("assistant", "Blue.")), None)
    assert "<|im_start|>user\nName a colour.<|im_end|>" in inputs.zero.prompt
    assert "the 'chat' template of the tokenizer here is not the text it scored with" in inputs.warning
