"""The SQL behind the web explorer's pages.

Every statement is run with its values inlined as SQL literals, so the text a page shows
under a table is exactly the text that ran, and a user can paste it into `cli.py sql`.
Each function takes one read-only connection (opened per page request: a page reads one
consistent state, and the next request sees whatever a running job has committed since).

Pages show current samples only (`samples`, `membership`, `score_current` hold no retired ones);
the history of what left is read from the `dataset_versions` and `departures` views.

A scorer with response-alone losses also has IFD and ifd_ppl (the `ifd_scores` view): its model
page adds their summary and agreement with MIWV (the `report` statements), its samples can be sorted
and filtered by them, a sample's page shows them beside its MIWV, and the compare page can rank
either side by them. A scorer without response losses is read by the very statements it was before.

Scores come in neighbour scopes (`scope_dataset` in `score_current` and `neighbour_link`: '' when a
sample's example was searched over the whole catalog, else the dataset it was searched in; a sample
in two datasets has a row per dataset). A page reads one scope (ScoreKey.scope_dataset), so no list
or summary holds a sample twice; a sample's own page shows every scope it has.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from catalog import db, migrate
from catalog.datasets import require_dataset
from catalog.errors import UserError
from catalog.query import one_condition, run_read_only
from catalog.report import (
    AGREEMENT_ONE_SCOPE_SQL,
    ALL,
    HAS_IFD_SQL,
    IFD_SUMMARY_SQL,
    SUMMARY_ONE_SCOPE_SQL,
    TOP_PERCENT,
)
from catalog.score import find_scorer
from catalog.select import MEMBERS_GONE, POOL_STATE
from catalog.status import DATASETS_SQL, EMBEDDERS_SQL, INGESTS_SQL, SCORES_SQL, catalog_status
from catalog.store import Catalog


class NotFound(UserError):
    """A model, sample or selection the catalog does not have (the web answers 404)."""


@dataclass(frozen=True)
class Table:
    """Rows of a table, with the statements that produced them (each runs alone in `cli.py sql`)."""

    name: str  # short, for download links
    statements: tuple[str, ...]
    columns: list[str]
    rows: list[dict[str, Any]]


def literal(value: Any) -> str:
    """`value` as an SQL literal. Floats go through their shortest round-trip text, so a value
    read from the catalog compares equal to itself when it comes back in a keyset cursor."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"'{value!r}'::DOUBLE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def inline(sql: str, params: dict[str, Any] | None = None) -> str:
    """`sql` with each $name replaced by the literal of params[name]."""
    params = params or {}
    return re.sub(r"\$(\w+)", lambda match: literal(params[match.group(1)]), sql)


def fetch(conn: sa.Connection, name: str, sql: str, params: dict[str, Any] | None = None) -> Table:
    """Run `sql` (our own statement) with `params` inlined; the Table keeps the text that ran."""
    text = inline(_tidy(sql), params)
    return _table(name, text, db.query_arrow(conn, text))


def _table(name: str, text: str, arrow) -> Table:
    return Table(name, (text,), arrow.column_names, arrow.to_pylist())


def _tidy(sql: str) -> str:
    """Statements as shown: dedented, no blank lines at either end."""
    lines = sql.strip("\n").splitlines()
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return "\n".join(line[indent:] for line in lines).strip()


def require_current_schema(catalog: Catalog) -> None:
    """Refuse a catalog that would need a migration (the explorer never writes), and a database
    that is not a catalog at all (for which `upgrade` is no help), with the advice each needs."""
    catalog.require()
    revision = catalog._stored_revision()  # refuses a foreign database, or one of a newer version
    if revision != migrate.head_revision():
        raise UserError(catalog._needs_upgrade(revision))


# ---- the overview -------------------------------------------------------------------------

SCORE_RUNS_SQL = """
    SELECT r.run_id, sc.model, sc.template, sc.max_length, e.name AS embedder, r.device, r.pool,
           r.samples, r.passes, r.tokens_run,
           strftime(r.started_at, '%Y-%m-%d %H:%M:%S') AS started_at,
           coalesce(strftime(r.finished_at, '%Y-%m-%d %H:%M:%S'), 'interrupted') AS finished_at,
           round(epoch(r.finished_at - r.started_at), 1) AS seconds
    FROM score_run r JOIN scorer sc USING (scorer_id) JOIN embedder e USING (embedder_id)
    ORDER BY r.run_id DESC LIMIT $limit
"""

NEIGHBOUR_RUNS_SQL = """
    SELECT r.run_id, e.name AS embedder, r.method, r.mode, r.samples, r.new_samples, r.links_changed,
           strftime(r.finished_at, '%Y-%m-%d %H:%M:%S') AS finished_at,
           round(epoch(r.finished_at - r.started_at), 1) AS seconds
    FROM neighbour_run r JOIN embedder e USING (embedder_id)
    ORDER BY r.run_id DESC LIMIT $limit
"""


# The last changes of dataset memberships (ingest, replace, remove, purge), newest first.
HISTORY_SQL = """
    SELECT dataset, version, kind, rows_in, rows_out, members, detail,
           strftime(created_at, '%Y-%m-%d %H:%M:%S') AS created_at, change_id
    FROM dataset_versions ORDER BY change_id DESC, dataset LIMIT $limit
"""


