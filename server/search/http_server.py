"""Running the search service with uvicorn: TLS, connection limits and timeouts.

Besides uvicorn's keep-alive timeout (an idle connection between requests is closed after
``KEEP_ALIVE_S``) and its cap of ``MAX_CONNECTIONS`` (503 beyond), a request's headers
must arrive within
``search.header_timeout_s`` of the connection opening or of the previous response: a
client that trickles its headers (slowloris) or connects and sends nothing is cut off.
The body's own deadline is ``search.body_timeout_s`` (``server.search.limits``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

from common.config import SearchConfig

KEEP_ALIVE_S = 5
MAX_CONNECTIONS = 512

try:  # uvicorn's faster parser when installed, as its "auto" setting does
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _BaseProtocol
except ImportError:  # pragma: no cover - depends on the installed extras
    from uvicorn.protocols.http.h11_impl import (  # type: ignore[assignment]
        H11Protocol as _BaseProtocol,
    )


class _HeaderDeadline(_BaseProtocol):
    """Closes a connection whose next request's headers are not complete in time."""

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        waiting_for = self.cycle  # a new cycle starts once the next headers are complete
        self._header_timer = self.loop.call_later(
            self.header_timeout_s, self._headers_late, waiting_for
        )

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self, waiting_for: Any) -> None:
        self._header_timer = None
        if self.cycle is waiting_for and not self.transport.is_closing():
            self.transport.close()


def protocol_class(header_timeout_s: float) -> type[asyncio.Protocol]:
    """The HTTP protocol class for uvicorn, with the given header deadline."""
    return type("SearchHttpProtocol", (_HeaderDeadline,), {"header_timeout_s": header_timeout_s})


def server_config(app: Any, host: str, port: int, search: SearchConfig) -> uvicorn.Config:
    """uvicorn settings of the search service (TLS when a certificate is configured)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(search.header_timeout_s),
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=MAX_CONNECTIONS,
        ssl_certfile=search.tls_certfile or None,
        ssl_keyfile=search.tls_keyfile or None,
        log_level="warning",
        ws="none",
        lifespan="on",
    )
