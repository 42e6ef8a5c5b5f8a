"""`ingest --replace`, `remove` and `history` from the CLI and through `import miwv`, on real rows:
what each leaves in the catalog, what --dry-run promises and does not write, and the one-line
errors a user can cause (unknown dataset, bad condition, unreadable or bad id file)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import miwv
from catalog import Catalog, db
from tests.conftest import CliRun, fixture_records, write_jsonl
from tests.test_ingest import expected_ids, sample_ids

ROWS = fixture_records()
V1 = ROWS[:20]  # dataset "alp", first version
OTHER = ROWS[15:25]  # dataset "other": rows 15-19 are in both
V2 = [*ROWS[5:18], {**ROWS[18], "output": ROWS[18]["output"] + " (corrected)"}, *ROWS[30:33]]  # cleaned: 0-4 dropped


def two_datasets(run: CliRun) -> None:
    """alp (V1) and other (OTHER), sharing five samples."""
    folder = run.catalog.parent
    assert run("ingest", write_jsonl(folder / "alp_v1.jsonl", V1), "--dataset", "alp").exit_code == 0
    assert run("ingest", write_jsonl(folder / "other.jsonl", OTHER), "--dataset", "other").exit_code == 0


@pytest.fixture
def base(catalog_built_by, cli_run) -> CliRun:
    catalog_built_by(two_datasets)
    return cli_run


def files(folder: Path, *but: str) -> dict[str, str]:
    """Every file under `folder` except those named in `but`, byte for byte."""
    found = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in found.items() if name not in but}


def members(catalog_dir: Path, dataset: str) -> set[int]:
    with Catalog(catalog_dir).read() as conn:
        rows = db.execute(conn, "SELECT sample_id FROM membership WHERE dataset = $d", {"d": dataset})
    return {row[0] for row in rows}


def stored(catalog_dir: Path, table: str) -> set[int]:
    with Catalog(catalog_dir).read() as conn:
        return {row[0] for row in db.execute(conn, f"SELECT DISTINCT sample_id FROM {table}")}


def write_ids(path: Path, ids: set[int] | list[int], *extra: str) -> Path:
    path.write_text("# takedown requests\n\n" + "".join(f"{i}\n" for i in ids) + "".join(extra), encoding="utf-8")
    return path


def test_replace_makes_the_dataset_exactly_the_new_file_and_history_shows_each_version(base, catalog_dir, tmp_path):
    replaced = base.json("ingest", write_jsonl(tmp_path / "alp_v2.jsonl", V2), "--dataset", "alp", "--replace")
    old, new, shared = expected_ids(V1), expected_ids(V2), expected_ids(OTHER)
    assert members(catalog_dir, "alp") == new
    assert members(catalog_dir, "other") == shared  # untouched
    assert replaced["replace"] is True and replaced["version"] == 2
    assert (replaced["rows_in"], replaced["rows_out"]) == (len(new - old), len(old - new))
    assert replaced["samples_retired"] == len(old - new - shared)  # the corrected row 18 is shared: it stays
    assert sample_ids(catalog_dir) == new | shared

    history = base.json("history", "--dataset", "alp")["history"]
    assert [(v["version"], v["kind"], v["rows_in"], v["rows_out"], v["members"]) for v in history] == [
        (1, "ingest", len(old), 0, len(old)),
        (2, "replace", len(new - old), len(old - new), len(new)),
    ]
    everything = base.json("history")["history"]
    assert [(v["dataset"], v["version"]) for v in everything] == [("alp", 1), ("other", 1), ("alp", 2)]
    table = base("history").output
    assert "replace" in table and "alp_v2.jsonl" in table


@pytest.mark.parametrize(
    "args",
    [
        ("--dataset", "other"),
        ("--where", "n_turns = 1"),
        ("--dataset", "alp", "--purge"),
        ("--all", "--purge"),
    ],
)
def test_a_dry_run_says_what_would_go_and_writes_nothing(base, catalog_dir, args):
    before = files(catalog_dir)
    result = base("remove", *args, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "nothing was written" in result.output and "samples retired" in result.output
    assert files(catalog_dir) == before
    planned = base.json("remove", *args, "--dry-run")
    assert planned["dry_run"] is True and planned["change_id"] is None
    assert files(catalog_dir) == before


def test_a_dry_run_counts_what_the_real_run_then_does(base, catalog_dir):
    planned = base.json("remove", "--dataset", "other", "--dry-run")
    done = base.json("remove", "--dataset", "other")
    only_other = expected_ids(OTHER) - expected_ids(V1)
    assert planned["samples_retired"] == done["samples_retired"] == len(only_other)
    assert planned["memberships_out"] == done["memberships_out"] == len(expected_ids(OTHER))
    assert planned["datasets"] == [{"dataset": "other", "rows_out": 10, "members_after": 0, "version": None}]
    assert done["datasets"] == [{"dataset": "other", "rows_out": 10, "members_after": 0, "version": 2}]
    assert done["dry_run"] is False and done["change_id"] is not None


def test_remove_a_dataset_retires_only_the_samples_no_other_dataset_holds(base, catalog_dir):
    result = base("remove", "--dataset", "other")
    assert result.exit_code == 0, result.output
    assert "dataset 'other': 10 memberships out, 0 members after, now version 2" in result.output
    assert sample_ids(catalog_dir) == expected_ids(V1)
    assert stored(catalog_dir, "sample") == expected_ids(V1) | expected_ids(OTHER)  # retired, not purged
    assert stored(catalog_dir, "membership_left") == expected_ids(OTHER)
    [version] = [v for v in base.json("history", "--dataset", "other")["history"] if v["version"] == 2]
    assert (version["kind"], version["rows_out"], version["members"]) == ("remove", 10, 0)
    gone = base("remove", "--dataset", "other")
    assert gone.exit_code == 1 and "no dataset 'other'" in gone.output  # no current member: it is not one now


def test_remove_where_takes_out_exactly_the_matching_samples(base, catalog_dir):
    condition = "length(output) < 200"
    matching = {
        row["sample_id"]
        for row in map(
            json.loads, base("sql", f"SELECT sample_id FROM samples WHERE {condition}", "--json").output.splitlines()
        )
    }
    assert 0 < len(matching) < len(sample_ids(catalog_dir))
    before = sample_ids(catalog_dir)
    done = base.json("remove", "--where", condition)
    assert done["samples_retired"] == len(matching)
    assert sample_ids(catalog_dir) == before - matching


def test_remove_where_within_one_dataset_keeps_the_other_membership(base, catalog_dir):
    shared = expected_ids(V1) & expected_ids(OTHER)
    done = base.json("remove", "--dataset", "alp", "--where", "list_contains(datasets, 'other')")
    assert done["memberships_out"] == len(shared) and done["samples_retired"] == 0
    assert members(catalog_dir, "alp") == expected_ids(V1) - shared
    assert members(catalog_dir, "other") == expected_ids(OTHER)


def test_remove_ids_with_purge_deletes_the_samples_for_good(base, catalog_dir, tmp_path):
    only_alp = sorted(expected_ids(ROWS[:3]))
    shared = sorted(expected_ids(ROWS[15:17]))
    id_file = write_ids(tmp_path / "takedown.txt", only_alp + shared, "  \n", f"{shared[0]}  # asked twice\n")
    done = base.json("remove", "--ids", id_file, "--purge")
    assert done["samples_retired"] == done["samples_purged"] == 5
    assert done["memberships_out"] == 3 + 2 * 2  # the shared ones leave both datasets
    assert not stored(catalog_dir, "sample") & set(only_alp + shared)
    assert stored(catalog_dir, "purged_sample") == set(only_alp + shared)
    assert set(only_alp + shared) <= stored(catalog_dir, "membership_left")  # the history keeps their ids
    again = base("remove", "--ids", id_file)
    assert again.exit_code == 0 and again.output.startswith("nothing to remove: no current sample matches ids in")


def test_purge_alone_deletes_the_samples_retired_earlier(base, catalog_dir):
    base.json("remove", "--dataset", "other")
    retired = expected_ids(OTHER) - expected_ids(V1)
    purged = base.json("remove", "--purge")
    assert purged["samples_purged"] == len(retired) and purged["memberships_out"] == 0
    assert stored(catalog_dir, "sample") == expected_ids(V1)
    assert base("remove", "--purge").output.startswith("nothing to remove")


def test_ids_from_one_dataset_leave_that_dataset_only(base, catalog_dir, tmp_path):
    shared = sorted(expected_ids(ROWS[15:17]))
    done = base.json("remove", "--dataset", "other", "--ids", write_ids(tmp_path / "ids.txt", shared))
    assert done["memberships_out"] == 2 and done["samples_retired"] == 0
    assert set(shared) <= sample_ids(catalog_dir) and not set(shared) & members(catalog_dir, "other")


def test_a_condition_that_matches_nothing_is_a_message_not_an_error(base, catalog_dir):
    before = files(catalog_dir, "job.lock")  # the removal's job lock, left empty
    result = base("remove", "--where", "output ILIKE '%as an AI language model%'")
    assert result.exit_code == 0
    assert (
        result.output == "nothing to remove: no current sample matches where output ILIKE '%as an AI language model%'\n"
    )
    assert base.json("remove", "--where", "1 = 0")["message"].startswith("nothing to remove")
    assert files(catalog_dir, "job.lock") == before


def test_removing_every_sample_needs_all(base, catalog_dir):
    before, everyone = files(catalog_dir, "job.lock"), len(expected_ids(V1) | expected_ids(OTHER))
    for args in (("--where", "true"), ("--ids", _all_ids_file(catalog_dir))):
        refused = base("remove", *args)
        assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
        assert f"would remove every sample in the catalog ({everyone})" in refused.stderr and "--all" in refused.stderr
    assert files(catalog_dir, "job.lock") == before
    done = base.json("remove", "--all")
    assert done["samples_retired"] == everyone and sample_ids(catalog_dir) == set()
    members_after = {v["dataset"]: v["members"] for v in base.json("history")["history"] if v["kind"] == "remove"}
    assert members_after == {"alp": 0, "other": 0}


def _all_ids_file(catalog_dir: Path) -> Path:
    return write_ids(catalog_dir.parent / "all_ids.txt", sorted(sample_ids(catalog_dir)))


def _bad_id_file(tmp_path: Path) -> Path:
    return write_ids(tmp_path / "bad.txt", [1, 2], "3x\n")


def _not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"12\n\xe9\n")
    return path


ERRORS = [
    (("remove",), "say what to remove: --dataset, --where, --ids or --all"),
    (("remove", "--dataset", "nope"), "no dataset 'nope' in the catalog; datasets: alp, other"),
    (("remove", "--where", "1=1; DROP TABLE sample"), "--where is not one SQL condition on the `samples` view"),
    (("remove", "--where", "output ILIKE"), "--where is not one SQL condition on the `samples` view"),
    (("remove", "--where", "no_such_column = 1"), "--where is not one SQL condition on the `samples` view"),
    (("remove", "--where", "true) OR (true"), "--where is not one SQL condition"),
    (("remove", "--ids", "missing.txt"), "cannot read the id file missing.txt: No such file or directory"),
    (("remove", "--ids", _not_utf8), "it is not UTF-8 text"),
    (("remove", "--ids", _bad_id_file), "line 5: '3x' is not a sample_id (one integer per line)"),
    (("remove", "--all", "--dataset", "alp"), "--all removes every sample: give it alone"),
    (("history", "--dataset", "nope"), "no dataset 'nope' in the catalog's history; datasets: alp, other"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[" ".join(map(str, args)) for args, _ in ERRORS])
def test_user_errors_are_one_line_and_change_nothing(base, catalog_dir, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    args = [arg(tmp_path) if callable(arg) else arg for arg in args]
    before = files(catalog_dir, "job.lock")
    result = base(*args)
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert files(catalog_dir, "job.lock") == before


def test_the_same_verbs_through_miwv(base, catalog_dir, tmp_path):
    cat = miwv.open(catalog_dir)
    replaced = cat.ingest(write_jsonl(tmp_path / "alp_v2.jsonl", V2), "alp", replace=True)
    assert replaced.replace and members(catalog_dir, "alp") == expected_ids(V2)
    again = cat.ingest(V2, "alp", replace=True)  # rows in memory: nothing left, nothing joined
    assert (again.rows_in, again.rows_out, again.version) == (0, 0, 3)

    planned = cat.remove("other", dry_run=True)
    assert isinstance(planned, miwv.Removal) and planned.as_dict()["dry_run"] is True
    assert json.loads(json.dumps(planned.as_dict()))["memberships_out"] == 10
    done = cat.remove(where="n_turns = 1", dataset="other")
    assert done.memberships_out == 10 and not done.dry_run
    nothing = cat.remove(ids=write_ids(tmp_path / "none.txt", [1, 2, 3]))
    assert nothing.change_id is None and nothing.message.startswith("nothing to remove")

    versions = cat.history("alp")
    assert [(v["version"], v["kind"]) for v in versions] == [(1, "ingest"), (2, "replace"), (3, "replace")]
    assert {v["dataset"] for v in cat.history()} == {"alp", "other"}

    with pytest.raises(miwv.ArgumentError) as nothing_named:
        cat.remove()
    assert nothing_named.value.arguments == ("dataset", "where", "ids", "everything")
    with pytest.raises(miwv.ArgumentError, match="^everything removes every sample: give it alone$"):
        cat.remove("alp", everything=True)
    with pytest.raises(miwv.ArgumentError, match="^where is not one SQL condition"):
        cat.remove(where="1=1; DROP TABLE sample")
    for bad, argument in (
        (dict(dataset=5), "dataset"),
        (dict(where=1), "where"),
        (dict(ids=7), "ids"),
        (dict(everything="yes"), "everything"),
        (dict(dataset="alp", purge=1), "purge"),
        (dict(dataset="alp", dry_run=None), "dry_run"),
    ):
        with pytest.raises(miwv.ArgumentError) as raised:
            cat.remove(**bad)
        assert raised.value.arguments == (argument,)
    with pytest.raises(miwv.ArgumentError):
        cat.history(dataset="")
    with pytest.raises(miwv.ArgumentError):
        cat.ingest(V2, "alp", replace="yes")
    with pytest.raises(miwv.UserError, match="no dataset 'gone'"):
        cat.history("gone")


def test_removal_and_history_need_a_catalog(tmp_path):
    missing = CliRun(tmp_path / "none")
    for args in (("remove", "--dataset", "a"), ("history",)):
        result = missing(*args)
        assert result.exit_code == 1 and "no catalog at" in result.stderr
    assert not (tmp_path / "none" / "catalog.duckdb").exists()