def overview(catalog: Catalog, conn: sa.Connection, runs: int = 10) -> tuple[dict[str, Any], dict[str, Table]]:
    """The facts of `cli.py status` (current samples, retired, purged, advice) and its tables with
    their statements, then the last dataset versions, score runs and neighbour runs, newest first
    (read through `conn`)."""
    facts = catalog_status(catalog)
    lance = (
        "-- embedded, not_linked: the current samples with a vector in the embedder's LanceDB table "
        "(vectors/embedder_<id>)\n"
    )
    tables = {
        name: Table(name, (_tidy(sql),), list(facts[name][0]) if facts[name] else [], facts[name])
        for name, sql in (
            ("datasets", DATASETS_SQL),
            ("embedders", lance + _tidy(EMBEDDERS_SQL)),
            ("scores", SCORES_SQL),
            ("ingests", INGESTS_SQL),
        )
    }
    tables["history"] = fetch(conn, "history", HISTORY_SQL, {"limit": 2 * runs})
    tables["score_runs"] = fetch(conn, "score_runs", SCORE_RUNS_SQL, {"limit": runs})
    tables["neighbour_runs"] = fetch(conn, "neighbour_runs", NEIGHBOUR_RUNS_SQL, {"limit": runs})
    return {key: facts[key] for key in ("samples", "retired", "purged", "advice")}, tables


# ---- which scores a page shows ------------------------------------------------------------


@dataclass(frozen=True)
class ScoreKey:
    """One model's scores: a scorer (model, template, max length, dtype) with one embedder's neighbours
    in one scope (`scope_dataset`: '' catalog-wide, else the dataset its examples come from)."""

    model: str
    scorer_id: int
    embedder_id: int
    embedder: str
    template: str
    max_length: int
    dtype: str
    scope_dataset: str = ""

    @property
    def scope(self) -> str:
        """The scope as the explorer's URLs name it (`scope=`)."""
        return scope_name(self.scope_dataset)


# A scorer without losses (its runs stopped before their first commit) comes last.
SCORE_KEYS_SQL = """
    WITH scored AS (SELECT DISTINCT scorer_id FROM zero_shot_loss)
    SELECT sc.model, r.scorer_id, r.embedder_id, e.name AS embedder, sc.template, sc.max_length, sc.dtype
    FROM score_run r JOIN scorer sc USING (scorer_id) JOIN embedder e USING (embedder_id)
         LEFT JOIN scored l ON l.scorer_id = r.scorer_id
    GROUP BY ALL ORDER BY max(l.scorer_id IS NOT NULL) DESC, max(r.run_id) DESC
"""


def score_keys(conn: sa.Connection) -> list[ScoreKey]:
    """Every (scorer, embedder) pair that has a score run, the most recently run first (those
    with losses before those without)."""
    return [ScoreKey(**row) for row in db.records(conn, SCORE_KEYS_SQL)]


def default_scorer(catalog: Catalog, model: str) -> int:
    """The scorer a page of `model` shows when none is asked for: the one `select` and `report`
    take (its newest with losses, never the empty scorer of a run that failed); NotFound if none."""
    try:
        return find_scorer(catalog, model).scorer_id
    except UserError as error:
        raise NotFound(str(error)) from None


def find_scores(
    conn: sa.Connection, model: str | None, scorer_id: int | None = None, embedder_id: int | None = None
) -> ScoreKey:
    """The most recently run scores of `model` (narrowed by scorer and embedder ids; any model
    when None); NotFound otherwise. A page of one model asks for its `default_scorer`."""
    keys = score_keys(conn)
    matches = [
        k
        for k in keys
        if model in (None, k.model) and scorer_id in (None, k.scorer_id) and embedder_id in (None, k.embedder_id)
    ]
    if not matches:
        known = ", ".join(sorted({k.model for k in keys})) or "none"
        narrowed = "".join(
            f" {name} {value}" for name, value in (("scorer", scorer_id), ("embedder", embedder_id)) if value
        )
        raise NotFound(
            f"no scores for {f'model {model!r}' if model else 'any model'}{narrowed}; scored models: {known}"
        )
    return matches[0]


def _of(key: ScoreKey) -> dict[str, int | str]:
    return {"scorer": key.scorer_id, "embedder": key.embedder_id, "scope": key.scope_dataset}


# ---- scopes: where a sample's example was searched -----------------------------------------

CATALOG_SCOPE = "catalog"
DATASET_SCOPE = "dataset:"  # + the dataset's name


def scope_name(scope_dataset: str) -> str:
    """`catalog` for the catalog-wide scope (stored as ''), else `dataset:NAME`."""
    return f"{DATASET_SCOPE}{scope_dataset}" if scope_dataset else CATALOG_SCOPE


def parse_scope(text: str) -> str:
    """The stored scope_dataset of a scope named as in the URLs (`catalog` or `dataset:NAME`)."""
    if text == CATALOG_SCOPE:
        return ""
    if text.startswith(DATASET_SCOPE) and text[len(DATASET_SCOPE) :]:
        return text[len(DATASET_SCOPE) :]
    raise UserError(f"unknown scope {text!r}; use {CATALOG_SCOPE} or {DATASET_SCOPE}NAME (a dataset)")


# The scopes a (scorer, embedder) has current scores in: catalog-wide first, then datasets by name.
SCOPES_SQL = """
    SELECT DISTINCT scope_dataset FROM score_current WHERE scorer_id = $scorer AND embedder_id = $embedder
    ORDER BY scope_dataset <> '', scope_dataset
"""


