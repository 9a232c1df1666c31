"""A TLS gateway that lets devices reach only the SuperLink's Fleet API.

In flwr 1.41 the SuperLink serves the Fleet, Control and Runtime APIs on one HTTPS port, and
without Flower's enterprise account authentication the Control API (``flwr supernode
register``, ``flwr run``) and the Runtime API answer anyone who can connect. Devices must
reach the Fleet API, so the SuperLink binds 127.0.0.1 and this gateway faces the devices:
it terminates TLS with the SuperLink's certificate and forwards ``POST /v1/fleet/*``
unchanged (the SuperNode authentication headers included) to the SuperLink over TLS;
every other path gets 404. Registration and runs stay on the operator's machine. Request
bodies are counted as they arrive and refused with 413 past ``MAX_BODY_BYTES``
(``server.search.limits``), before more is read.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.search.limits import BodyLimitMiddleware

log = logging.getLogger(__name__)

FLEET_PREFIX = "/v1/fleet/"
MAX_BODY_BYTES = 256 * 1024 * 1024
_HOP_HEADERS = {
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
}


def create_gateway(upstream: str, ca_cert: Path, timeout_s: float = 120.0) -> Starlette:
    """The gateway app forwarding Fleet calls to ``upstream`` (``https://127.0.0.1:PORT``)."""
    client = httpx.AsyncClient(base_url=upstream, verify=str(ca_cert), timeout=timeout_s)

    async def fleet(request: Request) -> Response:
        body = await request.body()  # bounded by the middleware while it arrives
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            reply = await client.post(request.url.path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("SuperLink unreachable: %s", exc)
            return JSONResponse({"detail": "SuperLink unreachable"}, status_code=502)
        out = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP_HEADERS}
        return Response(reply.content, status_code=reply.status_code, headers=out)

    async def refuse(request: Request) -> Response:
        return JSONResponse({"detail": "not found"}, status_code=404)

    routes = [
        Route(FLEET_PREFIX + "{call:str}", fleet, methods=["POST"]),
        Route("/{path:path}", refuse, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    limit = Middleware(BodyLimitMiddleware, limit_for=lambda scope: MAX_BODY_BYTES)
    return Starlette(routes=routes, lifespan=lifespan, middleware=[limit])


def run_gateway(
    host: str,
    port: int,
    upstream: str,
    *,
    ca_cert: Path,
    certfile: Path,
    keyfile: Path,
) -> None:
    """Serve the gateway over TLS until interrupted."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per forwarded call
    uvicorn.run(
        create_gateway(upstream, ca_cert),
        host=host,
        port=port,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        log_level="warning",
        ws="none",
    )
