"""The web explorer: a Starlette app over one catalog, read-only.

Every request opens its own short read-only connection, so pages show what a running job has
committed so far and never keep it out for long; while a job holds the file, a request waits
(as the CLI does, MIWV_BUSY_TIMEOUT) and then answers "the catalog is busy", reloading itself.

No request holds the catalog hostage: its statements are interrupted when its time limit passes
(MIWV_WEB_TIMEOUT), when its client goes away, and when the server stops; and a run of requests
back to back leaves the file free now and then (Gate), so a writer that waits for it gets in.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import anyio
import sqlalchemy as sa
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog import Catalog, CatalogBusy, UserError, db
from catalog.explore import NotFound, require_current_schema
from catalog.query import MAX_TIMEOUT
from catalog.status import catalog_status
from web import pages
from web.render import page

STATIC = Path(__file__).resolve().parent / "static"
TIME_LIMIT_ENV = "MIWV_WEB_TIMEOUT"
# Seconds a request may spend on the catalog: below MIWV_BUSY_TIMEOUT's default (10 s), so a
# command that waits that long for the file always gets in after the request it waits for.
TIME_LIMIT = 5.0
POLL = 0.1  # seconds between looks at the clock and the client
RUN = 1.0  # seconds of back-to-back holds on the catalog after which a new one first waits for ...
GAP = 0.5  # ... the file to be free this long (a waiting writer retries every 0.2 s)
GRACE = 3  # seconds uvicorn waits for running requests after a stop signal (they are interrupted)

# Scripts and styles only from this server (no inline code, no eval); nothing else is loaded,
# nothing can frame the pages, forms only submit here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds the CSP and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)


def is_loopback(name: str) -> bool:
    """True for `localhost` and every loopback address (127.0.0.0/8, ::1)."""
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostCheck:
    """Answers 400 to a request whose Host header names no allowed host, so that a web page
    elsewhere cannot rebind a DNS name to this machine and read the explorer. Allowed: the
    `allowed` names, or (None) `localhost` and any loopback address, `[::1]:port` included."""

    def __init__(self, app: ASGIApp, allowed: list[str] | None) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allows(dict(scope["headers"]).get(b"host", b"").decode("latin-1")):
            await PlainTextResponse("Invalid host header", status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allows(self, header: str) -> bool:
        try:
            name = urlsplit("//" + header).hostname or ""
        except ValueError:
            return False
        if self.allowed is None:
            return is_loopback(name)
        return "*" in self.allowed or name in self.allowed


class Stopped(UserError):
    """A request stopped before it finished: its time limit passed, its client went away, or the server is stopping."""


class Forbidden(UserError):
    """A request the explorer refuses to answer to whoever asked (403)."""


class Guard:
    """One request's watch: the DuckDB connection it is running statements on, when they must
    end, and why it was stopped. Locks are reentrant: `stop` also runs in a signal handler."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.deadline = math.inf
        self._native = None
        self._lock = threading.RLock()

    def stop(self, reason: str) -> None:
        """Interrupt the running statement; the watch calls this on each of its looks once the
        request is stopped, so a statement that starts after an interrupt is stopped too."""
        with self._lock:
            self.reason = self.reason or reason
            if self._native is not None:
                self._native.interrupt()

    def check(self) -> None:
        if self.reason is not None:
            raise Stopped(self.reason)

    @contextmanager
    def running(self, native, seconds: float) -> Iterator[None]:
        """Statements run on `native` for at most `seconds`; whatever the body raises after a stop
        (DuckDB's interrupt, however a caller reworded it) becomes Stopped. A body that finished
        all the same (the stop came between statements) keeps its result."""
        with self._lock:
            self._native, self.deadline = native, time.monotonic() + seconds
        try:
            yield
        except Exception:
            self.check()
            raise
        finally:
            with self._lock:
                self._native, self.deadline = None, math.inf