def scopes(conn: sa.Connection, key: ScoreKey) -> list[str]:
    """The scope_datasets `key`'s scorer and embedder have scores in (none: it has no current score)."""
    return [row[0] for row in db.execute(conn, SCOPES_SQL, {"scorer": key.scorer_id, "embedder": key.embedder_id})]


def in_scope(conn: sa.Connection, key: ScoreKey, asked: str | None) -> ScoreKey:
    """`key` in the scope `asked` names (`catalog` or `dataset:NAME`); None: catalog-wide where it has
    such scores, else its first dataset scope. A scope it has no scores in is refused, naming those it has."""
    present = scopes(conn, key)
    if asked is None:
        return replace(key, scope_dataset="" if "" in present or not present else present[0])
    wanted = parse_scope(asked)
    if wanted not in (present or [""]):
        names = ", ".join(map(scope_name, present)) or "none"
        raise UserError(
            f"scorer {key.scorer_id} ({key.model}) with embedder {key.embedder} has no scores in scope {asked!r}; "
            f"its scopes: {names}"
        )
    return replace(key, scope_dataset=wanted)


def dataset_names(conn: sa.Connection) -> list[str]:
    return [row[0] for row in db.execute(conn, "SELECT DISTINCT dataset FROM membership ORDER BY 1")]


def has_ifd(conn: sa.Connection, scorer_id: int) -> bool:
    """Whether the scorer has response-alone losses for a current sample (so IFD and ifd_ppl exist)."""
    return bool(db.execute(conn, HAS_IFD_SQL, {"scorer": scorer_id})[0][0])


def scorers_with_ifd(conn: sa.Connection) -> set[int]:
    return {row[0] for row in db.execute(conn, "SELECT DISTINCT scorer_id FROM ifd_scores")}


def _no_ifd(key: ScoreKey, asked: str) -> UserError:
    return UserError(
        f"{asked} needs IFD, and scorer {key.scorer_id} ({key.model}) has no response-alone losses; "
        f"score it with `score --model {key.model} --metrics miwv,ifd`"
    )


# ---- a model ------------------------------------------------------------------------------

STATUS_SQL = """
    SELECT status, count(*) AS samples
    FROM score_current WHERE scorer_id = $scorer AND embedder_id = $embedder AND scope_dataset = $scope
    GROUP BY status ORDER BY samples DESC
"""

HISTOGRAM_SQL = """
    WITH scored AS (
        SELECT m.miwv, d.dataset
        FROM score_current m JOIN membership d USING (sample_id)
        WHERE m.scorer_id = $scorer AND m.embedder_id = $embedder AND m.scope_dataset = $scope AND m.status = 'ok'
    ),
    bounds AS (SELECT min(miwv) AS lo, greatest(max(miwv) - min(miwv), 1e-9) / $bins AS width FROM scored)
    SELECT dataset, least(floor((miwv - lo) / width), $bins - 1)::INTEGER AS bin,
           lo + width * least(floor((miwv - lo) / width), $bins - 1) AS bin_start, width, count(*) AS samples
    FROM scored, bounds
    GROUP BY ALL ORDER BY bin, dataset
"""

# A fixed pseudo-random subset (by hash of sample_id); their texts come from a second statement.
POINTS_SQL = """
    SELECT sample_id, zero_shot_loss, one_shot_loss, miwv
    FROM score_current
    WHERE scorer_id = $scorer AND embedder_id = $embedder AND scope_dataset = $scope AND status = 'ok'
    ORDER BY hash(sample_id), sample_id
    LIMIT $limit
"""


# `report`'s summary and MIWV-IFD agreement over the rows of one stored scope (the page's).
SUMMARY_SQL, AGREEMENT_SQL = SUMMARY_ONE_SCOPE_SQL, AGREEMENT_ONE_SCOPE_SQL

HISTOGRAM_BINS = 40
SCATTER_POINTS = 1500


def model_tables(
    conn: sa.Connection, key: ScoreKey, bins: int = HISTOGRAM_BINS, points: int = SCATTER_POINTS
) -> dict[str, Table]:
    """Per-dataset summary (the `report` statement), status counts, histogram bins, and a fixed
    pseudo-random subset of (L_zero, L_one) points for the scatter plot; for a scorer with response
    losses also `report`'s IFD summary per dataset and the agreement of MIWV and IFD."""
    tables = {
        "summary": fetch(conn, "summary", SUMMARY_SQL, {**_of(key), "all": ALL}),
        "status": fetch(conn, "status", STATUS_SQL, _of(key)),
        "histogram": fetch(conn, "histogram", HISTOGRAM_SQL, {**_of(key), "bins": bins}),
        "points": _with_texts(conn, fetch(conn, "points", POINTS_SQL, {**_of(key), "limit": points})),
    }
    if has_ifd(conn, key.scorer_id):
        tables["ifd"] = fetch(conn, "ifd", IFD_SUMMARY_SQL, {"scorer": key.scorer_id, "all": ALL})
        tables["agreement"] = fetch(conn, "agreement", AGREEMENT_SQL, {**_of(key), "percent": TOP_PERCENT})
    return tables


# ---- one model's samples, keyset-paged ----------------------------------------------------

