"""The ASGI application MONAI Label serves for the MFASSL app (copied to ``<app>/mfassl_asgi.py``).

``monailabel start_server ... --uvicorn_app mfassl_asgi:app`` runs MONAI Label's own FastAPI application
(``monailabel.app:app``) with four changes, made before it starts:

- **Host and Origin** (``mfassl_guards.HostOriginGuard``, outermost): a ``Host`` header that is not the bound
  address, a loopback name or a host allowed with ``--allowed-host`` (``MFASSL_LABEL_ALLOWED_HOSTS``) answers 400
  (DNS rebinding); a ``POST``/``PUT``/``DELETE``/``PATCH`` whose ``Origin`` is not an allowed CORS origin answers
  403 before it runs.
- **CORS**: MONAI Label allows every origin (``*``) with credentials unless ``MONAI_LABEL_CORS_ORIGINS`` is set,
  and when it is set, pydantic turns ``http://host:port`` into ``http://host:port/``, which never equals a
  browser's ``Origin``. Here the allowed origins are ``MONAI_LABEL_CORS_ORIGINS`` (trailing ``/`` removed) or, by
  default, only the loopback origins of the server's port: ``http://127.0.0.1:PORT`` and ``http://localhost:PORT``.
  Any other origin gets no ``Access-Control-Allow-*`` header.
- **Ids in the query**: a request whose ``image``, ``label``, ``id`` or ``tag`` query parameter is not an
  acceptable id (``mfassl_ids``: no path separator, no ``..``, no absolute path, no NUL) is answered 400 before
  MONAI Label reads it.
- **Errors**: ``InvalidIdError``, ``InvalidLabelError`` (an uploaded label that is not a label map of its image),
  invalid JSON in a form field and request validation errors answer 400;
  ``NotFoundError`` and MONAI Label's image/label not found answer 404; other MONAI Label errors with
  ``INVALID_INPUT`` answer 400. Each answer is JSON ``{"detail": "..."}`` naming the value.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable, List
from urllib.parse import parse_qsl

from fastapi.exceptions import RequestValidationError
from mfassl_guards import HostOriginGuard, hosts_from_env
from mfassl_ids import InvalidIdError, NotFoundError, id_problem
from mfassl_labels import InvalidLabelError
from monailabel.app import app
from monailabel.config import settings
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = ["app", "allowed_origins", "QueryIdGuard", "ID_PARAMS"]

logger = logging.getLogger(__name__)

ID_PARAMS = ("image", "label", "id", "tag")
"""Query parameters that carry an image id, label id or label tag."""


def allowed_origins(port: int | None = None) -> List[str]:
    """The CORS origins: ``MONAI_LABEL_CORS_ORIGINS`` without trailing ``/``, else the loopback ones of ``port``."""
    configured = [str(o).rstrip("/") for o in settings.MONAI_LABEL_CORS_ORIGINS or []]
    if configured:
        return configured
    port = int(settings.MONAI_LABEL_SERVER_PORT if port is None else port)
    return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]


class QueryIdGuard:
    """ASGI middleware: answer 400 when an id-carrying query parameter (``ID_PARAMS``) is not an acceptable id.

    Empty values pass (MONAI Label then takes the id from the uploaded file's name, which the datastore checks).
    """

    def __init__(self, asgi: Callable[..., Awaitable[None]]):
        self.asgi = asgi

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") == "http":
            query = scope.get("query_string", b"").decode("latin-1")
            for key, value in parse_qsl(query, keep_blank_values=True):
                if key in ID_PARAMS and value:
                    problem = id_problem(value)
                    if problem is not None:
                        detail = (f"query parameter {key!r}: {value!r} {problem}; ids name one file inside the "
                                  "studies folder (no path separators, no '..', no absolute paths, no NUL).")
                        logger.warning("refused %s %s: %s", scope.get("method"), scope.get("path"), detail)
                        await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
                        return
        await self.asgi(scope, receive, send)


def _answer(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        detail = getattr(exc, "msg", None) or str(exc)
        logger.info("%s %s -> %d: %s", request.method, request.url.path, status, detail)
        return JSONResponse({"detail": detail}, status_code=status)

    return handler


async def _monailabel_error(request: Request, exc: MONAILabelException) -> JSONResponse:
    status = 400 if exc.error == MONAILabelError.INVALID_INPUT else 500
    return JSONResponse({"detail": f"{exc.error.value}: {exc.msg}"}, status_code=status)


async def _bad_json(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
    return JSONResponse({"detail": f"a form field (params/info) is not valid JSON: {exc}"}, status_code=400)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors: Any = exc.errors()
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors]
    return JSONResponse({"detail": "bad request parameter(s): " + "; ".join(parts)}, status_code=400)


def _install(asgi_app: Any) -> None:
    """Replace MONAI Label's CORS middleware, add the host/origin and query guards and the error answers (before
    start-up)."""
    origins = allowed_origins()
    hosts = hosts_from_env()
    asgi_app.user_middleware = [m for m in asgi_app.user_middleware if m.cls is not CORSMiddleware]
    asgi_app.user_middleware[0:0] = [
        Middleware(HostOriginGuard, hosts=hosts, origins=origins),
        Middleware(CORSMiddleware, allow_origins=origins, allow_credentials=True, allow_methods=["*"],
                   allow_headers=["*"]),
        Middleware(QueryIdGuard),
    ]
    asgi_app.add_exception_handler(InvalidIdError, _answer(400))
    asgi_app.add_exception_handler(InvalidLabelError, _answer(400))
    asgi_app.add_exception_handler(NotFoundError, _answer(404))
    asgi_app.add_exception_handler(ImageNotFoundException, _answer(404))
    asgi_app.add_exception_handler(LabelNotFoundException, _answer(404))
    asgi_app.add_exception_handler(MONAILabelException, _monailabel_error)
    asgi_app.add_exception_handler(json.JSONDecodeError, _bad_json)
    asgi_app.add_exception_handler(RequestValidationError, _validation_error)
    logger.info("CORS allowed origins (MFASSL app): %s; hosts answered: %s", origins, hosts)



_install(app)