class Gate:
    """The server's requests on the catalog file. Each holds it under a Guard with `limit`
    seconds for its statements. Holds may overlap, but after RUN seconds of back-to-back holds a
    new one waits until the file has been free for GAP seconds: a writer that waits for the file
    (`ingest`, `score`) is kept out by at most RUN plus one time limit."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._changed = threading.Condition(threading.RLock())
        self._holding = 0
        self._run_start = self._freed = -math.inf
        self._guards: set[Guard] = set()
        self._stopping: str | None = None

    @contextmanager
    def guard(self) -> Iterator[Guard]:
        """A Guard for one request, stopped with the others by `stop_all`."""
        guard = Guard()
        with self._changed:
            if self._stopping is not None:
                raise Stopped(self._stopping)
            self._guards.add(guard)
        try:
            yield guard
        finally:
            with self._changed:
                self._guards.discard(guard)

    def stop_all(self, reason: str) -> None:
        """Stop every request now, and refuse new ones (the server is stopping)."""
        with self._changed:
            self._stopping = reason
            guards = list(self._guards)
            self._changed.notify_all()
        for guard in guards:
            guard.stop(reason)

    @contextmanager
    def read(self, catalog: Catalog, guard: Guard) -> Iterator[sa.Connection]:
        """A read-only connection to `catalog` whose statements `guard` watches."""
        with self._held(guard), catalog.read() as conn, guard.running(db.raw(conn), self.limit):
            yield conn

    @contextmanager
    def _held(self, guard: Guard) -> Iterator[None]:
        with self._changed:
            while not self._may_start(time.monotonic()):
                guard.check()
                self._changed.wait(POLL)
            guard.check()
            self._holding += 1
        try:
            yield
        finally:
            with self._changed:
                self._holding -= 1
                if not self._holding:
                    self._freed = time.monotonic()
                self._changed.notify_all()

    def _may_start(self, now: float) -> bool:
        if not self._holding and now - self._freed >= GAP:
            self._run_start = now  # the file has been free long enough: a new run of holds
            return True
        return now - self._run_start <= RUN


def time_limit() -> float:
    """Seconds a request may spend on the catalog: MIWV_WEB_TIMEOUT, else TIME_LIMIT."""
    text = os.environ.get(TIME_LIMIT_ENV, "").strip()
    if not text:
        return TIME_LIMIT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT:
        raise UserError(
            f"{TIME_LIMIT_ENV}={text!r} is not a number of seconds above 0 and at most {MAX_TIMEOUT:g}; fix or unset it"
        )
    return seconds


def guarded(endpoint: Callable[[Request], Response], limit: float) -> Callable[[Request], Awaitable[Response]]:
    """`endpoint` (a page, run in a worker thread) behind the checks every page gets: its declared
    query parameters only, filters and downloads from this site only, and a watch that stops its
    statements when its time limit passes or its client goes away."""
    params = endpoint.params

    async def run(request: Request) -> Response:
        unknown = sorted(set(request.query_params) - params)
        if unknown:
            raise UserError(f"unknown parameter {unknown[0]!r}; this page takes {', '.join(sorted(params))}")
        _require_same_origin(request)
        with request.app.state.gate.guard() as guard:
            request.state.guard = guard
            outcome: list = []
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_watch, request, guard, limit)
                try:
                    outcome.append(await anyio.to_thread.run_sync(endpoint, request))
                except Exception as error:  # raised below, outside the task group
                    outcome.append(error)
                tasks.cancel_scope.cancel()
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]

    return run


async def _watch(request: Request, guard: Guard, limit: float) -> None:
    """Stop the request's statements when its time is up or its client has gone."""
    while True:
        await anyio.sleep(POLL)
        if await request.is_disconnected():
            guard.stop("the client went away before the page was ready")
        elif time.monotonic() > guard.deadline:
            guard.stop(
                f"this page was stopped after {limit:g} s, the explorer's time limit for one request "
                f"({TIME_LIMIT_ENV}), so that no page keeps the catalog from a job; narrow the filter, "
                f"or start `serve` with a larger {TIME_LIMIT_ENV}"
            )


