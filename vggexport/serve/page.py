"""The server's pages: ``GET /`` (try the model in a browser) and offline API docs.

The page is static HTML, CSS and JavaScript shipped in the package; it loads nothing from elsewhere and
calls only this server's endpoints. FastAPI's own /docs and /redoc load Swagger UI and ReDoc from a CDN,
so ``install_page`` replaces them with the same pages built on the copies that fastapi-offline ships:
the docs work on a machine without internet, as the rest of the server does.
"""

from __future__ import annotations

import html
import logging
from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

from vggexport.errors import VggExportError

log = logging.getLogger("vggexport.serve")
ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}

router = APIRouter()


@cache
def static_text(name: str) -> str:
    return resources.files("vggexport.serve").joinpath("static", name).read_text(encoding="utf-8")


def served_model_name(request: Request) -> str:
    service = getattr(request.app.state, "service", None)
    return str(getattr(service, "name", "") or "")


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
async def index(request: Request) -> HTMLResponse:
    """The try-it page, with the served model's name filled in."""
    name = html.escape(served_model_name(request), quote=True)
    return HTMLResponse(static_text("index.html").replace("{{MODEL_NAME}}", name),
                        headers={"Cache-Control": "no-cache"})


@router.get("/ui/{asset}", include_in_schema=False)
async def page_asset(asset: str) -> Response:
    if asset not in ASSETS:
        raise VggExportError(f"no page asset {asset!r}", http_status=404)
    return Response(static_text(asset), media_type=ASSETS[asset], headers={"Cache-Control": "no-cache"})


def docs_assets() -> Path | None:
    """fastapi-offline's folder of Swagger UI and ReDoc files, or None when it is not installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if all((folder / name).is_file() for name in DOCS_ASSETS) else None


def offline_docs(app: FastAPI, folder: Path) -> None:
    """Swap FastAPI's CDN-backed /docs and /redoc for the same pages on local copies of their scripts."""
    openapi_url = app.openapi_url
    if not openapi_url:
        return
    replaced = {url for url in (app.docs_url, app.redoc_url) if url}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in replaced]

    async def docs_asset(asset: str) -> Response:
        if asset not in DOCS_ASSETS:
            raise VggExportError(f"no docs asset {asset!r}", http_status=404)
        return FileResponse(folder / asset, media_type=DOCS_ASSETS[asset],
                            headers={"Cache-Control": "public, max-age=86400"})

    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
            swagger_js_url=f"{root}/ui/docs/swagger-ui-bundle.js", swagger_css_url=f"{root}/ui/docs/swagger-ui.css",
            swagger_favicon_url=f"{root}/ui/docs/favicon.png",
            # Swagger UI would otherwise send the schema to an online validator for its badge.
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None})

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}/ui/docs/redoc.standalone.js",
                              redoc_favicon_url=f"{root}/ui/docs/favicon.png", with_google_fonts=False)

    app.add_api_route("/ui/docs/{asset}", docs_asset, methods=["GET"], include_in_schema=False)
    if app.docs_url:
        app.add_api_route(app.docs_url, swagger, methods=["GET"], include_in_schema=False)
    if app.redoc_url:
        app.add_api_route(app.redoc_url, redoc, methods=["GET"], include_in_schema=False)


def install_page(app: FastAPI) -> FastAPI:
    """Add GET / and its assets to ``app``, and make its API docs work offline (the one call create_app makes)."""
    app.include_router(router)
    folder = docs_assets()
    if folder is None:
        log.warning("fastapi-offline is not installed: /docs and /redoc load their scripts from a CDN")
    else:
        offline_docs(app, folder)
    return app
