"""The OpenAPI document's page at ``/docs``: Swagger UI, its script, styles and icon served
from ``static/swagger-ui/`` (swagger-ui-dist, vendored) — nothing comes from a CDN, so the
page works on a closed network. FastAPI's own ``/docs`` and ``/redoc`` load from a CDN:
the app is made without them (``docs_url=None, redoc_url=None``), and ReDoc is not served."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).parent

#: Where the API's own files are served (open, as the console's are: no data).
STATIC = "/static"

#: Swagger UI's files, under :data:`STATIC`.
SWAGGER_UI = f"{STATIC}/swagger-ui"


def mount(api: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` over ``api``'s OpenAPI document (none without one)."""
    openapi_url = api.openapi_url
    if openapi_url is None:
        return
    api.mount(STATIC, StaticFiles(directory=HERE / "static"), name="static")

    @api.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{api.title} - Swagger UI",
            swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_UI}/favicon.png",
        )