def _require_same_origin(request: Request) -> None:
    """A filter (SQL) or a download is a GET that a page on another site could make the browser
    send: only the explorer's own pages, or an address typed in, may ask for one."""
    if not any(request.query_params.get(name, "").strip() for name in ("where", "download")):
        return
    site = request.headers.get("sec-fetch-site", "same-origin")
    host = request.headers.get("host", "")
    sources = [request.headers.get(name) for name in ("origin", "referer")]
    if site not in ("same-origin", "none") or any(s is not None and urlsplit(s).netloc != host for s in sources):
        raise Forbidden(
            "this filter or download was asked for by another site, not by the explorer's own pages; "
            "open it from the explorer (or type its address)"
        )


def create_app(catalog: Catalog, allowed_hosts: list[str] | None = None, limit: float | None = None) -> Starlette:
    """The explorer over `catalog`. Only requests naming one of `allowed_hosts` are served (default:
    this machine's loopback names, so a web page elsewhere cannot rebind a name to it and read).
    Each request may spend `limit` seconds on the catalog (default: `time_limit()`)."""
    limit = time_limit() if limit is None else limit
    routes = [
        Route(path, guarded(endpoint, limit))
        for path, endpoint in (
            ("/", pages.overview),
            ("/models/{model:path}/samples", pages.samples),
            ("/models/{model:path}", pages.model),
            ("/samples/{sample_id}", pages.sample),
            ("/selections", pages.selections),
            ("/selections/{a}/vs/{b}", pages.selection_diff),
            ("/compare", pages.compare),
            ("/experiments", pages.experiments),
            ("/experiments/compare", pages.experiment_pair),
        )
    ]
    app = Starlette(
        routes=[*routes, Mount("/static", StaticFiles(directory=STATIC), name="static")],
        middleware=[Middleware(SecurityHeaders), Middleware(HostCheck, allowed=allowed_hosts)],
        exception_handlers={
            CatalogBusy: _busy,
            NotFound: _not_found,
            Stopped: _stopped,
            Forbidden: _forbidden,
            UserError: _user_error,
            404: _not_found,
        },
    )
    app.state.catalog = catalog
    app.state.gate = Gate(limit)
    return app


def serve(catalog: Catalog, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the explorer until Ctrl-C or SIGTERM (running requests are interrupted). The catalog
    must exist and be at the current schema (the explorer never migrates it: it only reads)."""
    require_current_schema(catalog)
    catalog_status(catalog)  # the overview's reads, once: their first run imports LanceDB (seconds), not a page's time
    app = create_app(catalog, None if is_loopback(host) else ["*"])
    listening = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving catalog {catalog.path} read-only at http://{shown}:{port}/ "
        f"({app.state.gate.limit:g} s a request, {TIME_LIMIT_ENV}; Ctrl-C to stop)",
        flush=True,
    )
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACE)
    try:
        _Server(config, app.state.gate).run(sockets=[listening])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C again once it has stopped
        pass


class _Server(uvicorn.Server):
    """uvicorn's server, which also interrupts the running requests when it is told to stop
    (uvicorn would wait for them: a slow statement would keep it up)."""

    def __init__(self, config: uvicorn.Config, gate: Gate) -> None:
        super().__init__(config)
        self.gate = gate

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.gate.stop_all("the server is stopping")
        super().handle_exit(sig, frame)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, before anything says the server is up; one line if it cannot be had."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise UserError(
            f"cannot listen on {host}:{port}: {error.strerror or error}; "
            "choose another --port (or stop what is using that one)"
        ) from None


def _busy(request: Request, error: Exception) -> Response:
    response = page(request, "busy.html", status_code=503, message=str(error))
    response.headers["Retry-After"] = "2"
    return response


def _not_found(request: Request, error: Exception) -> Response:
    message = str(error) if isinstance(error, NotFound) else f"no page at {request.url.path}"
    return page(request, "error.html", status_code=404, title="Not found", message=message)


def _stopped(request: Request, error: Exception) -> Response:
    return page(request, "error.html", status_code=503, title="Stopped", message=str(error))


def _forbidden(request: Request, error: Exception) -> Response:
    return page(request, "error.html", status_code=403, title="Refused", message=str(error))


def _user_error(request: Request, error: Exception) -> Response:
    return page(request, "error.html", status_code=400, title="Cannot show this page", message=str(error))
