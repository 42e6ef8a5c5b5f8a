"""Every schema revision is tested by upgrading a catalog created at the revision before it,
holding real data, and checking that nothing was lost.

Seeds are written in plain SQL against the schema of their revision, so they stay valid
however the code evolves. Add one seed per new revision.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog import Catalog, UserError, db, migrate
from catalog.records import to_sample
from tests.conftest import fixture_records


def create_at(path: Path, revision: str) -> None:
    """A catalog at `revision` (not head), as an older version of the tool would leave it."""
    path.mkdir(parents=True)
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        migrate.upgrade(conn, revision)


def seed_0001(conn) -> None:
    """Real rows, a membership each, one batch and one reject, as revision 0001 stores them."""
    db.execute(
        conn,
        """INSERT INTO ingest_batch VALUES (1, '/data/mixed_180.jsonl', 'mix', 'jsonl', 'alpaca',
                        'abc', '2026-11-01 10:00:00', '2026-11-01 10:00:01', 181, 180, 0, 1)""",
    )
    for row, record in enumerate(fixture_records(), start=1):
        sample = to_sample(record, "alpaca")
        messages = [{"role": r, "content": c} for r, c in sample.messages]
        db.execute(
            conn,
            """INSERT INTO sample VALUES ($id, $messages, $instruction, $input, $output, $user_text,
                            1, $extra, '2026-11-01 10:00:01', 1)""",
            {
                "id": sample.sample_id,
                "messages": messages,
                "instruction": sample.instruction,
                "input": sample.input,
                "output": sample.output,
                "user_text": sample.user_text,
                "extra": json.dumps(sample.extra) if sample.extra else None,
            },
        )
        db.execute(conn, "INSERT INTO membership VALUES ($id, 'mix', 1, $row)", {"id": sample.sample_id, "row": row})
    db.execute(conn, "INSERT INTO ingest_reject VALUES (1, 181, 'empty response', '{}')")


def seed_0002(conn) -> None:
    """An embedder, a neighbour run, and a link for every seeded sample (its successor by id)."""
    db.execute(
        conn,
        """INSERT INTO embedder VALUES (1, 'minilm', '/models/minilm', 384, 'mean', true, 256, 'f00d',
                        '2026-11-02 10:00:00')""",
    )
    db.execute(
        conn,
        """INSERT INTO neighbour_run VALUES (1, 1, 'exact', 'full', 180, 180, 180,
                        '2026-11-02 10:00:00', '2026-11-02 10:00:05')""",
    )
    db.execute(
        conn,
        """INSERT INTO neighbour_link
                        SELECT sample_id, 1, lead(sample_id) OVER (ORDER BY sample_id), 0.5, 1, '2026-11-02 10:00:05'
                        FROM sample""",
    )


def seed_0003(conn) -> None:
    """A scorer, a finished run, zero-shot and one-shot losses (one too long) for the seeded samples."""
    db.execute(
        conn,
        """INSERT INTO scorer VALUES (1, 'smollm2-135m', 'SmolLM2.gguf', 'beef', 'chat', 4096, 'float32',
                        '2026-11-03 10:00:00')""",
    )
    db.execute(
        conn,
        """INSERT INTO score_run (run_id, scorer_id, embedder_id, device, pool, samples, passes, tokens_run,
                                  started_at, finished_at)
                        VALUES (1, 1, 1, 'cpu', 180, 180, 360, 50000, '2026-11-03 10:00:00', '2026-11-03 10:05:00')""",
    )
    db.execute(
        conn,
        """INSERT INTO zero_shot_loss
                        SELECT sample_id, 1, 'ok', 20.0, 10, 2.0, 100, 1, '2026-11-03 10:05:00' FROM sample""",
    )
    db.execute(
        conn,
        """INSERT INTO one_shot_loss
                        SELECT sample_id, 1, neighbour_id, 'ok', 15.0, 10, 1.5, 200, 1, '2026-11-03 10:05:00', false
                        FROM neighbour_link WHERE neighbour_id IS NOT NULL""",
    )


def seed_0004(conn) -> None:
    """A recorded selection of the 18 seeded samples with the highest MIWV."""
    db.execute(
        conn,
        """INSERT INTO selection VALUES (1, 'smollm2-135m', 1, 'minilm', 'miwv', NULL, 10.0, NULL, NULL, NULL,
                        180, 180, 18, 'WITH pool AS (...) SELECT ...', '/tmp/top.jsonl', '2026-11-04 10:00:00')""",
    )
    db.execute(
        conn,
        """INSERT INTO selection_member
                        SELECT 1, sample_id, row_number() OVER (ORDER BY sample_id), -0.5
                        FROM sample ORDER BY sample_id LIMIT 18""",
    )


def seed_0005(conn) -> None:
    """A second score run spread over two Ray workers, with each worker's share."""
    db.execute(
        conn,
        """INSERT INTO score_run VALUES (2, 1, 1, 'cuda', 180, 10, 20, 4000, '2026-11-05 10:00:00',
                        '2026-11-05 10:01:00', 2)""",
    )
    db.execute(
        conn,
        """INSERT INTO score_run_worker VALUES (2, 0, 'node-a', 'cuda:0', 12, 2500),
                                               (2, 1, 'node-b', 'cuda:0', 8, 1500)""",
    )


