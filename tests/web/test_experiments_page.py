"""The explorer's experiment pages (issue 19) over HTTP (Starlette's TestClient), checked against
statistics computed here: /experiments lists the runs with their losses, seed-group spread,
winning scores and loss curves; /experiments/compare shows two runs' answers side by side with the
judge's verdicts in both orders, paged and escaped; bad run ids are 404s that say what to do.

A real catalog of 30 Dolly rows and two random selections; three runs recorded through catalog.runs
(no training), and their answers, reference losses and verdicts through catalog.evaluations' own
insert helpers (no model: generating and judging are tested in tests/test_evaluate.py)."""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest
from markupsafe import escape
from starlette.testclient import TestClient

import miwv
from catalog import Catalog
from catalog.evaluations import settings_json, store_generations, store_judgements, store_reference_losses
from catalog.runs import RunKey, finish_run, record_loss, start_run
from catalog.testsets import read_testset, store_testset
from tests.conftest import SHARED_DATA, write_jsonl
from tests.web.conftest import IMG, SCRIPT, served
from tests.web.test_browser import browser, shoot  # noqa: F401 (a fixture)
from web.app import create_app

SETTINGS = settings_json({"max_new_tokens": 16, "sample": False})
JUDGE = "local:smollm2-135m@0123456789ab"
HOSTILE_ANSWER = f"Sure: {SCRIPT} {IMG} & done"
HOSTILE_RAW = "<b>9</b> 2 </code><script>window.__pwned = 5</script>"
LOSSES = {0: [2.0, 1.6, 1.2], 1: [2.2, 1.5, 1.4]}  # seed: loss per logging step (the first selection)
OTHER_LOSSES = [2.5, 2.1]  # the second selection's run


@dataclass(frozen=True)
class Built:
    path: Path
    runs: tuple[int, int, int]  # seeds 0 and 1 on the first selection, seed 0 on the second
    vicuna: list[int]  # prompt ids of the 80 Vicuna prompts, in order
    hostile: list[int]  # prompt ids of the 2 prompts of the hostile test set
    verdicts: dict[tuple[int, bool], str]  # (prompt_id, a_first): verdict of the pair (runs[0], runs[1])