SORTS = {
    "miwv": "m.miwv",
    "zero_shot_loss": "m.zero_shot_loss",
    "one_shot_loss": "m.one_shot_loss",
    "similarity": "m.similarity",
    "n_response_tokens": "m.n_response_tokens",
    "response_loss": "m.response_loss",
    "ifd": "m.ifd",
    "ifd_ppl": "m.ifd_ppl",
}
RANGES = ("miwv", "zero_shot_loss", "one_shot_loss", "similarity", "response_loss", "ifd", "ifd_ppl")
IFD_COLUMNS = ("response_loss", "ifd", "ifd_ppl")  # sorts and ranges only a scorer with response losses has
STATUSES = ("ok", "too_long", "too_long_one_shot", "no_neighbour")


@dataclass(frozen=True)
class Cursor:
    """A row's position in the order: its sort value and sample_id (URL form: VALUE_ID)."""

    value: float | int | None
    sample_id: int

    def token(self) -> str:
        return f"{self.value!r}_{self.sample_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        value, _, sample_id = text.partition("_")
        try:
            number = None if value == "None" else float(value) if any(c in value for c in ".en") else int(value)
            return cls(number, int(sample_id))
        except ValueError:
            raise UserError(f"bad page cursor {text!r}; start from the first page") from None


@dataclass(frozen=True)
class SampleQuery:
    """Which of one model's samples, in what order. `after` / `before` page forward / back."""

    sort: str = "miwv"
    descending: bool = True
    dataset: str | None = None
    status: str | None = None
    search: str | None = None  # a substring of the user text or the response, any case
    where: str | None = None  # an SQL condition on the `samples` view (aliased s)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    after: Cursor | None = None
    before: Cursor | None = None
    limit: int = 50


@dataclass(frozen=True)
class SamplePage:
    table: Table
    next: Cursor | None  # the last row, when more follow
    previous: Cursor | None  # the first row, when rows precede it


PAGE_COLUMNS = """m.sample_id, m.status, m.miwv, m.zero_shot_loss, m.one_shot_loss, m.similarity,
       m.n_response_tokens, m.neighbour_id"""
DOWNLOAD_COLUMNS = """m.sample_id, s.datasets, m.status, m.miwv, m.zero_shot_loss, m.one_shot_loss, m.similarity,
       m.n_response_tokens, m.neighbour_id, m.example_truncated, s.user_text, s.response"""
IFD_PAGE_COLUMNS = ", m.response_loss, m.ifd, m.ifd_ppl"
# A scorer with response losses: its MIWV rows and its IFD rows side by side, so the list holds every
# sample with either (one scored for IFD alone, a screen's `--metrics ifd`, has no MIWV row). status
# is MIWV's, else IFD's; ifd and ifd_ppl are shown only where defined (status ok in `ifd_scores`). In a
# dataset scope, the IFD rows are those of the dataset's members.
IFD_SOURCE = """(SELECT coalesce(c.sample_id, i.sample_id) AS sample_id, coalesce(c.status, i.status) AS status, c.miwv,
        coalesce(c.zero_shot_loss, i.zero_shot_loss) AS zero_shot_loss, c.one_shot_loss, c.similarity,
        coalesce(c.n_response_tokens, i.n_response_tokens) AS n_response_tokens, c.neighbour_id, c.example_truncated,
        i.response_loss, i.ifd, i.ifd_ppl
 FROM (SELECT * FROM score_current WHERE scorer_id = $scorer AND embedder_id = $embedder AND scope_dataset = $scope) c
 FULL JOIN (SELECT sample_id, status, zero_shot_loss, n_response_tokens, response_loss,
                   CASE WHEN status = 'ok' THEN ifd END AS ifd, CASE WHEN status = 'ok' THEN ifd_ppl END AS ifd_ppl
            FROM ifd_scores WHERE scorer_id = $scorer
             AND ($scope = '' OR sample_id IN (SELECT sample_id FROM membership WHERE dataset = $scope))) i
   ON i.sample_id = c.sample_id) m"""
# A page's texts and datasets, read from the tables for its ids alone: through the `samples`
# view, DuckDB grouped all of `membership` first (seconds at 1M samples for 1,500 ids).
PAGE_TEXTS_SQL = """
    SELECT sample_id, left(user_text, 160) AS user_text, left(messages[-1].content, 160) AS response
    FROM sample WHERE sample_id IN ($ids)
"""
PAGE_DATASETS_SQL = """
    SELECT sample_id, list(dataset ORDER BY ingest_id, dataset) AS datasets
    FROM membership WHERE sample_id IN ($ids) GROUP BY sample_id
"""


def samples_page(conn: sa.Connection, key: ScoreKey, query: SampleQuery) -> SamplePage:
    """One page of `query`: keyset paging on (sort value, sample_id), so a deep page costs what the
    first one does (no OFFSET scan). Two statements: the page's ids and scores from `score_current`
    (the table behind `miwv_scores`; joined to `samples` only when a text or SQL filter needs
    it), then those samples' texts,
    so no text is read for rows that do not make the page. The first runs through the
    read-only check of `cli.py sql`, because `query.where` is user SQL."""
    backward = query.before is not None and query.after is None
    cursor = query.before if backward else query.after
    columns = PAGE_COLUMNS + (IFD_PAGE_COLUMNS if has_ifd(conn, key.scorer_id) else "")
    sql = _samples_sql(conn, key, query, columns, cursor, backward, query.limit + 1)
    table = _run_filtered(conn, "samples", sql, query.where)
    rows = table.rows[: query.limit]
    more = len(table.rows) > query.limit
    if backward:
        rows.reverse()
    texts = _page_texts(conn, [r["sample_id"] for r in rows])
    table = Table(
        "samples",
        (sql, *texts.statements),
        table.columns[:1] + ["datasets"] + table.columns[1:] + ["user_text", "response"],
        [{**row, **texts.rows[i]} for i, row in enumerate(rows)],
    )
    if not rows:
        return SamplePage(table, None, None)
    column = query.sort
    first, last = (Cursor(r[column], r["sample_id"]) for r in (rows[0], rows[-1]))
    has_next = (not backward and more) or (backward and cursor is not None)
    has_previous = (backward and more) or (not backward and cursor is not None)
    return SamplePage(table, last if has_next else None, first if has_previous else None)


