"""Separate reasoning from the visible answer in a recorded stream.

Servers send reasoning three ways: ``delta.reasoning_content`` (llama.cpp,
vLLM, LM Studio), ``delta.reasoning`` (Ollama, newer vLLM) or inline
``<think>…</think>`` at the start of ``delta.content``, with tags that may be
split across chunks (``"<thi"`` + ``"nk>"``). Everything here is pure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

OPEN, CLOSE = "<think>", "</think>"
REASONING_FIELDS = ("reasoning_content", "reasoning")


class ThinkSplitter:
    """Split streamed content at a leading <think> block, holding back a possibly partial tag.

    A block opens only at the start of the answer (whitespace aside), or the
    chat template opened it before the stream began (``in_think``). Once it
    closes, or the answer starts with anything else, the rest is answer, tags
    and all: a model may well write about the tags themselves.
    """

    def __init__(self, in_think: bool = False):
        self.in_think = in_think
        self.settled = False      # past the start and any block: no tag counts any more
        self.tags = 0
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """Return the (reasoning, content) text this piece completes."""
        if self.settled:
            return "", text
        buf = self._held + text
        self._held = ""
        if self.in_think:
            return self._inside(buf, "")
        body = buf.lstrip()
        lead = buf[:len(buf) - len(body)]
        if body.startswith(OPEN):
            self.in_think = True
            self.tags += 1
            return self._inside(body[len(OPEN):], lead)
        if OPEN.startswith(body):     # whitespace so far, or the first letters of <think>
            self._held = body
            return "", lead
        self.settled = True
        return "", buf

    def _inside(self, buf: str, content: str) -> tuple[str, str]:
        """Read buf inside the block; content is what came before it."""
        i = buf.find(CLOSE)
        if i >= 0:
            self.in_think = False
            self.settled = True
            self.tags += 1
            return buf[:i], content + buf[i + len(CLOSE):]
        keep = len(buf) - _partial_suffix(buf, CLOSE)
        self._held = buf[keep:]
        return buf[:keep], content

    @property
    def holding(self) -> bool:
        """Whether the end of the text so far may be the start of a tag."""
        return bool(self._held)

    def flush(self) -> tuple[str, str]:
        """Return held-back text at the end of the stream (it was not a tag)."""
        held, self._held = self._held, ""
        return (held, "") if self.in_think else ("", held)


def _partial_suffix(buf: str, tag: str) -> int:
    """Length of the end of buf that may be the first letters of tag.

    Only the tag's first letter is a "<", so such an end starts at the last
    "<" near the end of buf: one scan instead of a try per length.
    """
    j = buf.rfind("<", max(len(buf) - len(tag) + 1, 0))
    return len(buf) - j if j >= 0 and tag.startswith(buf[j:]) else 0


@dataclass
class StreamView:
    """What a recorded stream says, chunk by chunk, without any clock."""
    tokens: list = field(default_factory=list)   # (t_s, is_reasoning, content_text)
    reasoning: str = ""
    content: str = ""                             # the visible answer, stripped
    raw_content: str = ""                         # every delta.content as streamed, joined
    reasoning_inline: bool = False                # raw_content carries a <think> block
    finish_reason: str | None = None
    usage: dict | None = None
    timings: dict | None = None
    error: dict | None = None                     # an error object sent inside the stream
    events: int = 0
    done: bool = False

    def history_text(self, keep_reasoning: bool) -> str:
        """Return the answer as a client appends it to the history.

        That is the content exactly as streamed, an inline <think> block
        included; reasoning sent in a field of its own goes in front of it,
        as chat templates render it, only when it is to be kept.
        """
        if keep_reasoning and self.reasoning and not self.reasoning_inline:
            return f"{OPEN}\n{self.reasoning}\n{CLOSE}\n\n{self.raw_content}"
        return self.raw_content


def read_stream(chunks: list) -> StreamView:
    """Interpret recorded `[t_s, data(, event)]` chunks.

    A token chunk is one that carries reasoning or content text; a role-only
    or empty delta, the usage chunk and ``[DONE]`` are not tokens.
    """
    view = StreamView(events=len(chunks))
    payloads = []
    for chunk in chunks:
        data = chunk[1]
        if data == "[DONE]":
            view.done = True
            continue
        parsed = _parse(data, chunk[2] if len(chunk) > 2 else "message")
        if parsed is not None:
            payloads.append((chunk[0], *parsed))
    view.raw_content = "".join(c for _, deltas, *_ in payloads for _, _, c in deltas)
    reader = _Reader(view, _starts_in_think(view.raw_content))
    for payload in payloads:
        reader.payload(*payload)
    reader.finish()
    return view


class _Delta(msgspec.Struct):
    content: str | list | None = None
    reasoning_content: str | list | None = None
    reasoning: str | list | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Payload(msgspec.Struct):
    """The parts of a chunk that matter, as nearly every server sends them."""
    choices: list[_Choice] | None = None
    usage: dict | None = None
    timings: dict | None = None
    error: Any = None


_decode_payload = msgspec.json.Decoder(_Payload).decode
_decode_any = msgspec.json.Decoder().decode


def _parse(data: str, event: str) -> tuple | None:
    """(deltas, usage, timings, error) of one event; None if it is not a JSON object.

    The usual shape is decoded straight into typed parts; anything else
    (an odd field type, an error event) is read the slow, lenient way.
    """
    if event == "message":
        try:
            p = _decode_payload(data)
        except msgspec.ValidationError:
            pass
        except msgspec.DecodeError:
            return None
        else:
            deltas = [(c.finish_reason, *_texts(c.delta)) for c in p.choices or ()]
            return deltas, p.usage or None, p.timings or None, p.error
    try:
        obj = _decode_any(data)
    except msgspec.DecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    deltas = [(c.get("finish_reason") if isinstance(c.get("finish_reason"), str) else None,
               *_delta_texts(c)) for c in _choices(obj)]
    usage, timings = obj.get("usage"), obj.get("timings")
    error = obj.get("error", obj) if event == "error" else obj.get("error")
    return (deltas, usage if isinstance(usage, dict) and usage else None,
            timings if isinstance(timings, dict) and timings else None, error)


def _texts(delta: _Delta | None) -> tuple[str, str]:
    """(reasoning, content) of a typed delta; see `_delta_texts`."""
    if delta is None:
        return "", ""
    content = delta.content
    if type(content) is not str:
        content = _text(content)
    reasoning = delta.reasoning_content
    if type(reasoning) is not str or not reasoning:
        reasoning = _text(reasoning) or _text(delta.reasoning)
    return reasoning, content


class _Reader:
    """Fold payloads into a StreamView, one token chunk at a time."""

    def __init__(self, view: StreamView, in_think: bool):
        self.view = view
        self.splitter = ThinkSplitter(in_think)
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.pending: list[int] = []   # chunks that may be the first letters of <think>

    def payload(self, t: float, deltas: list, usage: dict | None, timings: dict | None, error) -> None:
        view = self.view
        if error is not None:
            view.error = error
        if usage is not None:
            view.usage = usage
        if timings is not None:
            view.timings = timings
        for finish_reason, r_text, raw in deltas:
            if finish_reason is not None:
                view.finish_reason = finish_reason
            if r_text or raw:
                self.token(t, r_text, raw)

    def token(self, t: float, r_text: str, raw: str) -> None:
        splitter = self.splitter
        if splitter.settled or not raw:   # nothing to split: the answer proper, or a reasoning field
            self.reasoning.append(r_text)
            self.content.append(raw)
            self.view.tokens.append((t, bool(r_text), raw))
            return
        tags_before = splitter.tags
        r_split, c_text = splitter.feed(raw)
        self.reasoning.append(r_text + r_split)
        self.content.append(c_text)
        opened = splitter.tags != tags_before
        tokens = self.view.tokens
        if opened:                     # the held letters did open the block
            for i in self.pending:
                tokens[i] = (tokens[i][0], True, tokens[i][2])
        # a chunk that is only a tag belongs to the reasoning it opens or closes, and
        # so does the whitespace before an opening one
        is_reasoning = bool(r_text or r_split) or (not c_text and opened) \
            or (splitter.in_think and not c_text.strip())
        if opened or not splitter.holding:
            self.pending.clear()
        elif not is_reasoning:
            self.pending.append(len(tokens))
        tokens.append((t, is_reasoning, c_text))

    def finish(self) -> None:
        r, c = self.splitter.flush()
        self.view.reasoning = ("".join(self.reasoning) + r).strip()
        self.view.content = ("".join(self.content) + c).strip()
        self.view.reasoning_inline = self.splitter.tags > 0


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
    """(reasoning, content) of one delta.

    ``reasoning_content`` and ``reasoning`` are one field under its old and new
    name (vLLM renamed it), and a server in between may fill both with the same
    text: the first non-empty one is read, so the text counts once. Should the
    two ever differ, ``reasoning_content`` is read and ``reasoning`` dropped, as
    clients that know both names do: both are meant to carry the one text, and
    adding them would count it twice.
    """
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        delta = {}
    reasoning = next((t for t in (_text(delta.get(f)) for f in REASONING_FIELDS) if t), "")
    return reasoning, _text(delta.get("content"))


def _starts_in_think(content: str) -> bool:
    """Tell if inline reasoning opens without <think> (the template added it):
    a </think> comes before any <think>."""
    close = content.find(CLOSE)
    return close >= 0 and content.find(OPEN, 0, close) < 0