def dolly(count: int) -> list[dict]:
    lines = (SHARED_DATA / "dolly_3k_alpagasus.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    return [{k: r[k] for k in ("instruction", "input", "output")} for r in map(json.loads, lines)]


def record(store: Catalog, selection_id: int, seed: int, losses: list[float]) -> int:
    """A finished LoRA run with its loss curve, written through the trainer's own catalog calls."""
    key = RunKey(selection_id, "test", "alpaca", "test", "lora", "{}", seed)
    run = start_run(store, key, "smollm2-135m", "cpu", 10)
    for step, loss in enumerate(losses, start=1):
        record_loss(store, run.run_id, step * 5, step / len(losses), loss, 1e-4)
    finish_run(store, run.run_id, "test")
    return run.run_id


def verdict(prompt_position: int, a_first: bool) -> str:
    """A spread of verdicts: a wins, b wins, ties, and some disagreement between the two orders."""
    return ("a", "b", "tie", "a")[(prompt_position + (0 if a_first else 1)) % 4]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    root = tmp_path_factory.mktemp("experiments_web")
    cat = miwv.open(root / "catalog")
    cat.ingest(write_jsonl(root / "pool.jsonl", dolly(30)), dataset="pool")
    first, second = (cat.select(strategy="random", top_k=10, seed=seed).selection_id for seed in (3, 4))
    store = Catalog(root / "catalog")
    runs = (
        record(store, first, 0, LOSSES[0]),
        record(store, first, 1, LOSSES[1]),
        record(store, second, 0, OTHER_LOSSES),
    )
    assert runs == (1, 2, 3)  # the error messages below name them
    vicuna = read_testset("vicuna")
    hostile_file = [
        {"instruction": f"Repeat this HTML: {SCRIPT}", "output": f"It is {IMG}"},
        {"instruction": "Say hello & goodbye", "output": "hello & goodbye"},
    ]
    hostile = read_testset(str(write_jsonl(root / "hostile.jsonl", hostile_file)))
    store_testset(store, vicuna + hostile)
    a, b, _ = runs
    for run in (a, b):
        texts = [(p.prompt_id, f"run {run} answers vicuna {p.position}", 7) for p in vicuna]
        texts += [(p.prompt_id, HOSTILE_ANSWER if run == a else f"run {run}: plain", 5) for p in hostile]
        store_generations(store, run, SETTINGS, texts)
        store_reference_losses(store, run, [(p.prompt_id, 1.0 + run / 10 + p.position / 100, 4) for p in hostile])
    verdicts = {(p.prompt_id, first): verdict(p.position, first) for p in vicuna + hostile for first in (True, False)}
    store_judgements(
        store,
        [
            dict(run_a=a, run_b=b, prompt_id=prompt, a_first=first, judge=JUDGE, settings=SETTINGS,
                 judge_prompt_hash="cherry", verdict=v, raw=HOSTILE_RAW if prompt == hostile[0].prompt_id else "8 6")
            for (prompt, first), v in verdicts.items()
        ],
    )  # fmt: skip
    ids = [p.prompt_id for p in vicuna], [p.prompt_id for p in hostile]
    return Built(root / "catalog", runs, *ids, verdicts)


@pytest.fixture(scope="module")
def client(built: Built) -> TestClient:
    return TestClient(create_app(Catalog(built.path), ["testserver"]))


def jsonl(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def winning_score(verdicts: list[str]) -> float:
    return 1 + (verdicts.count("a") - verdicts.count("b")) / len(verdicts)


def test_experiments_page_lists_runs_seed_spread_scores_and_curves(client: TestClient, built: Built) -> None:
    a, b, c = built.runs
    page = client.get("/experiments")
    assert page.status_code == 200 and '<a href="/experiments">Experiments</a>' in page.text
    score = winning_score(list(built.verdicts.values()))
    rows = {int(run): body for run, body in re.findall(r'<tr id="run-(\d+)">(.*?)</tr>', page.text, re.S)}
    assert set(rows) == {a, b, c}
    assert f"{LOSSES[0][-1]:.4f}" in rows[a] and f"{OTHER_LOSSES[-1]:.4f}" in rows[c]
    assert f"vs {b}: {score:.3f}" in rows[a] and f"vs {a}: {2 - score:.3f}" in rows[b]
    assert f'href="/experiments/compare?a={a}&amp;b={b}"' in rows[a] and "vs" not in rows[c]
    reference = 1.0 + a / 10 + 0.005  # the mean over the hostile set's positions 0 and 1
    assert f"{reference:.4f}" in rows[a] and "reference loss: hostile" in page.text
    groups = {
        (g["seed_group"], g["metric"]): g for g in jsonl(client.get("/experiments?download=seed_groups&format=jsonl"))
    }
    final = groups[(a, "final_loss")]
    assert (final["seeds"], final["runs"], final["seed_list"]) == (2, 2, [0, 1])
    assert final["mean"] == pytest.approx(statistics.fmean([LOSSES[0][-1], LOSSES[1][-1]]))
    assert final["std"] == pytest.approx(statistics.stdev([LOSSES[0][-1], LOSSES[1][-1]]))
    assert groups[(c, "final_loss")]["std"] is None and groups[(c, "final_loss")]["seeds"] == 1
    for run, losses in ((a, LOSSES[0]), (c, OTHER_LOSSES)):
        curve = page.text.split(f'id="curve-{run}"', 1)[1].split("</figure>", 1)[0]
        assert curve.count('class="loss-point"') == len(losses)
    rows_cli = {row["run_id"]: row for row in miwv.open(built.path).experiments()}
    assert rows_cli[a]["seeds"] == 2 and rows_cli[a]["final_loss mean"] == pytest.approx(final["mean"])
    assert rows_cli[a]["winning_score"] == {f"vs {b} ({JUDGE})": pytest.approx(score)}


def test_two_runs_side_by_side_with_verdicts_in_both_orders_paged_and_escaped(client: TestClient, built: Built) -> None:
    a, b, _ = built.runs
    first = client.get(f"/experiments/compare?a={a}&b={b}")
    assert first.status_code == 200
    total = len(built.vicuna) + len(built.hostile)
    assert f"page 1 of 5 · {total} prompts" in first.text and first.text.count('class="block prompt"') == 20
    assert f"{winning_score(list(built.verdicts.values())):.3f}" in first.text
    hostile = client.get(f"/experiments/compare?a={a}&b={b}&testset=hostile")
    assert hostile.status_code == 200 and hostile.text.count('class="block prompt"') == 2
    assert "<script>window.__pwned" not in hostile.text and "<img src=x" not in hostile.text
    assert "<b>9</b>" not in hostile.text and escape(HOSTILE_ANSWER) in hostile.text
    assert escape(HOSTILE_RAW) in hostile.text
    section = hostile.text.split(f'id="prompt-{built.hostile[0]}"', 1)[1].split("</section>", 1)[0]
    shown = re.findall(r"<td>(A|B) \(run \d+\)</td>", section)
    assert shown == ["A", "B"] and JUDGE in section  # both orders, A shown first listed first
    subset = [v for (prompt, _), v in built.verdicts.items() if prompt in built.hostile]
    summary = jsonl(client.get(f"/experiments/compare?a={a}&b={b}&testset=hostile&download=summary&format=jsonl"))
    assert summary[0]["n"] == 4 and summary[0]["winning_score"] == pytest.approx(winning_score(subset))
    swapped = jsonl(client.get(f"/experiments/compare?a={b}&b={a}&testset=hostile&download=summary&format=jsonl"))
    assert swapped[0]["winning_score"] == pytest.approx(2 - winning_score(subset))
    last = client.get(f"/experiments/compare?a={a}&b={b}&page=5")
    assert last.status_code == 200 and last.text.count('class="block prompt"') == total - 80
    everything = jsonl(client.get(f"/experiments/compare?a={a}&b={b}&download=prompts&format=jsonl"))
    assert len(everything) == total and everything[0]["answer_a"] == HOSTILE_ANSWER  # test sets by name: hostile first


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("a=abc&b=1", 404, "&#39;abc&#39; is not a training run id (a whole number); the runs are on /experiments"),
        ("a=1&b=99", 404, "no training run 99; runs here: 1, 2, 3 (see /experiments)"),
        ("a=1&b=1", 400, "a and b are both run 1: name two different runs"),
        ("a=1", 400, "this page compares two training runs: /experiments/compare?a=RUN&amp;b=RUN"),
        ("a=1&b=2&testset=koala", 404, "runs 1 and 2 have no answers to test set &#39;koala&#39;; they both answered"),
        ("a=1&b=2&page=9", 400, "page 9 is past the last page of this comparison (5)"),
        ("a=1&b=2&run=3", 400, "unknown parameter &#39;run&#39;"),
    ],
)
def test_bad_run_ids_and_parameters_say_what_to_do(client: TestClient, query: str, status: int, message: str) -> None:
    page = client.get(f"/experiments/compare?{query}")
    assert (page.status_code, message in page.text) == (status, True), page.text


