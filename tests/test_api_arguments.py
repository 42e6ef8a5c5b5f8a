"""The Python API checks every argument of every public verb, as the CLI does, before it reads,
loads or writes anything: a typed ArgumentError naming the argument (the CLI words it as its
flag), and the catalog left exactly as it was (no scorer, run or selection row)."""

from __future__ import annotations

import hashlib
import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import miwv
from tests.conftest import FIXTURE, CliRun

# Valid arguments a verb needs besides the bad one, so it would otherwise get past its checks.
BASE: dict[str, dict[str, Any]] = {
    "score": dict(model="smollm2-135m"),
    "select": dict(strategy="random", top_k=3),
    "report": dict(model="smollm2-135m"),
    "sql": dict(query="SELECT 1"),
    "ingest": dict(source=FIXTURE, dataset="again"),
    "Selection.write": dict(path="picked.jsonl"),
    "train": dict(selection=1, model="smollm2-135m"),
}

# (verb, bad keyword arguments, the argument the error must name). Every parameter of every public
# verb appears at least once (test_the_table_covers_every_argument_of_every_verb).
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("open", dict(path=123), "path"),
    ("open", dict(busy_timeout="x"), "busy_timeout"),
    ("open", dict(busy_timeout=-1), "busy_timeout"),
    ("open", dict(busy_timeout=math.nan), "busy_timeout"),
    ("open", dict(busy_timeout=True), "busy_timeout"),
    ("open", dict(auto_upgrade="no"), "auto_upgrade"),
    ("Catalog", dict(path=None), "path"),
    ("Catalog", dict(busy_timeout=[1]), "busy_timeout"),
    ("Catalog", dict(auto_upgrade=1), "auto_upgrade"),
    ("ingest", dict(source=""), "source"),
    ("ingest", dict(dataset=""), "dataset"),
    ("ingest", dict(dataset=7), "dataset"),
    ("ingest", dict(shape="bogus"), "shape"),
    ("ingest", dict(skip_invalid=1), "skip_invalid"),
    ("ingest", dict(columns=["output"]), "columns"),
    ("ingest", dict(columns={"output": 3}), "columns"),
    ("ingest", dict(split=0), "split"),
    ("ingest", dict(split=""), "split"),
    ("embed", dict(embedder=""), "embedder"),
    ("embed", dict(embedder=None), "embedder"),
    ("embed", dict(pooling="sum"), "pooling"),
    ("embed", dict(device="gpu"), "device"),
    ("embed", dict(device="cuda:x"), "device"),
    ("embed", dict(batch_size=0), "batch_size"),
    ("embed", dict(batch_size=True), "batch_size"),
    ("embed", dict(batch_size=16.0), "batch_size"),
    ("embed", dict(method="fast"), "method"),
    ("embed", dict(exact_limit=0), "exact_limit"),
    ("embed", dict(workers=0), "workers"),
    ("embed", dict(ray_address=5), "ray_address"),
    ("embed", dict(scope="everywhere"), "scope"),
    ("neighbours", dict(embedder=0), "embedder"),
    ("neighbours", dict(embedder=1.5), "embedder"),
    ("neighbours", dict(rebuild="yes"), "rebuild"),
    ("neighbours", dict(method=None), "method"),
    ("neighbours", dict(exact_limit=-1), "exact_limit"),
    ("neighbours", dict(device="tpu"), "device"),
    ("neighbours", dict(scope=None), "scope"),
    ("neighbours", dict(dataset=""), "dataset"),
    ("score", dict(model=None), "model"),
    ("score", dict(model=123), "model"),
    ("score", dict(embedder=[]), "embedder"),
    ("score", dict(template=3), "template"),
    ("score", dict(max_length=-5), "max_length"),
    ("score", dict(max_length=0), "max_length"),
    ("score", dict(max_length=7), "max_length"),
    ("score", dict(max_length=2**31), "max_length"),
    ("score", dict(max_length=True), "max_length"),
    ("score", dict(device="bogus"), "device"),
    ("score", dict(dtype="int8"), "dtype"),
    ("score", dict(dataset=""), "dataset"),
    ("score", dict(scope="datasets"), "scope"),
    ("score", dict(examples=0), "examples"),
    ("score", dict(examples=2.5), "examples"),
    ("score", dict(limit=-1), "limit"),
    ("score", dict(limit=0), "limit"),
    ("score", dict(token_budget=0), "token_budget"),
    ("score", dict(max_batch=0), "max_batch"),
    ("score", dict(workers=0), "workers"),
    ("score", dict(workers=True), "workers"),
    ("score", dict(ray_address=1), "ray_address"),
    ("score", dict(gpus_per_worker=0), "gpus_per_worker"),
    ("score", dict(metrics="bogus"), "metrics"),
    ("score", dict(metrics="miwv,"), "metrics"),
    ("score", dict(metrics=[]), "metrics"),
    ("score", dict(metrics=["ifd", 1]), "metrics"),
    ("score", dict(metrics=None), "metrics"),
    ("score", dict(pool="selection:x"), "pool"),
    ("score", dict(pool=3), "pool"),
    ("score", dict(pool="dataset:mixed"), "pool"),
    ("score", dict(where=1), "where"),
    ("score", dict(where="n_turns = 1) OR (true"), "where"),
    ("score", dict(calibrate=5), "calibrate"),
    ("score", dict(where="n_turns = 1", calibrate=0), "calibrate"),
    ("score", dict(where="n_turns = 1", calibrate=100.5), "calibrate"),
    ("score", dict(where="n_turns = 1", calibrate=math.nan), "calibrate"),
    ("score", dict(where="n_turns = 1", calibrate=5, seed=1.5), "seed"),
    ("score", dict(seed=2**31), "seed"),
    ("select", dict(model=123), "model"),
    ("select", dict(top_k=0), "top_k"),
    ("select", dict(top_k=True), "top_k"),
    ("select", dict(top_k=2**31), "top_k"),
    ("select", dict(top_k=None, top_percent=0), "top_percent"),
    ("select", dict(top_k=None, top_percent=101), "top_percent"),
    ("select", dict(top_k=None, top_percent=math.nan), "top_percent"),
    ("select", dict(top_k=None, top_percent="5"), "top_percent"),
    ("select", dict(top_k=None, top_percent=True), "top_percent"),
    ("select", dict(strategy="best"), "strategy"),
    ("select", dict(dataset=5), "dataset"),
    ("select", dict(where=1), "where"),
    ("select", dict(seed=2**31), "seed"),
    ("select", dict(seed=1.5), "seed"),
    ("select", dict(seed=True), "seed"),
    ("select", dict(embedder=1.5), "embedder"),
    ("select", dict(scorer_id=0), "scorer_id"),
    ("select", dict(scorer_id="1"), "scorer_id"),
    ("select", dict(out=5), "out"),
    ("select", dict(out="picked.jsonl", format="csv"), "format"),
    ("select", dict(out="picked", format="hf", for_="llamafactory"), "for_"),
    ("select", dict(out="picked.jsonl", shape="bogus"), "shape"),
    ("select", dict(with_scores="yes"), "with_scores"),
    ("select", dict(out="picked", for_="axolotl"), "for_"),
    ("select", dict(scope="data"), "scope"),
    ("select", dict(min_similarity=1.5), "min_similarity"),
    ("select", dict(min_similarity="high"), "min_similarity"),
    ("report", dict(model=None), "model"),
    ("report", dict(out=""), "out"),
    ("report", dict(embedder=[1]), "embedder"),
    ("report", dict(scorer_id=-1), "scorer_id"),
    ("report", dict(scope=1), "scope"),
    ("ingest", dict(replace="yes"), "replace"),
    ("remove", dict(dataset=5), "dataset"),
    ("remove", dict(dataset=""), "dataset"),
    ("remove", dict(where=1), "where"),
    ("remove", dict(ids=7), "ids"),
    ("remove", dict(ids=""), "ids"),
    ("remove", dict(everything="yes"), "everything"),
    ("remove", dict(dataset="mixed", purge=1), "purge"),
    ("remove", dict(dataset="mixed", dry_run=None), "dry_run"),
    ("history", dict(dataset=""), "dataset"),
    ("history", dict(dataset=3), "dataset"),
    ("sql", dict(query=3), "query"),
    ("sql", dict(timeout="x"), "timeout"),
    ("sql", dict(timeout=0), "timeout"),
    ("sql", dict(timeout=math.inf), "timeout"),
    ("sql", dict(timeout=True), "timeout"),
    ("serve", dict(host=""), "host"),
    ("serve", dict(port=0), "port"),
    ("serve", dict(port=65536), "port"),
    ("serve", dict(port="8765"), "port"),
    ("Selection.to_arrow", dict(shape="bogus"), "shape"),
    ("Selection.to_arrow", dict(with_scores=None), "with_scores"),
    ("Selection.to_pandas", dict(shape=1), "shape"),
    ("Selection.to_pandas", dict(with_scores="no"), "with_scores"),
    ("Selection.to_hf", dict(shape="sharegpt"), "shape"),
    ("Selection.to_hf", dict(with_scores=0), "with_scores"),
    ("Selection.write", dict(path=""), "path"),
    ("Selection.write", dict(format="csv"), "format"),
    ("Selection.write", dict(shape="bogus"), "shape"),
    ("Selection.write", dict(with_scores="yes"), "with_scores"),
    ("Selection.write", dict(path="picked", for_="axolotl"), "for_"),
    ("Selection.write", dict(path="picked", format="hf", for_="llamafactory"), "for_"),
    ("train", dict(selection=0), "selection"),
    ("train", dict(selection="1"), "selection"),
    ("train", dict(model=""), "model"),
    ("train", dict(template=3), "template"),
    ("train", dict(full="yes"), "full"),
    ("train", dict(epochs=0), "epochs"),
    ("train", dict(epochs=math.nan), "epochs"),
    ("train", dict(lr=0), "lr"),
    ("train", dict(lr=2), "lr"),
    ("train", dict(batch_size=0), "batch_size"),
    ("train", dict(gradient_accumulation=1.5), "gradient_accumulation"),
    ("train", dict(max_length=7), "max_length"),
    ("train", dict(max_steps=0), "max_steps"),
    ("train", dict(warmup_ratio=1.5), "warmup_ratio"),
    ("train", dict(lora_r=0), "lora_r"),
    ("train", dict(lora_alpha=0), "lora_alpha"),
    ("train", dict(lora_dropout=-0.1), "lora_dropout"),
    ("train", dict(lora_targets=""), "lora_targets"),
    ("train", dict(seed=2**31), "seed"),
    ("train", dict(save_steps=0), "save_steps"),
    ("evaluate", dict(runs="a,b"), "runs"),
    ("evaluate", dict(judge_url=""), "judge_url"),
    ("evaluate", dict(judge_key_env=""), "judge_key_env"),
    ("evaluate", dict(runs=[0]), "runs"),
    ("evaluate", dict(runs=[]), "runs"),
    ("evaluate", dict(testset=[]), "testset"),
    ("evaluate", dict(testset=3), "testset"),
    ("evaluate", dict(reference_loss=""), "reference_loss"),
    ("evaluate", dict(judge=""), "judge"),
    ("evaluate", dict(base=""), "base"),
    ("evaluate", dict(template=3), "template"),
    ("evaluate", dict(max_new_tokens=0), "max_new_tokens"),
    ("evaluate", dict(sample=1), "sample"),
    ("evaluate", dict(temperature=0), "temperature"),
    ("evaluate", dict(top_p=1.5), "top_p"),
    ("evaluate", dict(seed=2**31), "seed"),
    ("evaluate", dict(batch_size=0), "batch_size"),
    ("evaluate", dict(device="gpu"), "device"),
]


