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
    reader = _Reader(view, _starts_in_think(payloads))
    for t, obj, event in payloads:
        reader.payload(t, obj, event)
    reader.finish()
    return view


class _Reader:
    """Fold payloads into a StreamView, one token chunk at a time."""

    def __init__(self, view: StreamView, in_think: bool):
        self.view = view
        self.splitter = ThinkSplitter(in_think)
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.pending: int | None = None   # a chunk that may be the first letters of <think>

    def payload(self, t: float, obj: dict, event: str) -> None:
        view = self.view
        if "error" in obj or event == "error":
            view.error = obj.get("error", obj)
        if isinstance(obj.get("usage"), dict) and obj["usage"]:
            view.usage = obj["usage"]
        if isinstance(obj.get("timings"), dict) and obj["timings"]:
            view.timings = obj["timings"]
        for choice in _choices(obj):
            if isinstance(choice.get("finish_reason"), str):
                view.finish_reason = choice["finish_reason"]
            r_text, raw = _delta_texts(choice)
            if r_text or raw:
                self.token(t, r_text, raw)

    def token(self, t: float, r_text: str, raw: str) -> None:
        splitter = self.splitter
        tags_before = splitter.tags
        r_split, c_text = splitter.feed(raw) if raw else ("", "")
        self.reasoning.append(r_text + r_split)
        self.content.append(c_text)
        opened = splitter.tags != tags_before
        if self.pending is not None:
            # the held letters did open a <think> block, or were just text
            t0, _, c0 = self.view.tokens[self.pending]
            self.view.tokens[self.pending] = (t0, opened, c0)   # outside a block, a tag opens one
            self.pending = None
        # a chunk that is only a tag belongs to the reasoning it opens or closes
        is_reasoning = bool(r_text or r_split) or (not c_text and (splitter.in_think or opened))
        if not is_reasoning and not c_text and splitter.holding:
            self.pending = len(self.view.tokens)
        self.view.tokens.append((t, is_reasoning, c_text))

    def finish(self) -> None:
        r, c = self.splitter.flush()
        self.view.reasoning = ("".join(self.reasoning) + r).strip()
        self.view.content = ("".join(self.content) + c).strip()


def _choices(obj: dict) -> list[dict]:
    choices = obj.get("choices")
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


def _text(value) -> str:
    """Text of a delta field: a string, or a list of content parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _delta_texts(choice: dict) -> tuple[str, str]:
    """(reasoning, content) of one delta; a server that fills both reasoning
    fields with the same text is counted once."""
    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
    reasoning = next((t for t in (_text(delta.get(f)) for f in REASONING_FIELDS) if t), "")
    return reasoning, _text(delta.get("content"))


def _starts_in_think(payloads) -> bool:
    """Tell if inline reasoning opens without <think> (the template added it)."""
    joined = "".join(_delta_texts(choice)[1] for _, obj, _ in payloads for choice in _choices(obj))
    close = joined.find(CLOSE)
    return close >= 0 and joined.find(OPEN, 0, close) < 0