def test_runs_without_common_answers_say_how_to_evaluate(client: TestClient, built: Built) -> None:
    a, _, c = built.runs
    page = client.get(f"/experiments/compare?a={c}&b={a}")
    assert page.status_code == 200 and 'id="nothing-answered"' in page.text
    assert f"python cli.py evaluate --runs {c},{a} --testset vicuna" in page.text


def test_an_empty_catalog_says_how_to_create_runs(tmp_path: Path) -> None:
    cat = miwv.open(tmp_path / "catalog")
    cat.ingest(write_jsonl(tmp_path / "pool.jsonl", dolly(3)), dataset="pool")
    client = TestClient(create_app(Catalog(tmp_path / "catalog"), ["testserver"]))
    page = client.get("/experiments")
    assert page.status_code == 200 and 'id="no-runs"' in page.text and "python cli.py train --selection" in page.text
    missing = client.get("/experiments/compare?a=1&b=2")
    assert missing.status_code == 404 and "no training run 1; this catalog has no training run yet" in missing.text


@pytest.fixture(scope="module")
def server(built: Built):
    """The app over the built catalog, served in a thread."""
    with served(built.path) as url:
        yield url


@pytest.mark.slow
@pytest.mark.browser
def test_the_pages_in_a_browser_run_no_answer_and_link_runs(browser, server: str, built: Built) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    a, b, _ = built.runs
    browser.get(f"{server}/experiments")
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure.loss svg polyline.loss")) == 3
    shoot(browser, "experiments")
    browser.find_element(By.CSS_SELECTOR, f"#run-{a} td.wins a.chip").click()
    assert browser.current_url.endswith(f"/experiments/compare?a={a}&b={b}")
    browser.get(f"{server}/experiments/compare?a={a}&b={b}&testset=hostile")
    answers = browser.find_elements(By.CSS_SELECTOR, "pre.answer-a")
    assert answers[0].text == HOSTILE_ANSWER and browser.find_element(By.CSS_SELECTOR, "code.raw").text == HOSTILE_RAW
    assert browser.execute_script("return window.__pwned === undefined") and "pwned" not in browser.title
    shoot(browser, "experiment_pair")