def public_verbs() -> dict[str, Any]:
    """Every public function and method of the API, by the names BAD uses."""
    verbs = {"open": miwv.open, "models": miwv.models, "Catalog": miwv.Catalog.__init__}
    for cls in (miwv.Catalog, miwv.Selection):
        prefix = "" if cls is miwv.Catalog else "Selection."
        verbs |= {prefix + name: member for name, member in vars(cls).items() if inspect.isfunction(member)}
    return {name: verb for name, verb in verbs.items() if name == "Catalog" or not name.split(".")[-1].startswith("_")}


def parameters(verb: Any) -> set[str]:
    return set(inspect.signature(verb).parameters) - {"self"}


def test_the_table_covers_every_argument_of_every_verb():
    covered = {(verb, argument) for verb, _, argument in BAD}
    wanted = {(name, p) for name, verb in public_verbs().items() for p in parameters(verb)}
    assert wanted - covered == set()


@pytest.mark.parametrize("name", sorted(name for name, verb in public_verbs().items() if parameters(verb)))
def test_every_public_verb_checks_each_of_its_arguments(name):
    verb = public_verbs()[name]
    assert set(getattr(verb, "checks", {})) == parameters(verb)


def catalog_state(tmp_path: Path) -> dict[str, str]:
    """Every file under the test's folder (the catalog, any output), byte for byte: an unchanged
    catalog.duckdb means no table gained or lost a row (no scorer, score_run or selection)."""
    return {
        str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in tmp_path.rglob("*")
        if p.is_file()
    }