def _page_texts(conn: sa.Connection, sample_ids: list[int]) -> Table:
    """datasets and the first 160 characters of the texts of `sample_ids`, in their order."""
    ids = ", ".join(str(int(i)) for i in sample_ids) or "NULL"
    texts, datasets = (_tidy(sql).replace("$ids", ids) for sql in (PAGE_TEXTS_SQL, PAGE_DATASETS_SQL))
    found = {row["sample_id"]: row for row in db.records(conn, texts)}
    lists = dict(db.execute(conn, datasets))
    rows = [{"sample_id": i, "datasets": lists[i], **found[i]} for i in sample_ids]
    return Table("texts", (texts, datasets), ["sample_id", "datasets", "user_text", "response"], rows)


def _with_texts(conn: sa.Connection, table: Table) -> Table:
    """`table` with each row's first dataset and texts added (read for its ids alone)."""
    texts = _page_texts(conn, [row["sample_id"] for row in table.rows])
    rows = [{**row, **text, "dataset": text["datasets"][0]} for row, text in zip(table.rows, texts.rows, strict=True)]
    columns = [*table.columns, "dataset", "user_text"]
    return Table(table.name, (*table.statements, *texts.statements), columns, rows)


def samples_download(conn: sa.Connection, key: ScoreKey, query: SampleQuery) -> Table:
    """Every sample `query` matches (all pages), in its order, with full texts."""
    columns = DOWNLOAD_COLUMNS + (IFD_PAGE_COLUMNS if has_ifd(conn, key.scorer_id) else "")
    sql = _samples_sql(conn, key, query, columns, join_samples=True)
    return _run_filtered(conn, "samples", sql, query.where)


def _run_filtered(conn: sa.Connection, name: str, sql: str, where: str | None) -> Table:
    try:
        arrow = run_read_only(conn, sql, allowed=("SELECT",))
    except UserError as error:
        if where:
            raise _bad_filter(where, error) from None
        raise
    return _table(name, sql, arrow)


def _bad_filter(where: str, error: UserError) -> UserError:
    return UserError(f"the filter {where!r} is not one SQL condition on the `samples` view ({error})")


def _user_condition(where: str) -> str:
    try:
        return one_condition(where)
    except UserError as error:
        raise _bad_filter(where, error) from None


def _samples_sql(
    conn: sa.Connection,
    key: ScoreKey,
    query: SampleQuery,
    columns: str,
    cursor: Cursor | None = None,
    backward: bool = False,
    limit: int | None = None,
    join_samples: bool = False,
) -> str:
    if query.sort not in SORTS:
        raise UserError(f"unknown sort {query.sort!r}; use one of {', '.join(SORTS)}")
    if query.status not in (None, *STATUSES):
        raise UserError(f"unknown status {query.status!r}; use one of {', '.join(STATUSES)}")
    require_dataset(conn, query.dataset)
    params: dict[str, Any] = _of(key)
    ifd = has_ifd(conn, key.scorer_id)
    needs_ifd = sorted({query.sort, *query.ranges} & set(IFD_COLUMNS))
    if needs_ifd and not ifd:
        raise _no_ifd(key, f"sorting or filtering by {needs_ifd[0]}")
    source = IFD_SOURCE if ifd else "score_current m"
    conditions = [] if ifd else ["m.scorer_id = $scorer", "m.embedder_id = $embedder", "m.scope_dataset = $scope"]
    if query.dataset is not None:
        conditions.append("m.sample_id IN (SELECT sample_id FROM membership WHERE dataset = $dataset)")
        params["dataset"] = query.dataset
    if query.status is not None:
        conditions.append("m.status = $status")
        params["status"] = query.status
    if query.search:
        conditions.append(r"(s.user_text ILIKE $pattern ESCAPE '\' OR s.response ILIKE $pattern ESCAPE '\')")
        params["pattern"] = "%" + re.sub(r"([%_\\])", r"\\\1", query.search) + "%"
    for name, (low, high) in query.ranges.items():
        if name not in RANGES:
            raise UserError(f"no range filter on {name!r}; use one of {', '.join(RANGES)}")
        for bound, op, value in (("min", ">=", low), ("max", "<=", high)):
            if value is not None:
                if not math.isfinite(value):
                    raise UserError(f"{name}_{bound} must be a finite number")
                conditions.append(f"{SORTS[name]} {op} ${name}_{bound}")
                params[f"{name}_{bound}"] = float(value)
    column, ahead = SORTS[query.sort], query.descending != backward
    if cursor is not None:
        params.update(cursor_value=cursor.value, cursor_id=cursor.sample_id)
        conditions.append(_keyset(column, query.descending, cursor.value is None, backward))
    direction = "DESC" if ahead else "ASC"
    nulls = "FIRST" if backward else "LAST"
    order = f"ORDER BY {column} {direction} NULLS {nulls}, m.sample_id {'DESC' if backward else 'ASC'}"
    where = "\n  AND ".join(conditions) or "true"
    join = " JOIN samples s USING (sample_id)" if join_samples or query.where or query.search else ""
    head = inline(f"SELECT {columns}\nFROM {source}{join}\nWHERE {where}", params)
    # The user's condition is added after inlining: a $ in it is theirs, not a parameter.
    user = f"\n  AND ({_user_condition(query.where)})" if query.where else ""
    return head + user + f"\n{order}" + (f"\nLIMIT {int(limit)}" if limit else "")


