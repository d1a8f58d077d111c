"""Talk to an OpenAI-compatible server: the only module with a network and a clock.

The openai SDK does the transport (base URL, key, error types); the response
body is read raw so each SSE event is timed the moment its bytes arrive. The
request is timed from an httpx request hook, which fires as the request
leaves the client rather than when the SDK starts building it.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from .sse import timed_events


@dataclass
class Attempt:
    """What one request got back: raw chunks with times, or what went wrong.

    It holds observations only; outcome.classify decides what they mean.
    """
    http_status: int | None = None
    chunks: list = field(default_factory=list)
    body: str | None = None                 # the body of a non-2xx answer
    failure: tuple[str, str] | None = None  # (kind, message), kind in outcome.FAILURES
    retry_after_s: float | None = None
    unanswered: bool = False           # the connection closed before any byte of an answer

    @property
    def interrupted(self) -> bool:
        return self.failure is not None and self.failure[0] == "interrupted"


class Transport:
    """An openai client whose request hook marks the moment a request is sent."""

    def __init__(self, base_url: str, api_key: str, stall_timeout_s: float,
                 connect_timeout_s: float = 10.0):
        import openai

        self._sent_ns = 0
        self.stall_timeout_s = stall_timeout_s
        self.connect_timeout_s = connect_timeout_s
        # identity: the bytes recorded are the bytes the server streamed, never gzip
        self.http = openai.DefaultHttpxClient(
            event_hooks={"request": [self._on_request]}, headers={"Accept-Encoding": "identity"},
            timeout=openai.Timeout(stall_timeout_s, connect=connect_timeout_s))
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                                    http_client=self.http)
        self.base_url = str(self.client.base_url).rstrip("/")
        self.openai = openai

    def _on_request(self, request) -> None:
        self._sent_ns = time.perf_counter_ns()

    def close(self) -> None:
        self.http.close()

    def stream(self, body: dict, deadline_s: float | None, on_event=None) -> Attempt:
        """Send one streamed chat request; record every event with its time.

        A kept-alive connection that the server closed between requests (llama.cpp
        does so every few requests) fails before any byte comes back: that is the
        connection pool's, not the server's failure, so the request goes again.
        """
        att = self._stream_once(body, deadline_s, on_event)
        if att.unanswered:
            att = self._stream_once(body, deadline_s, on_event)
        return att

    def _stream_once(self, body: dict, deadline_s: float | None, on_event) -> Attempt:
        openai = self.openai
        att = Attempt()
        extra = {k: v for k, v in body.items() if k not in ("model", "messages")}
        # with --timeout, no single wait (for headers or the next bytes) outlasts it either
        wait_s = self.stall_timeout_s if deadline_s is None else min(self.stall_timeout_s, deadline_s)
        self._sent_ns = time.perf_counter_ns()
        try:
            with self.client.chat.completions.with_streaming_response.create(
                    model=body["model"], messages=body["messages"], extra_body=extra,
                    timeout=openai.Timeout(wait_s, connect=min(self.connect_timeout_s, wait_s))) as resp:
                att.http_status = resp.status_code
                self._read(resp.http_response.iter_raw(), att, deadline_s, on_event)
        except KeyboardInterrupt:
            att.failure = ("interrupted", "interrupted by the user")
        except openai.APIStatusError as e:
            self._status_error(e, att)
        except openai.APITimeoutError:
            att.failure = ("timeout", f"no answer within {wait_s:g} s")
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            att.failure = ("connection", f"{type(cause).__name__}: {cause}")
            # httpx's words for a kept-alive connection the server had already closed
            att.unanswered = att.http_status is None and "without sending a response" in str(cause)
        except _StreamTimeout as e:
            att.failure = ("timeout", str(e))
        except Exception as e:  # noqa: BLE001 - a broken stream is data, not a crash
            if "timeout" in type(e).__name__.lower():
                att.failure = ("timeout", f"no bytes for {wait_s:g} s")
            else:
                att.failure = ("stream", f"{type(e).__name__}: {e}")
        return att

    def _read(self, reads, att: Attempt, deadline_s: float | None, on_event) -> None:
        """The hot loop: take the time and keep the bytes; everything else waits.

        Times stay integers of nanoseconds here and become seconds once the
        stream has ended (or broken), so nothing but the clock runs per chunk.
        """
        t0 = self._sent_ns
        raw: list = []
        limit_ns = None if deadline_s is None else t0 + int(deadline_s * 1e9)
        try:
            for item in timed_events(reads):
                raw.append(item)
                if on_event is not None:
                    on_event(len(raw), item[0] - t0)
                if limit_ns is not None and item[0] > limit_ns:
                    raise _StreamTimeout(f"turn took longer than --timeout {deadline_s:g} s")
        finally:
            att.chunks = [[round((t - t0) / 1e9, 6), data] if event == "message"
                          else [round((t - t0) / 1e9, 6), data, event] for t, event, data in raw]

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
        base = self.base_url
        if root:
            base = re.sub(r"/v\d+$", "", base)
        headers = {"Authorization": f"Bearer {self.client.api_key}"}
        r = self.http.request(method, base + path, headers=headers, json=body, timeout=timeout_s)
        r.raise_for_status()
        return r.json()


class _StreamTimeout(Exception):
    pass
