"""Request bodies bounded while they arrive, and JSON nesting bounded before validation.

``BodyLimitMiddleware`` wraps the ASGI ``receive`` of every HTTP request: it counts the
body's bytes as they come (``Content-Length``, chunked or not, JSON or multipart alike)
and answers ``413`` as soon as the count passes the route's limit, before anything is
buffered or spooled beyond it. A declared ``Content-Length`` over the limit is refused
before any byte is read. The body must also arrive within ``body_timeout_s`` (a client
trickling a body byte by byte gets ``408``). Errors are JSON:
``{"error": {"field": "body", "message": "..."}}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import anyio

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[..., Any]


class _BodyRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit_for(scope)`` bytes or slower than the timeout."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit_for: Callable[[Scope], int],
        body_timeout_s: float = math.inf,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, 413, f"request body over {limit} bytes")
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, _counting(receive, limit, self.body_timeout_s), tracked_send)
        except _BodyRefused as exc:
            if started:
                raise
            await _refuse(send, exc.status, exc.message)


def _counting(receive: Callable, limit: int, timeout_s: float) -> Callable:
    """``receive`` that counts body bytes and enforces the deadline until the body ends."""
    received = 0
    done = False
    deadline = anyio.current_time() + timeout_s

    async def wrapped() -> Message:
        nonlocal received, done
        if done:
            return await receive()
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as scope:
            message = await receive()
        if scope.cancelled_caught:
            raise _BodyRefused(408, "request body not received in time")
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            done = not message.get("more_body", False)
            if received > limit:
                raise _BodyRefused(413, f"request body over {limit} bytes")
        return message

    return wrapped


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


async def _refuse(send: Callable, status: int, message: str) -> None:
    body = json.dumps({"error": {"field": "body", "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def json_depth_exceeds(value: Any, max_depth: int) -> bool:
    """True if ``value`` (parsed JSON) nests lists/objects deeper than ``max_depth``."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return False