def _keyset(column: str, descending: bool, null_cursor: bool, backward: bool) -> str:
    """Rows after (or, `backward`, before) the cursor in ORDER BY column [DESC] NULLS LAST, sample_id."""
    beyond = "<" if descending else ">"
    before = ">" if descending else "<"
    if not backward:
        if null_cursor:
            return f"({column} IS NULL AND m.sample_id > $cursor_id)"
        return (
            f"({column} {beyond} $cursor_value OR ({column} = $cursor_value AND m.sample_id > $cursor_id) "
            f"OR {column} IS NULL)"
        )
    if null_cursor:
        return f"({column} IS NOT NULL OR m.sample_id < $cursor_id)"
    return f"({column} {before} $cursor_value OR ({column} = $cursor_value AND m.sample_id < $cursor_id))"


# ---- one sample ---------------------------------------------------------------------------

SAMPLE_SQL = "SELECT * FROM samples WHERE sample_id = $id"

# One row per embedder and scope: the catalog-wide example, then one per dataset the sample is in.
NEIGHBOURS_SQL = """
    SELECT n.embedder, n.embedder_id, n.scope, n.scope_dataset, n.neighbour_id, n.similarity,
           t.messages AS neighbour_messages, t.instruction AS neighbour_instruction, t.input AS neighbour_input,
           t.user_text AS neighbour_user_text,
           t.response AS neighbour_response, t.datasets AS neighbour_datasets
    FROM neighbours n LEFT JOIN samples t ON t.sample_id = n.neighbour_id
    WHERE n.sample_id = $id ORDER BY n.embedder_id, n.scope_dataset NULLS FIRST
"""

# Rank: position by MIWV, highest first, ties to the smaller sample_id (as `select` ranks), among the
# scores of the same scorer, embedder and scope.
# response_loss, ifd, ifd_ppl: from `ifd_scores` where the scorer has the response-alone loss
# (ifd and ifd_ppl only where defined: ifd_status ok); NULL otherwise.
SAMPLE_SCORES_SQL = """
    SELECT m.model, m.scorer_id, m.template, m.max_length, m.embedder, m.embedder_id, m.scope, m.scope_dataset,
           m.status, m.zero_shot_loss, m.one_shot_loss, m.miwv, i.response_loss,
           CASE WHEN i.status = 'ok' THEN i.ifd END AS ifd, CASE WHEN i.status = 'ok' THEN i.ifd_ppl END AS ifd_ppl,
           i.status AS ifd_status, m.n_response_tokens, m.example_truncated,
           m.neighbour_id, m.similarity, c.source, c.fingerprint, c.template_revision, c.template_hash, c.template_text,
           CASE WHEN m.status = 'ok' THEN 1 + (
               SELECT count(*) FROM score_current r
               WHERE r.scorer_id = m.scorer_id AND r.embedder_id = m.embedder_id AND r.status = 'ok'
                 AND r.scope_dataset = coalesce(m.scope_dataset, '')
                 AND (r.miwv > m.miwv OR (r.miwv = m.miwv AND r.sample_id < m.sample_id))) END AS rank,
           (SELECT count(*) FROM score_current r
            WHERE r.scorer_id = m.scorer_id AND r.embedder_id = m.embedder_id AND r.status = 'ok'
              AND r.scope_dataset = coalesce(m.scope_dataset, '')) AS ranked
    FROM miwv_scores m JOIN scorer c USING (scorer_id)
         LEFT JOIN ifd_scores i ON i.sample_id = m.sample_id AND i.scorer_id = m.scorer_id
    WHERE m.sample_id = $id
    ORDER BY m.scorer_id, m.embedder_id, m.scope_dataset NULLS FIRST
"""

# A retired sample: its row, as the `samples` view would show it, with no datasets.
RETIRED_SAMPLE_SQL = """
    SELECT sample_id, []::VARCHAR[] AS datasets, instruction, input, output, messages, user_text,
           messages[-1].content AS response, n_turns, extra, created_at, ingest_id
    FROM sample WHERE sample_id = $id
"""

# When and why the sample left each dataset it left (a current sample may have left some too).
DEPARTURES_SQL = """
    SELECT dataset, kind, detail, strftime(left_at, '%Y-%m-%d %H:%M:%S') AS left_at, change_id
    FROM departures WHERE sample_id = $id ORDER BY change_id, dataset
"""

PURGED_SQL = """
    SELECT p.change_id, c.detail, strftime(c.created_at, '%Y-%m-%d %H:%M:%S') AS purged_at
    FROM purged_sample p JOIN catalog_change c USING (change_id)
    WHERE p.sample_id = $id ORDER BY p.change_id DESC
"""

MEMBER_OF_SQL = """
    SELECT m.selection_id, s.strategy, s.model, m.rank, m.score, s.selected,
           strftime(s.created_at, '%Y-%m-%d %H:%M:%S') AS created_at
    FROM selection_member m JOIN selection s USING (selection_id)
    WHERE m.sample_id = $id ORDER BY m.selection_id DESC
"""


