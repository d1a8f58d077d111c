"""Talk to an OpenAI-compatible server: the only module with a network and a clock.

The openai SDK does the transport (base URL, key, error types); the response
body is read raw so each SSE event is timed the moment its bytes arrive. The
request is timed from httpcore's trace of it, once its last byte is written on
an open connection: neither the SDK building it nor a reconnect counts.
"""
from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from .errors import UsageError
from .redact import credentials, mask_values, redact, redact_url
from .sse import timed_events
from .vocab import ErrorKind

PLACEHOLDER_KEY = "lm-studio"   # the SDK needs a key; a local server takes any
DEFAULT_BASE_URL = "http://localhost:1234/v1"   # LM Studio's


def check_base_url(url: str, name: str) -> None:
    """Refuse a base URL that is not http(s) with a host and a port from 1 to
    65535, as a usage error naming where it was given (`name`), credentials masked."""
    shown = f"{name} {redact_url(url)!r}"
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise UsageError(f"{shown} is not a URL: {str(e)[:1].lower()}{str(e)[1:]}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UsageError(f"{shown} is not an http:// or https:// URL (e.g. {DEFAULT_BASE_URL})")
    if not parts.hostname:
        raise UsageError(f"{shown} names no host (e.g. {DEFAULT_BASE_URL})")
    try:
        port = parts.port
    except ValueError:      # not a number, or past 65535
        port = 0
    if port == 0:
        raise UsageError(f"{shown}: the port must be a number from 1 to 65535")


@dataclass
class Attempt:
    """What one request got back: raw chunks with times, or what went wrong.

    It holds observations only; outcome.classify decides what they mean.
    """
    http_status: int | None = None
    chunks: list = field(default_factory=list)
    body: str | None = None                 # the body of a non-2xx answer
    failure: tuple[ErrorKind, str] | None = None  # (kind, message), kind in outcome.FAILURES
    retry_after_s: float | None = None
    unanswered: bool = False           # the connection closed before any byte of an answer
    connection: str | None = None      # "new" or "reused"; None when no request went out
    requests: int = 1                  # requests tried for it: 2 after a resend

    @property
    def interrupted(self) -> bool:
        return self.failure is not None and self.failure[0] == ErrorKind.INTERRUPTED


class Transport:
    """An openai client that traces each request: when it left, and on which connection.

    Its `base_url` is the URL to show and record, credentials masked; what a
    request gets back is masked too (see `_mask`)."""

    def __init__(self, base_url: str, api_key: str | None, stall_timeout_s: float,
                 connect_timeout_s: float = 10.0):
        import openai

        self.secrets = credentials(base_url, api_key)
        url, query = _split_query(base_url)
        self._sent_ns = 0
        self._connection: str | None = None
        self.stall_timeout_s = stall_timeout_s
        self.connect_timeout_s = connect_timeout_s
        # identity: the bytes recorded are the bytes the server streamed, never gzip;
        # the query goes on every request from here, as the SDK would put paths after it
        self.http = openai.DefaultHttpxClient(
            event_hooks={"request": [self._on_request]}, headers={"Accept-Encoding": "identity"},
            params=query, timeout=openai.Timeout(stall_timeout_s, connect=connect_timeout_s))
        self.client = openai.OpenAI(base_url=url, api_key=api_key or PLACEHOLDER_KEY, max_retries=0,
                                    http_client=self.http)
        self._url = str(self.client.base_url).rstrip("/")
        self.base_url = self.redact(self._url + (f"?{query}" if query else ""))
        self.openai = openai

    def _on_request(self, request) -> None:
        # the SDK has no way to give a request an extension: the client's hook hands httpcore the tracer
        request.extensions["trace"] = self._trace

    def _trace(self, event: str, info: dict) -> None:
        """Note when the request left, and whether it needed a new connection.

        The request has left once its body is written, not when its headers start:
        the server starts on it no sooner, and a long conversation's upload is the
        network's time, not the model's. Both come after any connect, so a
        reconnect is never timed.
        """
        if event == "http11.send_request_body.complete":
            self._sent_ns = time.perf_counter_ns()
        elif event == "connection.connect_tcp.complete":
            self._connection = "new"
        elif event == "http11.send_request_headers.started" and self._connection is None:
            self._connection = "reused"

    def close(self) -> None:
        self.http.close()

    def redact(self, text: str) -> str:
        """Mask this transport's credentials, and any URL's or Bearer token's, in text."""
        return redact(text, self.secrets)

    def stream(self, body: dict, deadline_s: float | None, on_event=None) -> Attempt:
        """Send one streamed chat request; record every event with its time.

        A kept-alive connection that the server closed between requests (llama.cpp
        closes one after each streamed answer) fails before any byte comes back
        when the request crosses the close: that is the connection pool's, not
        the server's failure, so the request goes again (and the answer says it
        took two).
        """
        att = self._stream_once(body, deadline_s, on_event)
        if att.unanswered:
            att = self._stream_once(body, deadline_s, on_event)
            att.requests = 2
        self._mask(att)
        return att

    def _mask(self, att: Attempt) -> None:
        """Mask the credentials a server may echo, once the stream is over: in
        an error wholly; in the events only the key values, so that every other
        byte stays as received."""
        if att.failure:
            att.failure = (att.failure[0], self.redact(att.failure[1]))
        if att.body:
            att.body = self.redact(att.body)
        events = "\n".join(c[1] for c in att.chunks)
        if mask_values(events, self.secrets) != events:   # rare: only then event by event
            for chunk in att.chunks:
                chunk[1] = mask_values(chunk[1], self.secrets)

    def _stream_once(self, body: dict, deadline_s: float | None, on_event) -> Attempt:
        openai = self.openai
        att = Attempt()
        extra = {k: v for k, v in body.items() if k not in ("model", "messages")}
        # with --timeout, no single wait (for headers or the next bytes) outlasts it either
        wait_s = self.stall_timeout_s if deadline_s is None else min(self.stall_timeout_s, deadline_s)
        # the trace moves both as the request goes out; one that never leaves keeps them
        self._sent_ns, self._connection = time.perf_counter_ns(), None
        try:
            with self.client.chat.completions.with_streaming_response.create(
                    model=body["model"], messages=body["messages"], extra_body=extra,
                    timeout=openai.Timeout(wait_s, connect=min(self.connect_timeout_s, wait_s))) as resp:
                att.http_status = resp.status_code
                self._read(resp.http_response.iter_raw(), att, deadline_s, on_event)
        except KeyboardInterrupt:
            att.failure = (ErrorKind.INTERRUPTED, "interrupted by the user")
        except openai.APIStatusError as e:
            self._status_error(e, att)
        except openai.APITimeoutError:
            att.failure = (ErrorKind.TIMEOUT, f"no answer within {wait_s:g} s")
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            att.failure = (ErrorKind.CONNECTION, self.connection_failure(cause))
            # httpx's words for a kept-alive connection the server had already closed
            att.unanswered = att.http_status is None and "without sending a response" in str(cause)
        except _StreamTimeout as e:
            att.failure = (ErrorKind.TIMEOUT, str(e))
        except Exception as e:  # noqa: BLE001 - a broken stream is data, not a crash
            if "timeout" in type(e).__name__.lower():
                att.failure = (ErrorKind.TIMEOUT, f"no bytes for {wait_s:g} s")
            else:
                att.failure = (ErrorKind.STREAM, f"{type(e).__name__}: {e}")
        att.connection = self._connection
        return att

    def connection_failure(self, e: BaseException) -> str:
        """A connection that failed, in words: one never made names the server."""
        if "Connect" in type(e).__name__:
            return f"cannot connect to {self.base_url}: {connect_reason(e)}"
        return connect_reason(e)

    def _read(self, reads, att: Attempt, deadline_s: float | None, on_event) -> None:
        """The hot loop: take the time and keep the bytes; everything else waits.

        Times stay integers of nanoseconds here and become seconds once the
        stream has ended (or broken), so nothing but the clock runs per chunk.
        """
        t0 = self._sent_ns
        raw: list = []
        limit_ns = None if deadline_s is None else t0 + int(deadline_s * 1e9)
        try:
            for item in timed_events(self._data_waits(reads, raw, deadline_s, limit_ns)):
                raw.append(item)
                if on_event is not None:
                    on_event(len(raw), item[0] - t0)
        finally:
            att.chunks = [[round((t - t0) / 1e9, 6), data] if event == "message"
                          else [round((t - t0) / 1e9, 6), data, event] for t, event, data in raw]

    def _data_waits(self, reads, events: list, deadline_s: float | None, limit_ns: int | None):
        """Pass the reads on, ending the stream when no data event came for the stall timeout.

        The connection's own timeout sees bytes, and a server's keep-alive comments
        (`: ping`, every 15 s from llama-cpp-python) are bytes: they would keep a
        stalled stream open for ever. The wait is measured from the last data event
        (`events`, filled as the reads are parsed), or from the request, and checked
        as bytes arrive: behind comments every 15 s a stall ends up to 15 s late.
        """
        stall_ns = int(self.stall_timeout_s * 1e9)
        for chunk in reads:
            now = time.perf_counter_ns()
            if now - (events[-1][0] if events else self._sent_ns) > stall_ns:
                raise _StreamTimeout(f"no data event for {self.stall_timeout_s:g} s")
            if limit_ns is not None and now > limit_ns:
                raise _StreamTimeout(f"turn took longer than --timeout {deadline_s:g} s")
            yield chunk

    def _status_error(self, e, att: Attempt) -> None:
        try:
            att.body = e.response.text
        except Exception:  # noqa: BLE001 - body may be unreadable
            att.body = None
        att.http_status = e.status_code
        ra = e.response.headers.get("retry-after")
        if ra:
            try:
                att.retry_after_s = float(ra)
            except ValueError:
                pass

    def get_json(self, path: str, root: bool = False, timeout_s: float = 3.0,
                 method: str = "GET", body: dict | None = None):
        """Fetch JSON from the server (relative to base URL or server root)."""
        base = self._url
        if root:
            base = re.sub(r"/v\d+$", "", base)
        headers = {"Authorization": f"Bearer {self.client.api_key}"}
        r = self.http.request(method, base + path, headers=headers, json=body, timeout=timeout_s)
        r.raise_for_status()
        return r.json()


class _StreamTimeout(Exception):
    pass


def connect_reason(e: BaseException) -> str:
    """Why a connection failed, in words ("connection refused"), from the
    operating system's error under an HTTP library's, without its [Errno N]."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return "unknown host"   # its words ("name or service not known") vary by system
        if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
            return _lower_first(os.strerror(cause.errno))
        cause = cause.__cause__ or cause.__context__
    return _plain_errno(str(e) or type(e).__name__)


def _plain_errno(text: str) -> str:
    return _lower_first(re.sub(r"^\[Errno -?\d+\]\s*", "", text))


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _split_query(url: str) -> tuple[str, str]:
    """Split a URL into the URL without its query, and the query."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="")), parts.query
