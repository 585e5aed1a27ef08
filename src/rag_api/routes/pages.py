"""The pages a browser opens: `/` (the book's site when BOOK_SITE_DIR is set, else the chat page), `/chat` (the
stand-alone chat page), `/book/...` (the book's pages with the widget) and `/widget.js` (the widget itself)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from rag_api.book_site import BOOK_CSS, BookSite, page_html
from rag_api.errors import error_response
from rag_api.widget_bundle import widget_bundle, widget_licenses

router = APIRouter(include_in_schema=False)

_PAGE = Path(__file__).resolve().parent.parent / "static" / "index.html"
# Revalidated with the ETag after ten minutes, so a new release reaches the book's readers the same day.
WIDGET_CACHE = "public, max-age=600"


def _site(request: Request) -> BookSite | None:
    site: BookSite | None = getattr(request.app.state, "book_site", None)
    return site


@router.get("/", response_model=None)
async def home(request: Request) -> Response:
    if _site(request) is not None:
        return RedirectResponse("/book/", status_code=307)
    return HTMLResponse(_PAGE.read_text(encoding="utf-8"))


@router.get("/chat", response_class=HTMLResponse)
async def chat_page() -> HTMLResponse:
    return HTMLResponse(_PAGE.read_text(encoding="utf-8"))


@router.get("/widget.js")
async def widget_script(request: Request) -> Response:
    bundle = widget_bundle()
    headers = {
        "ETag": bundle.etag,
        "Cache-Control": WIDGET_CACHE,
        # Book sites that isolate themselves (COEP) may still load it.
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if bundle.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    headers["Vary"] = "Accept-Encoding"
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(bundle.gzipped, media_type="text/javascript; charset=utf-8", headers=headers)
    return Response(bundle.body, media_type="text/javascript; charset=utf-8", headers=headers)


@router.get("/widget-licenses.txt", response_class=PlainTextResponse)
async def widget_license_text() -> PlainTextResponse:
    return PlainTextResponse(widget_licenses(), headers={"Cache-Control": WIDGET_CACHE})


@router.get("/book/book.css")
async def book_css() -> Response:
    return Response(BOOK_CSS, media_type="text/css; charset=utf-8", headers={"Cache-Control": "public, max-age=600"})


@router.get("/book/{path:path}", response_model=None)
async def book_page(request: Request, path: str) -> Response:
    site = _site(request)
    request_id = getattr(request.state, "request_id", None)
    if site is None:
        return error_response(404, "not_found", "no book site here: set BOOK_SITE_DIR to serve one", request_id)
    page = site.pages.get(path)
    if page is None and path:
        # The same page with or without its trailing slash: send the reader to the one the site uses.
        other = path[:-1] if path.endswith("/") else path + "/"
        if other in site.pages:
            return RedirectResponse("/book/" + other, status_code=308)
        return error_response(404, "not_found", f"no page /book/{path} in the book", request_id)
    return HTMLResponse(page_html(site, page))
