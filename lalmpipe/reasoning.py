"""Separate reasoning from the visible answer in a recorded stream.

Servers send reasoning three ways: ``delta.reasoning_content`` (llama.cpp,
vLLM, LM Studio), ``delta.reasoning`` (Ollama, newer vLLM) or inline
``<think>…</think>`` in ``delta.content``, with tags that may be split across
chunks (``"<thi"`` + ``"nk>"``). Everything here is pure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

OPEN, CLOSE = "<think>", "</think>"
REASONING_FIELDS = ("reasoning_content", "reasoning")


class ThinkSplitter:
    """Split streamed text at <think> tags, holding back a possibly partial tag."""

    def __init__(self, in_think: bool = False):
        self.in_think = in_think
        self.tags = 0
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """Return the (reasoning, content) text this piece completes."""
        buf = self._held + text
        self._held = ""
        reasoning, content = [], []
        while buf:
            tag = CLOSE if self.in_think else OPEN
            out = reasoning if self.in_think else content
            i = buf.find(tag)
            if i >= 0:
                out.append(buf[:i])
                buf = buf[i + len(tag):]
                self.in_think = not self.in_think
                self.tags += 1
                continue
            k = _partial_suffix(buf, tag)
            out.append(buf[:len(buf) - k])
            self._held = buf[len(buf) - k:]
            break
        return "".join(reasoning), "".join(content)

    @property
    def holding(self) -> bool:
        """Whether the end of the text so far may be the start of a tag."""
        return bool(self._held)

    def flush(self) -> tuple[str, str]:
        """Return held-back text at the end of the stream (it was not a tag)."""
        held, self._held = self._held, ""
        return (held, "") if self.in_think else ("", held)


def _partial_suffix(buf: str, tag: str) -> int:
    for k in range(min(len(tag) - 1, len(buf)), 0, -1):
        if buf.endswith(tag[:k]):
            return k
    return 0


@dataclass
class StreamView:
    """What a recorded stream says, chunk by chunk, without any clock."""
    tokens: list = field(default_factory=list)   # (t_s, is_reasoning, content_text)
    reasoning: str = ""
    content: str = ""
    finish_reason: str | None = None
    usage: dict | None = None
    timings: dict | None = None
    error: dict | None = None                     # an error object sent inside the stream
    events: int = 0
    done: bool = False


def read_stream(chunks: list) -> StreamView:
    """Interpret recorded `[t_s, data(, event)]` chunks.

    A token chunk is one that carries reasoning or content text; a role-only
    or empty delta, the usage chunk and ``[DONE]`` are not tokens.
    """
    view = StreamView()
    payloads = []
    for chunk in chunks:
        view.events += 1
        data = chunk[1]
        if data == "[DONE]":
            view.done = True
            continue
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        if isinstance(obj, dict):
            payloads.append((chunk[0], obj, chunk[2] if len(chunk) > 2 else "message"))
    splitter = ThinkSplitter(in_think=_starts_in_think(payloads))
    reasoning, content = [], []
    for t, obj, event in payloads:
        _read_payload(view, t, obj, event, splitter, reasoning, content)
    r, c = splitter.flush()
    reasoning.append(r)
    content.append(c)
    view.reasoning = "".join(reasoning).strip()
    view.content = "".join(content).strip()
    return view


def _read_payload(view, t, obj, event, splitter, reasoning, content) -> None:
    if "error" in obj or event == "error":
        view.error = obj.get("error", obj)
    if obj.get("usage"):
        view.usage = obj["usage"]
    if obj.get("timings"):
        view.timings = obj["timings"]
    for choice in obj.get("choices") or ():
        if choice.get("finish_reason"):
            view.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        r_text = "".join(delta.get(f) or "" for f in REASONING_FIELDS)
        raw = delta.get("content") or ""
        if not r_text and not raw:
            continue
        tags_before = splitter.tags
        r_split, c_text = splitter.feed(raw) if raw else ("", "")
        reasoning.append(r_text + r_split)
        content.append(c_text)
        # a chunk that is only a tag (or a tag's first letters) belongs to reasoning
        is_reasoning = bool(r_text or r_split) or (
            not c_text and (splitter.in_think or splitter.holding or splitter.tags != tags_before))
        view.tokens.append((t, is_reasoning, c_text))


def _starts_in_think(payloads) -> bool:
    """Tell if inline reasoning opens without <think> (the template added it)."""
    text = []
    for _, obj, _ in payloads:
        for choice in obj.get("choices") or ():
            text.append((choice.get("delta") or {}).get("content") or "")
    joined = "".join(text)
    close = joined.find(CLOSE)
    return close >= 0 and joined.find(OPEN, 0, close) < 0