def seed_0006(conn) -> None:
    """A scorer of the trainer-exact templates (revision 2, with the template's hash) beside the old one."""
    db.execute(
        conn,
        """INSERT INTO scorer VALUES (2, 'smollm2-135m', 'SmolLM2.gguf', 'beef', 'chat', 4096, 'float32',
                        '2026-11-05 10:00:00', 2, 'c0ffee')""",
    )


def seed_0007(conn) -> None:
    """Scorer 2's zero-shot pass of three samples was too long, and their current rows say so."""
    db.execute(
        conn,
        """INSERT INTO zero_shot_loss
                        SELECT sample_id, 2, 'too_long', NULL, NULL, NULL, 9000, 2, '2026-11-07 10:00:00'
                        FROM sample ORDER BY sample_id LIMIT 3""",
    )
    db.execute(
        conn,
        """INSERT INTO score_current
                        SELECT l.sample_id, 2, l.embedder_id, l.neighbour_id, l.similarity, NULL, NULL, NULL, NULL,
                               'too_long', false
                        FROM neighbour_link l JOIN zero_shot_loss z ON z.sample_id = l.sample_id AND z.scorer_id = 2""",
    )


def seed_0008(conn) -> None:
    """A scorer of a .jinja template, its text recorded beside its hash."""
    db.execute(
        conn,
        """INSERT INTO scorer VALUES (3, 'smollm2-135m', 'SmolLM2.gguf', 'beef', 'vicuna.jinja', 4096, 'float32',
                        '2026-11-08 10:00:00', 2, 'decaf', 'USER: {{ messages[-1].content }}')""",
    )


def seed_0009(conn) -> None:
    """The last 5 seeded samples left dataset 'mix' (change 2, a removal): retired, their memberships
    kept as history, the dataset at version 2; one of them purged (change 3)."""
    db.execute(
        conn,
        """INSERT INTO catalog_change VALUES (2, 'remove', NULL, 'where n_turns = 1', '2026-11-09 10:00:00', true),
                                             (3, 'purge', NULL, 'purge', '2026-11-09 11:00:00', true)""",
    )
    db.execute(
        conn,
        """INSERT INTO membership_left SELECT sample_id, dataset, 2, ingest_id, source_row FROM membership
                        WHERE sample_id IN (SELECT sample_id FROM sample ORDER BY sample_id DESC LIMIT 5)""",
    )
    db.execute(conn, "DELETE FROM membership WHERE sample_id IN (SELECT sample_id FROM membership_left)")
    db.execute(conn, "INSERT INTO dataset_version VALUES ('mix', 2, 2, 0, 5, 175)")
    db.execute(conn, "INSERT INTO purged_sample SELECT min(sample_id), 3 FROM membership_left")


