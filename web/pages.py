"""The pages: each reads the catalog through one short read-only connection (catalog.explore
holds the SQL), then renders a template or sends one of its tables as a file. Each is a plain
function run in a worker thread; web.app bounds its time on the catalog (see `_read`) and
refuses query parameters it does not declare with `takes`."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from urllib.parse import urlencode

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from catalog import Catalog, UserError
from catalog import experiments as xp
from catalog import explore as ex
from catalog.examples import stability_in
from catalog.score import alpaca_fields_of, messages_of
from web import charts, tokens
from web.render import download, key_query, model_url, page, wants_download

PAGE_SIZE = 50  # samples per page unless ?per_page= (1 to MAX_PAGE_SIZE) says otherwise
MAX_PAGE_SIZE = 500
DIFF_ROWS = 200  # rows per side shown on a selection diff (downloads hold them all)
PAIR_PROMPTS = 20  # prompts per page of two runs side by side (downloads hold them all)
DOWNLOAD_PARAMS = ("download", "format")
SAMPLE_PARAMS = ("scorer", "embedder", "scope", "sort", "order", "dataset", "status", "q", "where", "after", "before")
RANGE_PARAMS = tuple(f"{name}_{bound}" for name in ex.RANGES for bound in ("min", "max"))


def takes(*names: str) -> Callable[[Callable], Callable]:
    """Declare the query parameters a page understands (besides download and format): any other
    one is refused with 400, so a typo or a `page=2` never silently shows something else."""

    def declare(endpoint: Callable) -> Callable:
        endpoint.params = frozenset((*names, *DOWNLOAD_PARAMS))
        return endpoint

    return declare


@takes()
def overview(request: Request) -> Response:
    catalog = _catalog(request)
    with _read(request) as conn:
        counts, tables = ex.overview(catalog, conn)
    return _tables_or_page(request, tables, "overview.html", counts=counts, catalog=str(catalog.path.resolve()))


@takes("scorer", "embedder", "scope")
def model(request: Request) -> Response:
    name = request.path_params["model"]
    with _read(request) as conn:
        key = _key(request, conn, name)
        keys = [k for k in ex.score_keys(conn) if k.model == name]
        tables = ex.model_tables(conn, key)
        scopes = ex.scopes(conn, key)
        stability = stability_in(conn, key.scorer_id, key.embedder_id, key.scope_dataset, ex.TOP_PERCENT)
    return _tables_or_page(
        request,
        tables,
        "model.html",
        key=key,
        keys=[k for k in keys if (k.scorer_id, k.embedder_id) != (key.scorer_id, key.embedder_id)],
        scopes=scopes,
        stability=stability,
        histogram=charts.histogram(tables["histogram"].rows),
        scatter=charts.scatter(tables["points"].rows),
        subset=len(tables["points"].rows) >= ex.SCATTER_POINTS,
        samples_url=_samples_url(key),
    )


@takes(*SAMPLE_PARAMS, *RANGE_PARAMS, "per_page")
def samples(request: Request) -> Response:
    name = request.path_params["model"]
    error, result, table, asked, page_size = None, None, None, None, PAGE_SIZE
    with _read(request) as conn:
        key = _key(request, conn, name)
        scopes = ex.scopes(conn, key)
        datasets = ex.dataset_names(conn)
        shown = _shown_scores(ex.has_ifd(conn, key.scorer_id))
        try:
            query = _sample_query(request)
            page_size = query.limit
            asked = wants_download(request)
            if asked:
                _require_table(asked[0], ["samples"])
                table = ex.samples_download(conn, key, query)
            else:
                result = ex.samples_page(conn, key, query)
        except UserError as problem:  # a bad filter: said on the page, with the form to fix it
            error = str(problem)
    if table is not None:
        return download(table, asked[1])
    return page(
        request,
        "samples.html",
        status_code=400 if error else 200,
        key=key,
        scopes=scopes,
        datasets=datasets,
        statuses=ex.STATUSES,
        sorts=[name for name in ex.SORTS if name in shown],
        ranges=[name for name in ex.RANGES if name in shown],
        result=result,
        error=error,
        form=request.query_params,
        page_size=page_size,
        link=lambda **changes: _with(request, **changes),
    )


@takes()
def sample(request: Request) -> Response:
    try:
        sample_id = int(request.path_params["sample_id"])
    except ValueError:
        raise ex.NotFound(f"no sample {request.path_params['sample_id']!r}: sample ids are whole numbers") from None
    with _read(request) as conn:
        state, tables = ex.sample_tables(conn, sample_id)
    if wants_download(request):
        return _tables_or_page(request, tables, "sample.html")
    if state == "purged":
        return page(request, "purged.html", sample_id=sample_id, tables=tables)
    row = tables["sample"].rows[0]
    if state == "retired":
        return page(request, "sample.html", sample=row, tables=tables, retired=True, neighbours=[], inputs=[])
    scores = tables["scores"].rows
    examples = {_example_key(n): n for n in tables["neighbours"].rows}
    inputs = [(score, _inputs(row, score, examples.get(_example_key(score)))) for score in scores]
    neighbours = [
        {**n, "scores": [s for s in scores if _example_key(s) == _example_key(n)]} for n in tables["neighbours"].rows
    ]
    return page(
        request,
        "sample.html",
        sample=row,
        tables=tables,
        retired=False,
        neighbours=neighbours,
        inputs=inputs,
    )


def _example_key(row: dict) -> tuple[int, str | None]:
    """Which example a neighbour or score row is about: its embedder and scope (its dataset, None catalog-wide)."""
    return row["embedder_id"], row["scope_dataset"]


@takes("a", "b")
def selections(request: Request) -> Response:
    a, b = _int(request, "a"), _int(request, "b")
    if a is not None and b is not None:
        return RedirectResponse(f"/selections/{a}/vs/{b}", status_code=303)
    with _read(request) as conn:
        tables = {"selections": ex.selections(conn)}
        keys = ex.score_keys(conn)
    return _tables_or_page(request, tables, "selections.html", keys=keys)


@takes()
def selection_diff(request: Request) -> Response:
    a, b = (_path_int(request, side) for side in ("a", "b"))
    limit = None if wants_download(request) else DIFF_ROWS
    with _read(request) as conn:
        tables = ex.selection_diff(conn, a, b, limit)
        chosen = {row["selection_id"]: row for row in ex.selections(conn).rows if row["selection_id"] in (a, b)}
    return _tables_or_page(request, tables, "selection_diff.html", a=chosen[a], b=chosen[b], shown=DIFF_ROWS)


@takes("a", "b", "a_scope", "b_scope", "top", "a_score", "b_score", "top_percent")
def compare(request: Request) -> Response:
    with _read(request) as conn:
        keys = ex.score_keys(conn)
        with_ifd = ex.scorers_with_ifd(conn)
        a_id, b_id = _int(request, "a"), _int(request, "b")
        scores = {side: request.query_params.get(f"{side}_score", "").strip() or "miwv" for side in ("a", "b")}
        top_percent = _float(request, "top_percent")
        if top_percent is None:
            top_percent = ex.TOP_PERCENT
        context = {"keys": keys, "with_ifd": with_ifd, "scores": scores, "top_percent": top_percent}
        if a_id is None or b_id is None:  # the form alone, with A the second newest scores and B the newest
            defaults = {"a": keys[1] if len(keys) > 1 else keys[0], "b": keys[0]} if keys else {}
            scopes = {side: ex.scopes(conn, key) for side, key in defaults.items()}
            return page(
                request, "compare.html", tables=None, top=None, curve=None, scopes=scopes, **defaults, **context
            )
        a, b = (
            ex.in_scope(conn, ex.find_scores(conn, None, scorer_id), _text(request, f"{side}_scope"))
            for side, scorer_id in (("a", a_id), ("b", b_id))
        )
        context["scopes"] = {"a": ex.scopes(conn, a), "b": ex.scopes(conn, b)}
        top = _int(request, "top")
        if top is not None and top < 1:
            raise UserError("top must be at least 1")
        tables = ex.compare_scores(conn, a, b, top, scores["a"], scores["b"], top_percent)
    return _tables_or_page(
        request,
        tables,
        "compare.html",
        a=a,
        b=b,
        top=tables["summary"].rows[0]["top_k"],
        curve=charts.curve(tables["curve"].rows),
        **context,
    )


@takes()
def experiments(request: Request) -> Response:
    with _read(request) as conn:
        tables = xp.experiment_tables(conn)
    return _tables_or_page(
        request,
        tables,
        "experiments.html",
        runs=xp.runs_with_metrics(tables),
        testsets=sorted({row["testset"] for row in tables["reference_losses"].rows}),
        opponents=_opponents(tables["pairs"].rows),
        curves=charts.loss_curves(tables["loss_curves"].rows),
    )


@takes("a", "b", "settings", "testset", "page")
def experiment_pair(request: Request) -> Response:
    a, b = _run_id(request, "a"), _run_id(request, "b")
    if a == b:
        raise UserError(f"a and b are both run {a}: name two different runs")
    number = _int(request, "page") or 1
    if number < 1:
        raise UserError(f"page must be 1 or more, not {number}")
    limit = None if wants_download(request) else PAIR_PROMPTS
    offset = (number - 1) * PAIR_PROMPTS
    with _read(request) as conn:
        pair = xp.run_pair(conn, a, b, _text(request, "settings"), _text(request, "testset"), limit, offset)
    pages = max(1, math.ceil(pair.total / PAIR_PROMPTS))
    if number > pages:
        raise UserError(f"page {number} is past the last page of this comparison ({pages})")
    verdicts: dict[int, list[dict]] = {}
    for row in pair.tables["verdicts"].rows if "verdicts" in pair.tables else []:
        verdicts.setdefault(row["prompt_id"], []).append(row)
    return _tables_or_page(
        request,
        pair.tables,
        "experiment_pair.html",
        pair=pair,
        verdicts=verdicts,
        page_number=number,
        pages=pages,
        link=lambda **changes: _with(request, **changes),
    )


def _run_id(request: Request, name: str) -> int:
    """Training run `name` (a or b) of the query; 404 for one that is not a whole number."""
    text = request.query_params.get(name, "").strip()
    if not text:
        raise UserError("this page compares two training runs: /experiments/compare?a=RUN&b=RUN (runs: /experiments)")
    try:
        return int(text)
    except ValueError:
        raise ex.NotFound(f"{text!r} is not a training run id (a whole number); the runs are on /experiments") from None


def _opponents(pairs: list[dict]) -> dict[int, list[dict]]:
    """Per run, every judged pair it is in, from its side: the other run, the judge and its winning score."""
    sides: dict[int, list[dict]] = {}
    for row in pairs:
        score = row["winning_score"]
        for run, other, own in ((row["run_a"], row["run_b"], score), (row["run_b"], row["run_a"], 2 - score)):
            sides.setdefault(run, []).append({"run": other, "judge": row["judge"], "score": own, "n": row["n"]})
    return sides


def _catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def _read(request: Request) -> AbstractContextManager[sa.Connection]:
    """A read-only connection for this request, held under the app's gate (web.app.Gate): the
    request's statements are interrupted when its time limit passes, its client leaves or the
    server stops (then web.app.Stopped is raised)."""
    return request.app.state.gate.read(_catalog(request), request.state.guard)


def _key(request: Request, conn: sa.Connection, model: str) -> ex.ScoreKey:
    """The scores a page of `model` shows: ?scorer= and ?embedder=, else the default scorer; in ?scope=
    (`catalog` or `dataset:NAME`), else catalog-wide where it has such scores."""
    scorer = _int(request, "scorer")
    if scorer is None:
        scorer = ex.default_scorer(_catalog(request), model)
    key = ex.find_scores(conn, model, scorer, _int(request, "embedder"))
    return ex.in_scope(conn, key, _text(request, "scope"))


def _text(request: Request, name: str) -> str | None:
    return request.query_params.get(name, "").strip() or None


def _tables_or_page(request: Request, tables: dict[str, ex.Table], template: str, **context) -> Response:
    """The table asked for as a file (?download=NAME&format=csv|jsonl), else the page."""
    asked = wants_download(request)
    if asked is None:
        return page(request, template, tables=tables, **context)
    name, fmt = asked
    _require_table(name, list(tables))
    return download(tables[name], fmt)


def _require_table(name: str, tables: list[str]) -> None:
    if name not in tables:
        raise UserError(f"this page has no table {name!r} to download; it has {', '.join(tables)}")


def _int(request: Request, name: str) -> int | None:
    text = request.query_params.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name} must be a whole number, not {text!r}") from None


def _path_int(request: Request, name: str) -> int:
    try:
        return int(request.path_params[name])
    except ValueError:
        raise ex.NotFound(f"{request.path_params[name]!r} is not a selection id (a whole number)") from None


def _float(request: Request, name: str) -> float | None:
    text = request.query_params.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{name} must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number")
    return value


def _sample_query(request: Request) -> ex.SampleQuery:
    ranges = {name: (_float(request, f"{name}_min"), _float(request, f"{name}_max")) for name in ex.RANGES}
    after, before = _text(request, "after"), _text(request, "before")
    per_page = _int(request, "per_page")
    if per_page is None:
        per_page = PAGE_SIZE
    elif not 1 <= per_page <= MAX_PAGE_SIZE:
        raise UserError(f"per_page must be between 1 and {MAX_PAGE_SIZE}, not {per_page}")
    return ex.SampleQuery(
        sort=_text(request, "sort") or "miwv",
        descending=request.query_params.get("order", "desc") != "asc",
        dataset=_text(request, "dataset"),
        status=_text(request, "status"),
        search=_text(request, "q"),
        where=_text(request, "where"),
        ranges={k: v for k, v in ranges.items() if v != (None, None)},
        after=ex.Cursor.parse(after) if after else None,
        before=ex.Cursor.parse(before) if before else None,
        limit=per_page,
    )


def _with(request: Request, **changes: str | None) -> str:
    """This page's URL with some query parameters changed (None removes one)."""
    params = {k: v for k, v in request.query_params.items() if k not in changes}
    params.update({k: v for k, v in changes.items() if v is not None})
    return request.url.path + ("?" + urlencode(params) if params else "")


def _shown_scores(has_ifd: bool) -> set[str]:
    """The sort and range columns a samples page offers: the IFD ones only for a scorer that has them."""
    return {name for name in ex.SORTS if has_ifd or name not in ex.IFD_COLUMNS}


def _samples_url(key: ex.ScoreKey) -> str:
    return model_url(key.model, "/samples?" + key_query(key))


def _inputs(row: dict, score: dict, example: dict | None) -> tokens.Inputs | str:
    """The sample's two passes for the scorer of `score`, or why they cannot be shown."""
    neighbour = example["neighbour_messages"] if example and example["neighbour_messages"] else None
    try:
        return tokens.model_inputs(
            tokens.ScorerKey(
                score["model"],
                score["source"],
                score["fingerprint"],
                score["template"],
                score["template_revision"],
                score["template_hash"],
                score["template_text"],
            ),
            score["max_length"],
            messages_of(row["messages"]),
            messages_of(neighbour) if neighbour else None,
            alpaca_fields_of(row["instruction"], row["input"]),
            alpaca_fields_of(example["neighbour_instruction"], example["neighbour_input"]) if neighbour else None,
        )
    except UserError as error:
        return f"cannot rebuild the inputs: {error}"
