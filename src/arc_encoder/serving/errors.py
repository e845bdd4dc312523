"""Every error the service answers, as JSON with the right status, in one shape per path.

    /v1/chat/completions, /v1/completions, /v1/models   OpenAI's {"error": {message, type, param, code}}
    any other /v1/ path (native routes, unknown routes)  {"detail": ..., "error": {...}}: the native
                                                         field and OpenAI's object side by side
    elsewhere (/health, /metrics, /docs)                 {"detail": ...}

`type` is what OpenAI's API writes: "invalid_request_error" for every 4xx (a wrong key included,
with code "invalid_api_key"), "server_error" for 5xx. `param` names the request field at fault as
OpenAI writes it: `messages[0].content`, `documents[2]`, `retrieve.k`.
"""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .refusals import Busy, ClientError

# Paths whose errors take OpenAI's shape alone.
OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models")


def is_openai_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPENAI_PATHS)


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The error object OpenAI's clients parse; `type` follows the status as OpenAI's API does."""
    if status == 401:
        code = code or "invalid_api_key"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"message": message, "type": kind, "param": param, "code": code}


def error_body(path: str, status: int, message: str, param: str | None = None, code: str | None = None, **extra):
    """The JSON body of an error on `path` (see module doc); `extra`: native-only fields."""
    if is_openai_path(path):
        return {"error": openai_error(status, message, param, code)}
    if path == "/v1" or path.startswith("/v1/"):
        return {"detail": message, **extra, "error": openai_error(status, message, param, code)}
    return {"detail": message, **extra}


def json_safe(value):
    """Non-finite floats (from the request or a limit) as strings, so the answer is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def field_of(err: dict, body=None) -> str | None:
    """The request field a validation error is at, as OpenAI names it: 'messages[0].content' for
    loc ('body', 'messages', 0, 'content', 'str').

    pydantic adds the member of a union it tried ('str', 'list[TextPart]') to the location; those
    are not fields of the request. Walking the request's own JSON alongside tells them apart: a part
    is a field where the JSON has it (or, last, where a required field is missing).
    """
    parts = list(err.get("loc", ()))
    if parts[:1] == ["body"]:
        parts = parts[1:]
    out, node = "", body
    for k, part in enumerate(parts):
        if isinstance(part, int) and (body is None or isinstance(node, list)):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            continue
        missing = err.get("type") == "missing" and k == len(parts) - 1
        if isinstance(part, str) and (body is None or (isinstance(node, dict) and (part in node or missing))):
            out += f".{part}" if out else part
            node = node.get(part) if isinstance(node, dict) else None
        # else: the tag of a union member pydantic tried, not a field
    return out or None


def install_error_handlers(app: FastAPI) -> None:
    """Handlers for every error a request can meet (module doc for the shapes)."""

    def error(request: Request, status: int, message: str, param=None, code=None, headers=None, **extra):
        body = error_body(request.url.path, status, message, param, code, **extra)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ClientError)
    async def _client_error(request: Request, e: ClientError):
        headers = {"Retry-After": "1"} if isinstance(e, Busy) else None
        return error(request, e.status, e.message, e.param, e.code, headers)

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, e: ValueError):
        return error(request, 400, str(e))

    @app.exception_handler(TypeError)
    async def _type_error(request: Request, e: TypeError):
        return error(request, 400, str(e))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        # Starlette's own refusals: no such route (404), wrong method (405), a body that could not be read
        method, path = request.method, request.url.path
        if e.status_code == 404:
            message = f"no route {method} {path}" if e.detail == "Not Found" else str(e.detail)
        elif e.status_code == 405:
            allowed = {k.lower(): v for k, v in (e.headers or {}).items()}.get("allow", "")
            message = f"method {method} is not allowed on {path}" + (f" (allowed: {allowed})" if allowed else "")
        elif isinstance(e.__cause__, UnicodeDecodeError):
            bad = e.__cause__
            message = f"the request body is not UTF-8 text (byte {bad.object[bad.start]:#04x} at offset {bad.start})"
        else:
            message = str(e.detail)
        return error(request, e.status_code, message, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        # the offending input is not echoed back: it may be huge, or a NaN that JSON cannot carry
        errors = jsonable_encoder(
            [{k: v for k, v in err.items() if k != "input"} for err in e.errors()], custom_encoder={Exception: str}
        )
        errors = json_safe(errors)
        # of the errors pydantic lists for a union, the deepest is the member the JSON meant
        first = max(errors, key=lambda err: len(field_of(err, e.body) or ""), default={})
        if first.get("type") == "json_invalid":
            message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
            return error(request, 400 if is_openai_path(request.url.path) else 422, message, errors=errors)
        param = field_of(first, e.body)
        if is_openai_path(request.url.path):  # OpenAI answers a malformed request with 400
            if first.get("type") == "extra_forbidden":
                message = f"unsupported parameter: {param}"
            else:
                message = f"invalid value for {param!r}: {first.get('msg')}" if param else f"invalid request: {first}"
            return error(request, 400, message, param)
        readable = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors)
        return error(request, 422, f"invalid request: {readable}", param, errors=errors)