def seed_0010(conn) -> None:
    """Scorer 1's response-alone losses, a run screened by selection 1 with a 50% calibration
    sample of 4 samples, and a selection made through that screen."""
    db.execute(
        conn,
        """INSERT INTO response_loss
                        SELECT sample_id, 1, 'ok', 40.0, 10, 4.0, 11, 3, '2026-11-10 10:00:00' FROM sample""",
    )
    db.execute(
        conn,
        """INSERT INTO score_run VALUES (3, 1, 1, 'cpu', 20, 20, 60, 9000, '2026-11-10 10:00:00',
                        '2026-11-10 10:02:00', 1, 'miwv,ifd', 1, NULL, 50.0, 0)""",
    )
    db.execute(
        conn,
        "INSERT INTO score_calibration SELECT 3, sample_id FROM membership ORDER BY sample_id LIMIT 4",
    )
    db.execute(
        conn,
        """INSERT INTO selection VALUES (2, 'smollm2-135m', 1, 'minilm', 'ifd', 5, NULL, NULL, NULL, NULL,
                        175, 170, 5, 'WITH pool AS (...) SELECT ...', NULL, '2026-11-10 11:00:00', 3, '{"mix": 2}',
                        '{"screen_selection_id": 1, "recall": 0.5}')""",
    )


def seed_0011(conn) -> None:
    """Embedder 1's links within dataset 'mix' beside its catalog-wide ones, their current scores under
    scorer 1, and each sample's two nearest examples in that scope."""
    db.execute(
        conn,
        """INSERT INTO neighbour_link
                        SELECT sample_id, embedder_id, neighbour_id, similarity, run_id, computed_at, 'mix'
                        FROM neighbour_link WHERE scope_dataset = ''""",
    )
    db.execute(
        conn,
        """INSERT INTO score_current SELECT * REPLACE ('mix' AS scope_dataset) FROM score_current
                        WHERE scope_dataset = ''""",
    )
    db.execute(
        conn,
        """INSERT INTO example_list SELECT sample_id, embedder_id, 'mix', r, neighbour_id, similarity / r, computed_at
                        FROM neighbour_link, range(1, 3) t(r)
                        WHERE scope_dataset = 'mix' AND neighbour_id IS NOT NULL""",
    )


def seed_0012(conn) -> None:
    """Two training runs on selection 1 (one finished), their loss curves, a Vicuna prompt and a
    Self-instruct one with an input, both runs' greedy answers to the first, a reference loss and a
    judgement in each order."""
    db.execute(
        conn,
        """INSERT INTO train_run VALUES
             (1, 1, 'smollm2-135m', 'beef', 'alpaca', 'f00', 'lora', '{"epochs": 1}', 0, 'cpu', 5, 'runs/1', 'cafe',
              '2026-11-12 10:00:00', '2026-11-12 10:05:00'),
             (2, 1, 'smollm2-135m', 'beef', 'alpaca', 'f00', 'lora', '{"epochs": 1}', 1, 'cpu', 5, 'runs/2', NULL,
              '2026-11-12 11:00:00', NULL);
           INSERT INTO train_loss VALUES (1, 1, 0.5, 2.5, 0.0002), (1, 2, 1.0, 2.1, 0.0001);
           INSERT INTO test_prompt VALUES (7, 'vicuna', 0, 'Write a haiku.', '', NULL, 'vicuna_80.jsonl'),
             (8, 'self-instruct', 3, 'Fix the spelling.', 'Teh cat sat.', 'The cat sat.',
              'hf:HuggingFaceH4/self-instruct-eval@13c4dae/human-eval.jsonl');
           INSERT INTO generation VALUES (1, 7, '{"greedy": true}', 'Leaves fall.', 3, '2026-11-12 12:00:00'),
                                         (2, 7, '{"greedy": true}', 'Snow.', 2, '2026-11-12 12:00:00');
           INSERT INTO reference_loss VALUES (1, 7, 1.5, 10, '2026-11-12 12:00:00');
           INSERT INTO judgement VALUES
             (1, 2, 7, true, 'local:judge', '{"greedy": true}', 'abc', 'a', '[[A]]', '2026-11-12 12:01:00'),
             (1, 2, 7, false, 'local:judge', '{"greedy": true}', 'abc', 'tie', '[[C]]', '2026-11-12 12:02:00')""",
    )


SEEDS = {
    "0001": seed_0001,
    "0002": seed_0002,
    "0003": seed_0003,
    "0004": seed_0004,
    "0005": seed_0005,
    "0006": seed_0006,
    "0007": seed_0007,
    "0008": seed_0008,
    "0009": seed_0009,
    "0010": seed_0010,
    "0011": seed_0011,
    "0012": seed_0012,
}


