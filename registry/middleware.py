"""The ASGI guard in front of every route: upload limit and request metrics."""
from __future__ import annotations

import json
import time

from .metrics import LATENCY, REQUESTS


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Upload limit (413 before or while reading the body) and request metrics; pure
    ASGI so it adds no buffering of its own."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500, "sent": False, "replaced": False}
        limit = self.max_bytes
        seen = 0

        async def reject():
            body = json.dumps({"detail": f"request body larger than the "
                                         f"{limit / 1048576:g} MB upload limit"}).encode()
            status["code"], status["sent"] = 413, True
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                if seen > limit and not status["sent"]:
                    # The app caught the cut-off itself (FastAPI's form parameters turn
                    # it into "400 error parsing the body"): answer 413 instead.
                    status["replaced"] = True
                    await reject()
                    return
                status["code"] = message["status"]
                status["sent"] = True
            elif status["replaced"]:
                return
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            declared = int(length) if length is not None else None
        except ValueError:
            declared = None

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge()
            return message

        try:
            if declared is not None and declared > limit:
                await reject()
            else:
                try:
                    await self.app(scope, limited_receive, send_wrapper)
                except _BodyTooLarge:
                    if status["sent"]:
                        raise
                    await reject()
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope.get("method", ""), path, str(status["code"])).inc()
            LATENCY.labels(path).observe(time.perf_counter() - started)
