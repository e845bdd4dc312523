"""What the service checks before it reads a request's body: the API key, and the body's size.

A FastAPI dependency or an HTTP middleware runs after the body has been read and parsed, so a
large upload with no key (or a chunked one, which has no Content-Length) would cost the server
its memory before being refused. This ASGI middleware refuses a request without the key from its
headers alone, refuses a declared Content-Length over the limit, and counts the bytes actually
received: the body stops being read at the limit, whatever the headers said.
"""

from __future__ import annotations

import hmac
import json

from .errors import error_body

KEY_HELP = "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')"


def given_key(headers: dict[str, str]) -> str | None:
    if "x-api-key" in headers:
        return headers["x-api-key"]
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


async def respond(send, path: str, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """A JSON error in the path's shape (errors.py)."""
    body = json.dumps(error_body(path, status, detail)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: API key on paths under `protected` (when a key is set), body size cap."""

    def __init__(self, app, max_bytes: int, api_key: str | None = None, protected: str = "/v1"):
        self.app, self.max_bytes, self.api_key, self.protected = app, max_bytes, api_key, protected

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and scope["path"].startswith(self.protected):
            key = given_key(headers)
            if key is None or not hmac.compare_digest(key.encode(), self.api_key.encode()):
                return await respond(send, scope["path"], 401, KEY_HELP, {"www-authenticate": "Bearer"})
        too_large = f"request body exceeds the limit of {self.max_bytes} bytes"
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return await respond(
                send, scope["path"], 413, f"request body of {length} bytes exceeds the limit of {self.max_bytes} bytes"
            )

        state = {"received": 0, "over": False, "answered": False}

        async def counted_receive():
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    # Stop here: the app sees a client that went away, and its answer is replaced.
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not state["over"]:
                return await send(message)
            if not state["answered"]:
                state["answered"] = True
                await respond(send, scope["path"], 413, too_large)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["answered"]:
            state["answered"] = True
            await respond(send, scope["path"], 413, too_large)