def seeded_at(path: Path, revision: str) -> None:
    """A catalog at `revision` holding the data of every revision up to it, each seed written
    at its own revision (as the versions of the tool in between would have left it)."""
    create_at(path, "0001")
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        for seed_revision, seed in SEEDS.items():
            if seed_revision <= revision:
                migrate.upgrade(conn, seed_revision)
                seed(conn)


def revisions() -> list[tuple[str, str]]:
    """(previous, revision) for every revision that has a predecessor, oldest first."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate._config())
    return [(s.down_revision, s.revision) for s in reversed(list(scripts.walk_revisions())) if s.down_revision]


def snapshot(conn, tables: list[str]) -> dict[str, list[tuple]]:
    return {t: db.execute(conn, f"SELECT * FROM {t} ORDER BY ALL") for t in tables}


def user_tables(conn) -> list[str]:
    return [
        r[0] for r in db.execute(conn, "SELECT table_name FROM duckdb_tables() WHERE table_name <> 'alembic_version'")
    ]


@pytest.mark.parametrize(("previous", "revision"), revisions())
def test_upgrading_from_the_previous_revision_keeps_every_row(tmp_path, previous, revision):
    path = tmp_path / "old"
    seeded_at(path, previous)
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        before = snapshot(conn, user_tables(conn))
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        migrate.upgrade(conn, revision)
        assert migrate.current_revision(conn) == revision
        after = snapshot(conn, list(before))
    for table, rows in before.items():
        assert len(after[table]) == len(rows), table
        assert [r[: len(rows[0])] for r in after[table]] == rows, table


def test_scorers_from_before_0006_keep_their_losses_at_template_revision_1(tmp_path):
    """Old scorers stay distinguishable: revision 1, no hash; the same model, template, length and
    dtype at the new revision is a second scorer, so old and new losses never mix."""
    from catalog.score import TemplateKey, find_scorer, register_scorer

    path = tmp_path / "old"
    create_at(path, "0004")
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        for seed in (seed_0001, seed_0002, seed_0003, seed_0004):
            seed(conn)
    catalog = Catalog(path)  # opening upgrades to head
    old = find_scorer(catalog, "smollm2-135m")
    assert (old.scorer_id, old.template, old.template_revision, old.template_hash) == (1, "chat", 1, None)
    new = register_scorer(
        catalog, "smollm2-135m", "SmolLM2.gguf", "beef", TemplateKey("chat", 2, "c0ffee"), 4096, "float32"
    )
    assert new.scorer_id == 2 and new.template_revision == 2
    with catalog.read() as conn:
        assert db.execute(conn, "SELECT DISTINCT scorer_id FROM miwv_scores") == [(1,)]
        assert db.execute(conn, "SELECT count(*) FROM zero_shot_loss WHERE scorer_id = 1")[0][0] == 180


def test_0007_keeps_every_row_of_miwv_scores_in_every_status(tmp_path):
    """The view over score_current shows what the join of links and losses showed: the same
    columns in the same order and the same rows, including no_neighbour, too_long and
    too_long_one_shot rows, and leaving out a sample whose link moved (stale)."""
    path = tmp_path / "old"
    seeded_at(path, "0006")
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        ids = [r[0] for r in db.execute(conn, "SELECT sample_id FROM sample ORDER BY sample_id LIMIT 3")]
        db.execute(
            conn, "UPDATE zero_shot_loss SET status = 'too_long', loss = NULL WHERE sample_id = $id", {"id": ids[0]}
        )
        db.execute(
            conn,
            "UPDATE one_shot_loss SET status = 'too_long_one_shot', loss = NULL, example_truncated = true "
            "WHERE sample_id = $id",
            {"id": ids[1]},
        )
        db.execute(
            conn, "UPDATE neighbour_link SET neighbour_id = $n WHERE sample_id = $id", {"id": ids[2], "n": ids[0]}
        )
        old = db.execute(conn, "SELECT * FROM miwv_scores ORDER BY ALL")
        old_columns = db.execute(conn, "SELECT column_name, column_type FROM (DESCRIBE miwv_scores)")
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        migrate.upgrade(conn, "0007")
        assert db.execute(conn, "SELECT * FROM miwv_scores ORDER BY ALL") == old
        assert db.execute(conn, "SELECT column_name, column_type FROM (DESCRIBE miwv_scores)") == old_columns
        statuses = {r[0] for r in db.execute(conn, "SELECT status FROM score_current")}
    assert statuses == {"ok", "too_long", "too_long_one_shot", "no_neighbour"}
    assert len(old) == 180 - 1  # the sample whose link moved is stale


def test_0008_leaves_the_template_text_of_earlier_scorers_unknown(tmp_path):
    """Scorers from before 0008 keep every column and have no template text (NULL: the page says
    so); a scorer registered after it records the text it renders with."""
    from catalog.score import TemplateKey, register_scorer

    path = tmp_path / "old"
    seeded_at(path, "0007")
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        before = db.execute(conn, "SELECT * FROM scorer ORDER BY scorer_id")
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        migrate.upgrade(conn, "0008")
        after = db.execute(conn, "SELECT * FROM scorer ORDER BY scorer_id")
    assert [row[:-1] for row in after] == before
    assert [row[-1] for row in after] == [None, None]
    new = register_scorer(
        Catalog(path), "smollm2-135m", "SmolLM2.gguf", "beef", TemplateKey("v.jinja", 2, "f00"), 4096, "float32",
        "USER: {{ messages[-1].content }}",
    )  # fmt: skip
    assert new.template_text == "USER: {{ messages[-1].content }}"
    with Catalog(path).read() as conn:
        assert db.execute(conn, "SELECT template_text FROM scorer WHERE scorer_id = 3") == [(new.template_text,)]


def test_0009_gives_each_earlier_ingest_a_change_and_a_dataset_version(tmp_path):
    """Each batch becomes an 'ingest' change (its id, its finish time) and a version of its dataset
    with the rows it brought in; a selection gets the last change before it; then removal works on
    the upgraded catalog's old rows, links and scores."""
    from catalog import lifecycle

    path = tmp_path / "old"
    seeded_at(path, "0008")
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        db.execute(
            conn,
            """INSERT INTO ingest_batch VALUES (2, '/data/extra.jsonl', 'extra', 'jsonl', 'alpaca', 'def',
                            '2026-11-06 10:00:00', '2026-11-06 10:00:01', 5, 0, 5, 0)""",
        )
        db.execute(
            conn,
            "INSERT INTO membership SELECT sample_id, 'extra', 2, row_number() OVER () FROM sample "
            "ORDER BY sample_id LIMIT 5",
        )
        migrate.upgrade(conn, "0009")
        changes = db.execute(conn, "SELECT change_id, kind, ingest_id, detail, created_at FROM catalog_change")
        versions = db.execute(conn, "SELECT * FROM dataset_version ORDER BY change_id")
        selections = db.execute(conn, "SELECT selection_id, pool_change_id, pool_versions FROM selection")
    assert [row[:4] for row in changes] == [
        (1, "ingest", 1, "/data/mixed_180.jsonl"),
        (2, "ingest", 2, "/data/extra.jsonl"),
    ]
    assert str(changes[0][4]) == "2026-11-01 10:00:01"
    assert versions == [("mix", 1, 1, 180, 0, 180), ("extra", 1, 2, 5, 0, 5)]
    assert selections == [(1, 1, None)]  # selected on 11-04: after batch 1, before batch 2

    catalog = Catalog(path)
    removed = lifecycle.remove(catalog, dataset="extra")
    assert (removed.memberships_out, removed.samples_retired) == (5, 0)  # they stay in 'mix'
    with catalog.read() as conn:
        ids = [r[0] for r in db.execute(conn, "SELECT sample_id FROM sample ORDER BY sample_id LIMIT 2 OFFSET 1")]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(map(str, ids)) + "\n")
    removed = lifecycle.remove(catalog, ids=ids_file)
    assert (removed.memberships_out, removed.samples_retired, removed.links_to_repair) == (2, 2, 1)  # its predecessor
    with catalog.read() as conn:
        touching = "SELECT count(*) FROM {} WHERE sample_id IN ($a, $b) OR neighbour_id IN ($a, $b)"
        for table in ("neighbour_link", "score_current"):
            assert db.execute(conn, touching.format(table), {"a": ids[0], "b": ids[1]}) == [(0,)], table
        assert db.execute(conn, "SELECT count(*) FROM samples") == [(178,)]
    assert [(h["dataset"], h["version"], h["kind"], h["rows_out"]) for h in lifecycle.history(catalog)][-2:] == [
        ("extra", 2, "remove", 5),
        ("mix", 2, "remove", 2),
    ]


