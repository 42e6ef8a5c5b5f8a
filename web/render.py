"""Templates and downloads: every page is Jinja2 with autoescaping on, every table can leave
as CSV or JSONL. In CSV, a text cell that a spreadsheet would run as a formula (it starts with
=, +, -, @, a tab or a carriage return) gets a leading ' (OWASP's advice on CSV injection);
JSONL keeps every text exactly."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from catalog.errors import UserError
from catalog.explore import ScoreKey, Table, scope_name

TEMPLATES = Path(__file__).resolve().parent / "templates"
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def number(value: Any, digits: int = 4) -> str:
    """Numbers as a table shows them: floats to `digits` decimals, counts with separators."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def model_url(model: str, suffix: str = "") -> str:
    """/models/{model}: a model given as a path keeps its slashes encoded in one segment."""
    return f"/models/{quote(model, safe='')}{suffix}"


def key_query(key: ScoreKey) -> str:
    """The query naming `key`'s scores: scorer and embedder, and its scope unless catalog-wide (the default)."""
    params = {"scorer": key.scorer_id, "embedder": key.embedder_id}
    return urlencode(params | ({"scope": key.scope} if key.scope_dataset else {}))


def cell(value: Any) -> str:
    """A table cell's text: lists joined, JSON for structures, numbers formatted."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return number(value)


def download_url(request: Request, name: str, fmt: str) -> str:
    """This page's URL asking for its table `name` as a file (all rows: a page cursor is dropped)."""
    params = {k: v for k, v in request.query_params.items() if k not in ("download", "format", "after", "before")}
    return request.url.path + "?" + urlencode({**params, "download": name, "format": fmt})


_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined)
_env.filters.update(number=number, cell=cell)
_env.globals.update(model_url=model_url, download_url=download_url, key_query=key_query, scope_name=scope_name)


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render `template`; `request` is there for links that keep the current query."""
    html = _env.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code)


def wants_download(request: Request) -> tuple[str, str] | None:
    """(table name, format) when the request asks for a table as a file (?download=NAME&format=csv);
    UserError for a format there is none of."""
    name = request.query_params.get("download")
    if not name:
        return None
    fmt = request.query_params.get("format", "csv")
    if fmt not in FORMATS:
        raise UserError(f"format must be {' or '.join(FORMATS)}, not {fmt!r}")
    return name, fmt


def download(table: Table, fmt: str) -> Response:
    """The table as CSV (lists and structures as JSON text) or JSONL (one object per row)."""
    if fmt == "jsonl":
        body = "".join(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n" for row in table.rows)
    else:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(table.columns)
        for row in table.rows:
            writer.writerow([_csv_cell(row[c]) for c in table.columns])
        body = out.getvalue()
    return Response(
        body,
        media_type=FORMATS[fmt],
        headers={"Content-Disposition": f'attachment; filename="{table.name}.{fmt}"'},
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=_jsonable)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value  # shown as text, never run as a formula
    return value
