"""How the console renders: its templates, the filters and globals they use, and
:func:`page`, which every route answers with."""

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.domain.states import OrderStatus
from app.domain.values import money
from app.operations.story import took

HERE = Path(__file__).parent

#: Where the console's files (htmx, Mermaid, its CSS) are served.
STATIC = "/console/static"

#: How often the pages poll their partials, in milliseconds (the auditor reads every table,
#: and the operator's lists read every dead letter, so they are asked less often).
POLL_MS = 1000
AUDIT_POLL_MS = 3000

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["money"] = money
templates.env.filters["took"] = took
templates.env.filters["clock"] = lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S UTC")
templates.env.globals.update(static=STATIC, poll_ms=POLL_MS, audit_poll_ms=AUDIT_POLL_MS, statuses=list(OrderStatus))


def page(
    request: Request, name: str, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code, headers=headers)


async def form(request: Request) -> dict[str, list[str]]:
    """The fields of a posted form (``application/x-www-form-urlencoded``, as htmx and a
    plain form send it), each with its values in order."""
    return parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)


def field(fields: dict[str, list[str]], name: str) -> str | None:
    """The first value of ``name`` stripped, or None if it is absent or empty."""
    value = (fields.get(name) or [""])[0].strip()
    return value or None