def test_0011_makes_every_earlier_link_and_score_catalog_wide(tmp_path):
    """Links and current scores from before scopes are the catalog-wide ones; the views say so, and a
    dataset-scoped row for the same sample can sit beside each."""
    path = tmp_path / "old"
    seeded_at(path, "0010")
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        links = db.execute(conn, "SELECT count(*) FROM neighbour_link")[0][0]
        scores = db.execute(conn, "SELECT count(*) FROM score_current")[0][0]
        migrate.upgrade(conn, "0011")
        assert db.execute(conn, "SELECT DISTINCT scope, scope_dataset FROM neighbours") == [("catalog", None)]
        assert db.execute(conn, "SELECT count(*), min(scope) FROM miwv_scores") == [(scores, "catalog")]
        seed_0011(conn)
        by_scope = db.execute(conn, "SELECT scope, scope_dataset, count(*) FROM neighbours GROUP BY ALL ORDER BY 1")
        assert by_scope == [("catalog", None, links), ("dataset", "mix", links)]
        assert db.execute(conn, "SELECT count(DISTINCT scope) FROM miwv_scores") == [(2,)]
        listed = db.execute(
            conn,
            """SELECT count(*) FROM example_list x JOIN one_shot_loss o USING (sample_id, neighbour_id)
               WHERE o.scorer_id = 1 AND x.neighbour_id IN (SELECT sample_id FROM membership)""",
        )[0][0]
        assert listed > 0
        assert db.execute(conn, "SELECT count(*), min(scope_dataset) FROM miwv_examples WHERE scorer_id = 1") == [
            (listed, "mix")
        ]


