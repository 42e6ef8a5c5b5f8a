"""The web explorer: a Starlette app over one catalog, read-only.

Every request opens its own short read-only connection, so pages show what a running job has
committed so far and never keep it out for long; while a job holds the file, a request waits
(as the CLI does, MIWV_BUSY_TIMEOUT) and then answers "the catalog is busy", reloading itself.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog import Catalog, CatalogBusy, UserError
from catalog.explore import NotFound, require_current_schema
from web import pages
from web.render import page

STATIC = Path(__file__).resolve().parent / "static"
LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1"]

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


def create_app(catalog: Catalog, allowed_hosts: list[str] | None = None) -> Starlette:
    """The explorer over `catalog`. Only requests naming one of `allowed_hosts` are served (default:
    this machine's loopback names, so a web page elsewhere cannot rebind a name to it and read)."""
    routes = [
        Route("/", pages.overview),
        Route("/models/{model:path}/samples", pages.samples),
        Route("/models/{model:path}", pages.model),
        Route("/samples/{sample_id}", pages.sample),
        Route("/selections", pages.selections),
        Route("/selections/{a}/vs/{b}", pages.selection_diff),
        Route("/compare", pages.compare),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOCAL_HOSTS),
        ],
        exception_handlers={CatalogBusy: _busy, NotFound: _not_found, UserError: _user_error, 404: _not_found},
    )
    app.state.catalog = catalog
    return app


def serve(catalog: Catalog, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the explorer until Ctrl-C. The catalog must exist and be at the current schema
    (the explorer never migrates it: it only reads)."""
    import uvicorn

    require_current_schema(catalog)
    allowed = LOCAL_HOSTS if host in ("127.0.0.1", "localhost", "::1") else ["*"]
    print(f"serving catalog {catalog.path} read-only at http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    uvicorn.run(create_app(catalog, allowed), host=host, port=port, log_level="warning")


def _busy(request: Request, error: Exception) -> Response:
    response = page(request, "busy.html", status_code=503, message=str(error))
    response.headers["Retry-After"] = "2"
    return response


def _not_found(request: Request, error: Exception) -> Response:
    message = str(error) if isinstance(error, NotFound) else f"no page at {request.url.path}"
    return page(request, "error.html", status_code=404, title="Not found", message=message)


def _user_error(request: Request, error: Exception) -> Response:
    return page(request, "error.html", status_code=400, title="Cannot show this page", message=str(error))
