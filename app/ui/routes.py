"""The dashboard at /ui: static pages shipped in the package, calling the API from the browser.

The files carry no data and need no key; every API call the page makes sends the key the user signed in
with. The page runs no inline script and loads nothing from elsewhere, which the Content-Security-Policy
holds the browser to, so data rendered into it (file names, error messages) cannot run as code.
"""

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from app.errors import not_found
from app.resources import shipped_path

router = APIRouter(prefix="/ui", tags=["dashboard"], include_in_schema=False)

# The only files served, by name: nothing else in the package is reachable through this route.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "curve.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# img-src blob: the stability plot is fetched with the key and shown from a blob URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("")
async def dashboard_root() -> RedirectResponse:
    # Relative URLs in the page (app.js, style.css) resolve under /ui/ only with the trailing slash.
    return RedirectResponse("/ui/", status_code=308)


@router.get("/")
async def dashboard_index() -> Response:
    return await dashboard_file("index.html")


@router.get("/{name}")
async def dashboard_file(name: str) -> Response:
    if name not in STATIC_FILES:
        raise not_found("ui_file_not_found", f"The dashboard has no file {name!r}", param="name")
    content = shipped_path("ui", "static", name).read_bytes()
    return Response(content, media_type=STATIC_FILES[name], headers=SECURITY_HEADERS)