def ingest_fixture(cli_run: CliRun) -> None:
    miwv.open(cli_run.catalog).ingest(FIXTURE, dataset="mixed")


@pytest.fixture
def ingested(catalog_built_by, catalog_dir, tmp_path, monkeypatch) -> miwv.Catalog:
    """The 180 fixture rows, in a catalog under the test's folder, which is also the working
    directory (where a relative `out` would land)."""
    catalog_built_by(ingest_fixture)
    monkeypatch.chdir(tmp_path)
    return miwv.open(catalog_dir)


def call(cat: miwv.Catalog, selection: miwv.Selection, verb: str, bad: dict[str, Any]) -> Any:
    """`verb` called with BASE's arguments and the bad ones (a Selection's methods on `selection`)."""
    arguments = {**BASE.get(verb, {}), **bad}
    if verb in ("open", "Catalog"):
        return (miwv.open if verb == "open" else miwv.Catalog)(**{"path": cat.path, **arguments})
    owner, _, method = verb.rpartition(".")
    return getattr(selection if owner else cat, method)(**arguments)


@pytest.mark.parametrize(
    ("verb", "bad", "argument"), BAD, ids=[f"{verb}-{'-'.join(map(str, bad.items()))}" for verb, bad, _ in BAD]
)
def test_a_bad_argument_is_refused_by_name_before_anything_is_written(ingested, tmp_path, verb, bad, argument):
    selection = ingested.select(strategy="random", top_k=3) if verb.startswith("Selection.") else None
    before = catalog_state(tmp_path)
    with pytest.raises(miwv.ArgumentError) as raised:
        result = call(ingested, selection, verb, bad)
        pytest.fail(f"accepted: {result!r}")
    assert argument in raised.value.arguments and argument in str(raised.value)
    assert "\n" not in str(raised.value)
    assert catalog_state(tmp_path) == before