def test_0012_keeps_a_test_prompts_input_apart_and_defaults_it_to_empty(tmp_path):
    """Its seed stores at 0012, and a test prompt inserted without an input has '' (not NULL)."""
    path = tmp_path / "old"
    seeded_at(path, "0012")
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        db.execute(
            conn,
            """INSERT INTO test_prompt (prompt_id, testset, position, prompt, reference, source)
               VALUES (9, 'koala', 0, 'Tell a joke.', NULL, 'koala_test_set.jsonl')""",
        )
        rows = db.execute(conn, "SELECT prompt_id, prompt, input FROM test_prompt ORDER BY prompt_id")
    assert rows == [(7, "Write a haiku.", ""), (8, "Fix the spelling.", "Teh cat sat."), (9, "Tell a joke.", "")]


def test_every_revision_has_a_seed_so_the_next_one_is_tested_with_data():
    assert {previous for previous, _ in revisions()} <= set(SEEDS)
    assert migrate.head_revision() in SEEDS


def test_0005_leaves_earlier_runs_without_a_worker_count(tmp_path):
    path = tmp_path / "old"
    create_at(path, "0004")
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        for seed in (seed_0001, seed_0002, seed_0003, seed_0004):
            seed(conn)
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        migrate.upgrade(conn, "0005")
        assert db.execute(conn, "SELECT run_id, workers FROM score_run") == [(1, None)]
        assert db.execute(conn, "SELECT count(*) FROM score_run_worker") == [(0,)]


def test_opening_an_old_catalog_upgrades_it_to_head(tmp_path):
    path = tmp_path / "old"
    create_at(path, "0001")
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        seed_0001(conn)
    catalog = Catalog(path)
    with catalog.read() as conn:  # a read-only command upgrades first
        assert migrate.current_revision(conn) == migrate.head_revision()
        assert db.execute(conn, "SELECT count(*) FROM samples")[0][0] == 180


def test_a_catalog_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "new"
    create_at(path, migrate.head_revision())
    with db.connect(path / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        db.execute(conn, "UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(UserError, match="revision 9999, which this version does not know"):
        with Catalog(path).read():
            pass