def sample_tables(conn: sa.Connection, sample_id: int) -> tuple[str, dict[str, Table]]:
    """The sample's state (current, retired or purged) and its tables: a current sample's row, its
    neighbour under each embedder and its scores under every model (with ranks); a retired
    sample's row (it has no neighbour and no score); a purged sample's purge (only its id
    remains); and for each, the datasets it left and the selections that held it. NotFound if
    the catalog never had the sample."""
    params = {"id": sample_id}
    history = {
        "departures": fetch(conn, "departures", DEPARTURES_SQL, params),
        "selections": fetch(conn, "selections", MEMBER_OF_SQL, params),
    }
    sample = fetch(conn, "sample", SAMPLE_SQL, params)
    if sample.rows:
        return "current", {
            "sample": sample,
            "neighbours": fetch(conn, "neighbours", NEIGHBOURS_SQL, params),
            "scores": fetch(conn, "scores", SAMPLE_SCORES_SQL, params),
            **history,
        }
    retired = fetch(conn, "sample", RETIRED_SAMPLE_SQL, params)
    if retired.rows:
        return "retired", {"sample": retired, **history}
    purged = fetch(conn, "purged", PURGED_SQL, params)
    if purged.rows:
        return "purged", {"purged": purged, **history}
    raise NotFound(f"no sample {sample_id} in the catalog")


# ---- selections ---------------------------------------------------------------------------

# pool_changed, members_gone: see catalog.select.POOL_STATE.
SELECTIONS_SQL = f"""
    WITH {MEMBERS_GONE}
    SELECT selection_id, strategy, model, scorer_id, embedder, top_k, top_percent, seed, dataset, pool_where,
           pool_size, eligible, selected, output, strftime(created_at, '%Y-%m-%d %H:%M:%S') AS created_at,
           {POOL_STATE}
    FROM selection s LEFT JOIN gone USING (selection_id) ORDER BY selection_id DESC
"""

DIFF_SUMMARY_SQL = """
    WITH sides AS (
        SELECT a.sample_id IS NOT NULL AS a_has, b.sample_id IS NOT NULL AS b_has
        FROM (SELECT sample_id FROM selection_member WHERE selection_id = $a) a
        FULL JOIN (SELECT sample_id FROM selection_member WHERE selection_id = $b) b ON a.sample_id = b.sample_id
    )
    SELECT count(*) FILTER (WHERE a_has) AS in_a, count(*) FILTER (WHERE b_has) AS in_b,
           count(*) FILTER (WHERE a_has AND b_has) AS in_both,
           count(*) FILTER (WHERE a_has AND NOT b_has) AS only_a,
           count(*) FILTER (WHERE b_has AND NOT a_has) AS only_b,
           round(count(*) FILTER (WHERE a_has AND b_has) / nullif(count(*), 0), 4) AS jaccard
    FROM sides
"""

# side: 'a' (only in A), 'b' (only in B) or 'both'; ordered by rank in A, then in B. Members
# that left the catalog since stay listed: `state` says current, retired or purged (no text left).
DIFF_ROWS_SQL = """
    SELECT coalesce(a.sample_id, b.sample_id) AS sample_id, a.rank AS rank_a, b.rank AS rank_b,
           a.score AS score_a, b.score AS score_b, left(s.user_text, 160) AS user_text,
           CASE WHEN s.sample_id IS NULL THEN 'purged'
                WHEN EXISTS (SELECT 1 FROM membership m WHERE m.sample_id = s.sample_id) THEN 'current'
                ELSE 'retired' END AS state
    FROM (SELECT * FROM selection_member WHERE selection_id = $a) a
    FULL JOIN (SELECT * FROM selection_member WHERE selection_id = $b) b USING (sample_id)
    LEFT JOIN sample s ON s.sample_id = coalesce(a.sample_id, b.sample_id)
    WHERE CASE $side WHEN 'a' THEN b.sample_id IS NULL WHEN 'b' THEN a.sample_id IS NULL
                     ELSE a.sample_id IS NOT NULL AND b.sample_id IS NOT NULL END
    ORDER BY a.rank NULLS LAST, b.rank
"""


def selections(conn: sa.Connection) -> Table:
    """Every recorded selection, newest first."""
    return fetch(conn, "selections", SELECTIONS_SQL)


def selection_diff(conn: sa.Connection, a: int, b: int, limit: int | None = None) -> dict[str, Table]:
    """Selections a and b compared: counts, and the samples only in A, only in B and in both
    (the first `limit` of each by rank; all of them without a limit)."""
    known = {row["selection_id"] for row in db.records(conn, "SELECT selection_id FROM selection")}
    for selection_id in (a, b):
        if selection_id not in known:
            raise NotFound(f"no selection {selection_id}; recorded: {', '.join(map(str, sorted(known))) or 'none'}")
    sql = DIFF_ROWS_SQL + (f"LIMIT {int(limit)}" if limit else "")
    return {
        "summary": fetch(conn, "summary", DIFF_SUMMARY_SQL, {"a": a, "b": b}),
        **{name: fetch(conn, name, sql, {"a": a, "b": b, "side": side}) for name, side in _SIDES.items()},
    }


_SIDES = {"only_a": "a", "only_b": "b", "both": "both"}


# ---- two scorers on one pool --------------------------------------------------------------