def test_the_message_says_what_was_wanted_and_what_came(ingested):
    with pytest.raises(
        miwv.ArgumentError, match=r"^max_length must be a whole number from 8 to 2147483647 \(got -5\)$"
    ):
        ingested.score("smollm2-135m", max_length=-5)
    with pytest.raises(miwv.ArgumentError, match=r"^shape must be one of alpaca, messages \(got 'bogus'\)$"):
        ingested.select(strategy="random", top_k=3, out="picked.jsonl", shape="bogus")
    with pytest.raises(miwv.ArgumentError, match=r"^busy_timeout must be a number of at least 0 \(got 'x'\)$"):
        miwv.open(ingested.path, busy_timeout="x")
    with pytest.raises(miwv.ArgumentError, match=r"^give at most one of format and for_$"):
        ingested.select(strategy="random", top_k=3, out="picked", format="hf", for_="llamafactory")


def test_numpy_numbers_and_paths_are_taken(ingested, tmp_path):
    top = ingested.select(strategy="random", top_k=np.int64(3), seed=np.int32(7), out=tmp_path / "top.jsonl")
    assert top.selected == 3 and top.output.rows == 3
    assert ingested.select(strategy="random", top_percent=np.float32(2.5)).selected == 5  # 180 * 2.5% = 4.5 -> 5
    assert miwv.open(ingested.path, busy_timeout=np.float64(0.5)).status()["samples"] == 180


CLI_BAD = [
    (("remove",), "say what to remove: --dataset, --where, --ids or --all"),
    (("remove", "--all", "--dataset", "mixed"), "--all removes every sample: give it alone"),
    (("score", "--model", "smollm2-135m", "--max-length", "-5"), "--max-length must be a whole number from 8"),
    (("score", "--model", "smollm2-135m", "--limit", "0"), "--limit must be a whole number from 1"),
    (("score", "--model", "smollm2-135m", "--device", "gpu"), "--device must be auto, cpu, cuda or cuda:N"),
    (("score", "--model", "smollm2-135m", "--metrics", "ifd,x"), "--metrics must be one or more of miwv, ifd"),
    (("score", "--model", "smollm2-135m", "--pool", "selection"), "--pool must be selection:ID"),
    (("score", "--model", "smollm2-135m", "--calibrate", "2"), "--calibrate needs --pool or --where"),
    (("embed", "--batch-size", "0"), "--batch-size must be a whole number from 1"),
    (("neighbours", "--exact-limit", "0"), "--exact-limit must be a whole number from 1"),
    (("select", "--strategy", "random", "--top-k", "0"), "--top-k must be a whole number from 1"),
    (("select", "--strategy", "ifd", "--top-k", "3"), "--model is required (whose scores rank the pool)"),
    (("select", "--strategy", "random", "--top-k", "3", "--seed", "2147483648"), "--seed must be a whole number"),
    (("select", "--model", "smollm2-135m", "--top-k", "3", "--scorer", "0"), "--scorer must be a whole number"),
    (
        ("select", "--strategy", "random", "--top-k", "3", "--out", "x", "--format", "hf", "--for", "llamafactory"),
        "give at most one of --format and --for",
    ),
    (("report", "--model", "smollm2-135m", "--scorer", "-1"), "--scorer must be a whole number from 1"),
    (("sql", "SELECT 1", "--timeout", "0"), "--timeout must be a positive number of seconds"),
    (("serve", "--port", "0"), "--port must be a whole number from 1 to 65535"),
]


@pytest.mark.parametrize(("args", "message"), CLI_BAD, ids=[" ".join(args) for args, _ in CLI_BAD])
def test_the_cli_words_the_same_checks_with_its_flags_in_one_line(ingested, catalog_dir, tmp_path, args, message):
    before = catalog_state(tmp_path)
    result = CliRun(catalog_dir)(*args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert catalog_state(tmp_path) == before
