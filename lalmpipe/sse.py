"""Split a raw Server-Sent Events byte stream into timed events.

Each event's time is taken the moment the read that completed its first data
line returns, before any JSON parsing, so the clock sees the network and not
the client's own work.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

DONE = "[DONE]"


def timed_events(reads: Iterable[bytes], clock: Callable[[], int] = time.perf_counter_ns
                 ) -> Iterator[tuple[int, str, str]]:
    """Yield (t_ns, event_type, data) for each SSE event in a stream of reads.

    `data` is the payload after ``data:`` (one optional space removed), decoded
    as UTF-8, lines of a multi-line event joined by newlines. Comments
    (``: keep-alive``) and fields other than data/event are skipped. A last
    event without its blank line is still yielded when the stream ends; a last
    line without its newline (a cut stream) is not.
    """
    tail = b""
    data: list[bytes] = []
    event = "message"
    t_event = 0
    for raw in reads:
        t = clock()
        lines = (tail + raw).split(b"\n")
        tail = lines.pop()
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield t_event, event, b"\n".join(data).decode("utf-8", "replace")
                data, event = [], "message"
            elif line.startswith(b"data:"):
                if not data:
                    t_event = t
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode("utf-8", "replace")
    if data:
        yield t_event, event, b"\n".join(data).decode("utf-8", "replace")


def encode_event(data: str, event: str = "message") -> bytes:
    """Encode one event as a server sends it (the inverse of timed_events)."""
    head = b"" if event == "message" else b"event: " + event.encode() + b"\n"
    body = b"".join(b"data: " + part.encode("utf-8") + b"\n" for part in data.split("\n"))
    return head + body + b"\n"