# What each side of a comparison may rank by: MIWV (with its embedder's neighbours), or the
# scorer's IFD or ifd_ppl (they need no neighbours). Only defined scores (status ok) take part.
COMPARE_SCORES = ("miwv", "ifd", "ifd_ppl")
SCREEN_PERCENTS = (1, 2, 5, 10, 20, 30, 50, 75, 100)  # the curve's screening fractions


def _side(name: str, score: str) -> str:
    if score == "miwv":
        return (
            f"SELECT sample_id, miwv AS score FROM score_current "
            f"WHERE scorer_id = ${name}_scorer AND embedder_id = ${name}_embedder AND scope_dataset = ${name}_scope "
            f"AND status = 'ok'"
        )
    return f"SELECT sample_id, {score} AS score FROM ifd_scores WHERE scorer_id = ${name}_scorer AND status = 'ok'"


# The pool: samples both sides scored. Ranks are highest first, ties to the smaller sample_id (as
# `select` ranks); Spearman's correlation is Pearson's over the ranks (as in examples/compare_models.sql).
def _compare_pool(a_score: str, b_score: str) -> str:
    return f"""
    WITH a AS ({_side("a", a_score)}),
         b AS ({_side("b", b_score)}),
         pool AS (SELECT sample_id, a.score AS score_a, b.score AS score_b,
                         rank() OVER (ORDER BY a.score DESC, sample_id) AS rank_a,
                         rank() OVER (ORDER BY b.score DESC, sample_id) AS rank_b
                  FROM a JOIN b USING (sample_id))"""


COMPARE_SUMMARY_SQL = """
    SELECT count(*) AS pool, $top AS top_k,
           count(*) FILTER (WHERE rank_a <= $top AND rank_b <= $top) AS top_k_overlap,
           round(top_k_overlap / least($top, count(*)), 4) AS top_k_overlap_share,
           round(corr(rank_a, rank_b), 4) AS spearman,
           round(corr(score_a, score_b), 4) AS pearson
    FROM pool
"""

COMPARE_TOP_SQL = """
    SELECT sample_id, rank_a, rank_b, score_a AS {a}_a, score_b AS {b}_b, left(s.user_text, 160) AS user_text
    FROM pool JOIN samples s USING (sample_id)
    WHERE rank_a <= $top OR rank_b <= $top
    ORDER BY least(rank_a, rank_b), rank_a
"""

# The agreement curve: for each screening fraction, A's top screen_percent% of the pool (rounded,
# at least 1, as `select --top-percent` counts) and how many of B's top K% (top_k) it keeps.
COMPARE_CURVE_SQL = f""",
    sizes AS (SELECT count(*) AS pool, greatest(1, floor(count(*) * $top_percent / 100 + 0.5))::BIGINT AS top_k
                FROM pool HAVING count(*) > 0),
    screens AS (SELECT screen_percent, greatest(1, floor(pool * screen_percent / 100 + 0.5))::BIGINT AS screened, top_k
                FROM sizes, (SELECT unnest([{", ".join(map(str, SCREEN_PERCENTS))}]) AS screen_percent)),
    top_b AS (SELECT rank_a FROM pool, sizes WHERE rank_b <= top_k)
    SELECT s.screen_percent, s.screened, s.top_k, count(t.rank_a) AS kept,
           round(count(t.rank_a) / s.top_k, 4) AS recall
    FROM screens s LEFT JOIN top_b t ON t.rank_a <= s.screened
    GROUP BY s.screen_percent, s.screened, s.top_k ORDER BY s.screen_percent
"""


def compare_scores(
    conn: sa.Connection,
    a: ScoreKey,
    b: ScoreKey,
    top_k: int | None = None,
    a_score: str = "miwv",
    b_score: str = "miwv",
    top_percent: float = TOP_PERCENT,
) -> dict[str, Table]:
    """Two scorers on the samples both scored, each side ranked by `a_score` / `b_score` (one of
    COMPARE_SCORES): Spearman and Pearson correlation, how many of each one's top K the other also
    ranks in its top K (default: 10% of that pool, at least 1), and the agreement curve: for each of
    SCREEN_PERCENTS, the share of B's top `top_percent`% that A's top that-percent keeps (what a
    screen by A would keep of what B would select)."""
    for side, score, key in (("a", a_score, a), ("b", b_score, b)):
        if score not in COMPARE_SCORES:
            raise UserError(f"{side}_score must be one of {', '.join(COMPARE_SCORES)}, not {score!r}")
        if score != "miwv" and not has_ifd(conn, key.scorer_id):
            raise _no_ifd(key, f"ranking side {side.upper()} by {score}")
    if not (isinstance(top_percent, int | float) and 0 < top_percent <= 100):
        raise UserError(f"top_percent must be a number above 0 and at most 100, not {top_percent!r}")
    params = {f"{side}_{name}": value for side, key in (("a", a), ("b", b)) for name, value in _of(key).items()}
    params["top_percent"] = float(top_percent)
    pool = _compare_pool(a_score, b_score)
    if top_k is None:
        size = db.execute(conn, inline(pool + "\nSELECT count(*) FROM pool", params))[0][0]
        top_k = max(1, math.floor(size / 10 + 0.5))
    params["top"] = int(top_k)
    top = COMPARE_TOP_SQL.format(a=a_score, b=b_score)
    return {
        "summary": fetch(conn, "summary", pool + COMPARE_SUMMARY_SQL, params),
        "curve": fetch(conn, "curve", pool + COMPARE_CURVE_SQL, params),
        "top": fetch(conn, "top", pool + top, params),
    }
