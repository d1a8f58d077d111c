"""Decide what a request's outcome was: pure, one place for every stage.

From what came back (HTTP status and body, the kind of failure the transport
met, the recorded stream, the known window) to a status and an Error. The
same rules say when the context window is full, for lalm-chat deciding a
turn and lalm-metrics flagging truncation.
"""
from __future__ import annotations

import json
import re

from .records import STATUS_ERROR, STATUS_INTERRUPTED, STATUS_OK, Error
from .vocab import ErrorKind, Status

OVERFLOW_PATTERNS = re.compile(
    r"exceed_context_size|exceeds the available context|context[_ ]length|"
    r"maximum context|context window|prompt is too long|too many tokens|"
    r"context size|n_ctx|input tokens", re.IGNORECASE)

# statuses worth another try: the server is busy, restarting or overloaded (and every 5xx)
TRANSIENT_STATUS = frozenset({408, 409, 425, 429})

# the failures the transport can meet before or while reading a stream
FAILURES = (ErrorKind.INTERRUPTED, ErrorKind.TIMEOUT, ErrorKind.CONNECTION, ErrorKind.STREAM)


def is_overflow_text(text: str | None) -> bool:
    return bool(OVERFLOW_PATTERNS.search(text or ""))


def context_tokens(prompt_tokens: int | None, completion_tokens: int | None) -> int | None:
    """What a turn left in the context: its prompt and what it generated."""
    if prompt_tokens is None or completion_tokens is None:
        return None
    return prompt_tokens + completion_tokens


def window_full(prompt_tokens: int | None, completion_tokens: int | None, window: int | None) -> bool:
    """Whether prompt and answer filled the known context window."""
    used = context_tokens(prompt_tokens, completion_tokens)
    if not window or used is None:
        return False
    return used >= window


def is_transient(http_status: int | None, failure: str | None, streamed: bool) -> bool:
    """Whether trying again may help: a busy server, or a connection that failed before any event."""
    if http_status is not None and http_status >= 400:
        return http_status in TRANSIENT_STATUS or http_status >= 500
    return failure == ErrorKind.CONNECTION and not streamed


def classify(http_status: int | None, body: str | None, failure: tuple[ErrorKind, str] | None,
             view, window: int | None) -> tuple[Status, Error | None]:
    """Return (status, error) of one request.

    `failure` is (kind, message) of what the transport met, kind one of
    FAILURES; `view` is the recorded stream read by reasoning.read_stream.
    """
    if failure is not None:
        kind, message = failure
        return (STATUS_INTERRUPTED if kind == ErrorKind.INTERRUPTED else STATUS_ERROR), Error(
            kind=kind, message=message, body=body)
    if http_status is not None and http_status >= 400:
        kind = (ErrorKind.CONTEXT_OVERFLOW if http_status in (400, 413, 422) and is_overflow_text(body)
                else ErrorKind.HTTP)
        return STATUS_ERROR, Error(kind=kind, message=error_message(body) or f"HTTP {http_status}",
                                   body=body)
    if view.error is not None:
        text = json.dumps(view.error)
        kind = ErrorKind.CONTEXT_OVERFLOW if is_overflow_text(text) else ErrorKind.STREAM
        return STATUS_ERROR, Error(kind=kind, message=_message(view.error), body=text)
    if view.events == 0:
        return STATUS_ERROR, Error(kind=ErrorKind.EMPTY, message="HTTP 200 with no events")
    if not view.done and view.finish_reason is None:
        return STATUS_ERROR, Error(kind=ErrorKind.STREAM, message="stream ended before finish_reason or [DONE]")
    usage = view.usage or {}
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if view.finish_reason == "length" and window_full(p, c, window):
        return STATUS_ERROR, Error(kind=ErrorKind.CONTEXT_OVERFLOW, message=(
            f"stream cut by the context window ({context_tokens(p, c)} of {window} tokens)"))
    return STATUS_OK, None


def _message(err) -> str:
    return str(err.get("message") or err) if isinstance(err, dict) else str(err)


def error_message(body: str | None) -> str | None:
    """The readable message of an error body: JSON `error.message`, or the text."""
    if not body:
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:300]
    return str(err)[:300]
