"""Which hosts and origins the MFASSL MONAI Label server answers (copied to ``<app>/mfassl_guards.py``).

Pure Python and ASGI (no monailabel, no starlette import), so the project's tests run it directly:

- **Host**: a request whose ``Host`` header names anything but the address the server is bound to, a loopback
  name (``127.0.0.1``, ``localhost``, ``::1``) or a host the user allowed (``--allowed-host``) is answered 400.
  CORS alone does not stop DNS rebinding: a page on ``evil.example`` whose name is re-pointed at 127.0.0.1 is
  *same-origin* to the browser, so it may read every answer; its requests still carry
  ``Host: evil.example:PORT``, which is refused here.
- **Origin**: a state-changing request (``POST``, ``PUT``, ``DELETE``, ``PATCH``: an inference, a label or image
  upload, a removal) that carries an ``Origin`` header not among the allowed CORS origins is answered 403 before
  it runs. CORS only keeps a foreign page from *reading* the answer; without this check the inference would run
  and an upload would be stored. Requests without ``Origin`` (curl, scripts, MONAI Label clients) pass.

Each refusal is JSON ``{"detail": "..."}`` naming the value refused and what is allowed.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Awaitable, Callable, Iterable, List, Optional, Sequence

__all__ = ["LOOPBACK_HOSTS", "STATE_CHANGING", "HOST_ENV", "ALLOWED_HOSTS_ENV", "host_name", "allowed_hosts",
           "hosts_from_env", "host_problem", "origin_problem", "HostOriginGuard"]

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Host names every server answers (the machine itself)."""
STATE_CHANGING = ("POST", "PUT", "DELETE", "PATCH")
"""Methods whose ``Origin`` must be allowed."""
HOST_ENV = "MFASSL_LABEL_HOST"
"""The address the server is bound to (``--host``), set by ``label_app``."""
ALLOWED_HOSTS_ENV = "MFASSL_LABEL_ALLOWED_HOSTS"
"""A JSON list of further host names the server answers (``--allowed-host``), set by ``label_app``."""


def host_name(header: str) -> str:
    """The host of a ``Host`` header without its port, lower case: ``[::1]:8000`` -> ``::1``."""
    h = header.strip().lower()
    if h.startswith("["):  # IPv6 literal
        end = h.find("]")
        return h[1:end] if end > 0 else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def allowed_hosts(bound: Optional[str] = None, extra: Iterable[str] = ()) -> List[str]:
    """The loopback names, the bound address (unless it is a wildcard such as ``0.0.0.0``) and ``extra``."""
    hosts = list(LOOPBACK_HOSTS)
    for h in [bound or "", *extra]:
        name = host_name(h) if h else ""
        if name and name not in ("0.0.0.0", "::") and name not in hosts:
            hosts.append(name)
    return hosts


def hosts_from_env(env: Optional[dict] = None) -> List[str]:
    """:func:`allowed_hosts` of :data:`HOST_ENV` and :data:`ALLOWED_HOSTS_ENV` (a JSON list)."""
    env = os.environ if env is None else env
    extra = json.loads(env.get(ALLOWED_HOSTS_ENV) or "[]")
    return allowed_hosts(env.get(HOST_ENV), [str(h) for h in extra])


def host_problem(header: Optional[str], hosts: Sequence[str]) -> Optional[str]:
    """Why a request's ``Host`` header is refused, or None when it names an allowed host."""
    if header is None or not header.strip():
        return "the request has no Host header"
    if host_name(header) in hosts:
        return None
    return (f"Host {header!r} is not this server (it answers {', '.join(hosts)}; start it with --allowed-host NAME "
            "to add a name)")


def origin_problem(method: str, origin: Optional[str], origins: Sequence[str]) -> Optional[str]:
    """Why a request is refused for its ``Origin``, or None: only state-changing methods with a foreign Origin."""
    if method.upper() not in STATE_CHANGING or origin is None:
        return None
    if origin.strip().rstrip("/") in origins:
        return None
    return (f"Origin {origin!r} may not {method.upper()} here (allowed origins: {', '.join(origins) or 'none'}; "
            "start the server with --cors-origin URL to allow one)")


def _header(scope: dict, name: bytes) -> Optional[str]:
    for k, v in scope.get("headers") or []:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


async def _refuse(send: Callable[[dict], Awaitable[None]], status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class HostOriginGuard:
    """ASGI middleware: 400 for a ``Host`` that is not this server, 403 for a state-changing request from a foreign
    ``Origin`` (see the module docstring). HTTP and WebSocket requests are checked; lifespan events pass.

    Args:
        asgi: the application to protect.
        hosts: the host names answered (:func:`allowed_hosts`).
        origins: the allowed browser origins (``scheme://host:port``, no trailing ``/``).
    """

    def __init__(self, asgi: Callable[..., Awaitable[None]], hosts: Sequence[str], origins: Sequence[str]) -> None:
        self.asgi = asgi
        self.hosts = [host_name(h) for h in hosts]
        self.origins = [o.rstrip("/") for o in origins]

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[Any]], send: Callable) -> None:
        if scope.get("type") in ("http", "websocket"):
            problem = host_problem(_header(scope, b"host"), self.hosts)
            status = 400
            if problem is None and scope.get("type") == "http":
                problem = origin_problem(scope.get("method", "GET"), _header(scope, b"origin"), self.origins)
                status = 403
            if problem is not None:
                logger.warning("refused %s %s: %s", scope.get("method", "WS"), scope.get("path"), problem)
                if scope.get("type") == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await _refuse(send, status, problem)
                return
        await self.asgi(scope, receive, send)
